"""An operator's consistency sweep: verify every replica of some images, print a summary table.

Against Glance (token mode or the OS_* Keystone variables)::

    OS_IMAGE_URL=http://glance:9292 OS_AUTH_TOKEN=... python examples/verify_replicas.py ID1 ID2

With no image ids it builds a small world of its own: one image with a good copy, a copy whose
bytes were changed, and a copy that is gone. Exit status 3 when any replica is not ok (as
``locpick verify``). To remove the bad ones: ``locpick verify ID --prune --yes``.

Only ``import locpick`` is used for the sweep; the small world's loopback origins come from
``locpick._demo`` (the demo's fault-injecting origin), which has no public equivalent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import locpick
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin

STATUSES = ("ok", "mismatch", "missing", "unreachable", "unsupported")


def sweep(image_ids: list[str], metadata: dict[str, Path] | None = None) -> int:
    rows = []
    with locpick.Client() as client:
        for image_id in image_ids:
            meta = metadata.get(image_id) if metadata else None
            try:
                report = client.verify(image_id, metadata=meta)
            except locpick.LocpickError as exc:
                rows.append((image_id, Counter[str](), f"error: {exc}"))
                continue
            counts = Counter(r.status for r in report.locations)
            bad = [f"{r.status}: {r.url}" for r in report.locations if r.status != "ok"]
            rows.append((image_id, counts, "ok" if report.ok else "; ".join(bad)))
    width = max(len("image"), *(len(r[0]) for r in rows))
    print(f"{'image':<{width}}  " + "  ".join(f"{s:>11}" for s in STATUSES) + "  verdict")
    for image_id, counts, verdict in rows:
        cells = "  ".join(f"{counts.get(s, 0):>11}" for s in STATUSES)
        print(f"{image_id:<{width}}  {cells}  {verdict}")
    healthy = sum(1 for r in rows if r[2] == "ok")
    print(f"\n{healthy} of {len(rows)} images have every replica ok")
    return 0 if healthy == len(rows) else 3


def demo() -> int:
    data = os.urandom(2 << 20)
    changed = bytearray(data)
    changed[1000] ^= 0xFF
    with (
        tempfile.TemporaryDirectory() as tmp,
        Origin(data, path="/good/img") as good,
        Origin(bytes(changed), path="/changed/img") as bad,
        Origin(data, path="/gone/img", faults=Faults(status=404)) as gone,
    ):
        ids = ["img-healthy", "img-degraded"]
        metadata = {}
        for image_id, urls in zip(ids, ([good.url], [good.url, bad.url, gone.url]), strict=True):
            record = {
                "id": image_id,
                "status": "active",
                "size": len(data),
                "os_hash_algo": "sha512",
                "os_hash_value": hashlib.sha512(data).hexdigest(),
                "locations": [{"url": u, "metadata": {}} for u in urls],
            }
            path = Path(tmp) / f"{image_id}.json"
            path.write_text(json.dumps(record))
            metadata[image_id] = path
        return sweep(ids, metadata)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_ids", nargs="*", metavar="IMAGE_ID")
    args = parser.parse_args()
    return sweep(args.image_ids) if args.image_ids else demo()


if __name__ == "__main__":
    sys.exit(main())
