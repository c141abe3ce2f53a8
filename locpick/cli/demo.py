"""``locpick demo``: a small world on 127.0.0.1 that shows a ranked, verified download.

Four HTTP origins serve the same generated image: one far away but fast, one close but slow,
one good mirror, one broken. A Glance-v2-shaped record lists them (plus two locations locpick
must refuse), then ``rank`` explains the choice and ``download`` fetches and verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from locpick._demo.blackhole import BlackHole
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.cli.format import format_result
from locpick.client import Client
from locpick.errors import LocpickError

DEMO_IMAGE_ID = "11111111-2222-3333-4444-555555555555"
_SIZE = 48 << 20


def build_world(stack: ExitStack, workdir: Path, size: int = _SIZE) -> tuple[Path, Path, bytes]:
    """Start the origins and write the record and config; returns (metadata, config, data)."""
    data = os.urandom(size)
    origins = {
        "far-fast": Faults(first_byte_delay=0.25),
        "near-slow": Faults(first_byte_delay=0.002, bandwidth=8e6),
        "mirror": Faults(first_byte_delay=0.02, bandwidth=400e6),
        "broken": Faults(status=500),
    }
    zones = {"far-fast": "az9", "near-slow": "az1", "mirror": "az2", "broken": "az1"}
    locations = []
    for name, faults in origins.items():
        origin = stack.enter_context(Origin(data, path=f"/{name}/image.raw", faults=faults))
        locations.append({"url": origin.url, "metadata": {"zone": zones[name], "region": "r1"}})
    hole = stack.enter_context(BlackHole(path="/black-hole/image.raw"))
    locations.append({"url": hole.url, "metadata": {}})
    locations.append({"url": "file:///etc/passwd", "metadata": {}})
    locations.append({"url": "rbd://fsid/images/demo/snap", "metadata": {}})
    record = {
        "id": DEMO_IMAGE_ID,
        "name": "locpick-demo",
        "status": "active",
        "size": len(data),
        "checksum": hashlib.md5(data).hexdigest(),  # noqa: S324 - Glance's legacy field
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
        "locations": locations,
    }
    metadata = workdir / "image.json"
    metadata.write_text(json.dumps(record, indent=2))
    config = workdir / "config.toml"
    config.write_text(
        '[topology]\nregion = "r1"\nzone = "az1"\nhost = "demo-node"\n\n[probe]\ndeadline = 1.5\n'
    )
    return metadata, config, data


_WHY = """What happened: this node is in zone az1. The origin in its own zone (near-slow) answers
first but is capped at 8 MB/s; the mirror in zone az2 measured far faster, so its expected time
won by more than the 20 % topology tolerance. far-fast answered too late to beat it and stayed a
fallback, the broken origin (HTTP 500) and the refused locations were never tried, and the
download was checked against the record's sha512 before it was renamed onto dest."""


def run_demo(cli_main: Callable[[Sequence[str]], int]) -> int:
    """Run the demo; returns the exit code of the download (0, or the error's exit code).

    ``cli_main`` is the command's own entry point (passed in, so the demo shows ``locpick rank``
    exactly as the command prints it without importing the command module back)."""
    with tempfile.TemporaryDirectory(prefix="locpick-demo-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        print(f"locpick demo: starting origins on 127.0.0.1 ({_SIZE >> 20} MiB image)...")
        metadata, config, data = build_world(stack, workdir)
        print(f"  image record: {metadata}\n  node config:  {config} (this node is in zone az1)")
        common = ["--metadata", str(metadata), "--config", str(config)]
        print(f"\n$ locpick rank {DEMO_IMAGE_ID} --metadata image.json\n")
        cli_main(["rank", DEMO_IMAGE_ID, *common])
        dest = workdir / "image.raw"
        print(f"\n$ locpick download {DEMO_IMAGE_ID} image.raw --metadata image.json\n")
        try:
            with Client(config=config) as client:
                result = client.download(DEMO_IMAGE_ID, dest, metadata=metadata)
        except LocpickError as exc:
            print(f"locpick: error: {exc}")
            return exc.exit_code
        print(format_result(result))
        print(f"\nThe file at dest matches the origin's bytes: {dest.read_bytes() == data}.")
        winner = result.source_url.rsplit("/", 2)[-2]
        print(
            _WHY
            if winner == "mirror"
            else f"The {winner} origin won this time (a busy machine can change measurements); "
            "rank's reasons above say why."
        )
        return 0
