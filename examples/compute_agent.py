"""What a compute agent does when an instance boots: make sure its image is in the local image
cache, fetched with locpick from the best copy, verified.

Credentials come from the usual OpenStack environment, exactly as for the ``openstack`` CLI:
an openrc (``OS_AUTH_URL``, ``OS_USERNAME``, ``OS_PASSWORD``, ``OS_PROJECT_NAME``, domains,
``OS_REGION_NAME``) or ``OS_CLOUD`` + clouds.yaml; the image endpoint is found in the service
catalog (or give ``OS_IMAGE_URL`` + ``OS_AUTH_TOKEN``). Like Nova's ``instances/_base``, the
cache file is named by the SHA-1 of the image id and reused when present.

Run against the project's test harness (``tests/harness``), from the repository root::

    export PYTHONPATH=tests; W=$(mktemp -d)
    KS=$(python -m harness start-keystone $W/ks | tail -1)
    EP=$(python -m harness start-glance $W/gl --keystone $KS | tail -1)
    python -m harness register-image-endpoint $KS $EP
    head -c 3000000 /dev/urandom > $W/img.raw
    ID=$(python -m harness seed-image $EP $W/img.raw --copy-to-store fs2 --visibility public \\
           --token "$(python -m harness token $KS)" | tail -1)
    export OS_AUTH_URL=$KS OS_USERNAME=demo OS_PASSWORD=demo-pass OS_PROJECT_NAME=demo \\
           OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default OS_REGION_NAME=RegionOne
    python examples/compute_agent.py "$ID" --cache-dir $W/_base
    python -m harness stop $W/gl; python -m harness stop $W/ks

Exit status: 0 when the image is in the cache, else locpick's exit code (2 bad input or
credentials, 3 nothing could deliver a verified image).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import locpick


def ensure_cached(client: locpick.Client, image_id: str, cache_dir: str) -> str:
    """The path of the verified image in the cache, downloading it first if missing."""
    path = os.path.join(cache_dir, hashlib.sha1(image_id.encode()).hexdigest())  # Nova's naming
    if os.path.exists(path):
        print(f"{image_id}: already cached at {path}")
        return path
    os.makedirs(cache_dir, exist_ok=True)
    result = client.download(image_id, path)
    print(
        f"{image_id}: {result.bytes} bytes by {result.method} from {result.source_url} "
        f"in {result.seconds:.2f}s, verified: {result.verified or 'NO'} -> {path}"
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_id")
    parser.add_argument("--cache-dir", default=os.environ.get("IMAGE_CACHE_DIR", "_base"))
    args = parser.parse_args()
    try:
        with locpick.Client() as client:  # OS_* / OS_CLOUD / OS_IMAGE_URL, LOCPICK_CONFIG
            ensure_cached(client, args.image_id, args.cache_dir)
    except locpick.LocpickError as exc:
        print(f"{args.image_id}: not cached: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
