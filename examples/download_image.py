"""The few lines a compute agent writes to fetch an image with locpick.

Run against the demo world (it starts one, downloads, and stops it)::

    python examples/download_image.py

or against your own record / Glance::

    python examples/download_image.py IMAGE_ID DEST --metadata image.json
    OS_IMAGE_URL=http://glance:9292 OS_AUTH_TOKEN=... python examples/download_image.py ID DEST
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import locpick


def fetch(image_id: str, dest: str, metadata: str | None) -> int:
    try:
        result = locpick.download(image_id, dest, metadata=metadata)
    except locpick.LocpickError as exc:
        print(f"image {image_id} not delivered: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"{result.dest}: {result.bytes} bytes by {result.method} from {result.source_url} "
        f"in {result.seconds:.2f}s, verified with {result.verified}"
    )
    for attempt in result.attempts:
        if attempt.outcome != "ok":
            print(f"  {attempt.outcome}: {attempt.url}: {attempt.error}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_id", nargs="?")
    parser.add_argument("dest", nargs="?")
    parser.add_argument("--metadata")
    args = parser.parse_args()
    if args.image_id and args.dest:
        return fetch(args.image_id, args.dest, args.metadata)

    from locpick.cli.demo import DEMO_IMAGE_ID, build_world

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        metadata, _config, _data = build_world(stack, Path(tmp), size=8 << 20)
        return fetch(DEMO_IMAGE_ID, str(Path(tmp) / "image.raw"), str(metadata))


if __name__ == "__main__":
    sys.exit(main())
