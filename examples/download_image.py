"""The few lines a compute agent writes to fetch an image with locpick.

Run against the demo world (it starts one, downloads, and stops it)::

    python examples/download_image.py

or against your own record / Glance::

    python examples/download_image.py IMAGE_ID DEST --metadata image.json
    OS_IMAGE_URL=http://glance:9292 OS_AUTH_TOKEN=... python examples/download_image.py ID DEST

It shows the agent's knobs: a progress callback (one thread, ``done`` never going back), an
overall ``timeout``, and a ``cancel`` event set from another thread (here: after ``--cancel-after``
seconds), which ends the download with ``locpick.Cancelled``, DEST untouched, the part kept.
Only ``import locpick`` is used; the demo world comes from ``locpick.cli.demo`` (a fixture with
no public equivalent).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

import locpick


def show(p: locpick.Progress) -> None:
    """Progress on stderr: called from one thread, ``p.done`` never goes back."""
    share = f" ({p.fraction:.0%})" if p.fraction is not None else ""
    print(f"\r{p.image_id}: {p.done >> 20} MiB{share}", end="", file=sys.stderr, flush=True)


def fetch(image_id: str, dest: str, metadata: str | None, cancel_after: float | None) -> int:
    cancel = threading.Event()
    if cancel_after is not None:  # e.g. the agent's "instance deleted" handler
        threading.Timer(cancel_after, cancel.set).start()
    try:
        result = locpick.download(
            image_id, dest, metadata=metadata, progress=show, timeout=3600, cancel=cancel
        )
    except locpick.Cancelled as exc:
        print(f"\ncancelled: {exc}", file=sys.stderr)
        return exc.exit_code
    except locpick.LocpickError as exc:
        print(f"image {image_id} not delivered: {exc}", file=sys.stderr)
        return exc.exit_code
    print(file=sys.stderr)
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
    parser.add_argument("--cancel-after", type=float, metavar="SECONDS")
    args = parser.parse_args()
    if args.image_id and args.dest:
        return fetch(args.image_id, args.dest, args.metadata, args.cancel_after)

    from locpick.cli.demo import DEMO_IMAGE_ID, build_world

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        metadata, _config, _data = build_world(stack, Path(tmp), size=8 << 20)
        dest = str(Path(tmp) / "image.raw")
        return fetch(DEMO_IMAGE_ID, dest, str(metadata), args.cancel_after)


if __name__ == "__main__":
    sys.exit(main())
