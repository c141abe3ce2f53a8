"""locpick: fetch a VM image from the best of its many copies, verified.

```python
import locpick
result = locpick.download("IMAGE_ID", "/var/lib/nova/images/IMAGE_ID", metadata="image.json")
```
"""

from __future__ import annotations

import os

from locpick.client import Client
from locpick.config.model import Config
from locpick.errors import (
    AllLocationsFailed,
    ChecksumMismatch,
    DeliveryError,
    InputError,
    LocationError,
    LocpickError,
)
from locpick.jobs.session import Metadata
from locpick.models import Ranking, Result, VerifyReport


def __getattr__(name: str) -> str:
    """``__version__`` from the package metadata, read on first use (it costs ~25 ms at import,
    which every ``locpick`` command would otherwise pay)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("locpick")
        except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
            return "0.0.0"
    raise AttributeError(f"module 'locpick' has no attribute {name!r}")


__all__ = [
    "AllLocationsFailed",
    "ChecksumMismatch",
    "Client",
    "Config",
    "DeliveryError",
    "InputError",
    "LocationError",
    "LocpickError",
    "Ranking",
    "Result",
    "VerifyReport",
    "__version__",
    "download",
    "rank",
    "verify",
]

_ConfigArg = Config | str | os.PathLike[str] | None


def download(
    image_id: str,
    dest: str | os.PathLike[str],
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    config: _ConfigArg = None,
    allow_unverified: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    register: bool | None = None,
) -> Result:
    """Download (or system-copy) an image to ``dest`` from its best location, verified.

    ``cache_dir`` (else ``[cache] dir``): use/keep a verified copy in the node cache;
    ``register`` (else ``[cache] register``): publish it as a location in Glance.
    """
    with Client(config=config, glance_url=glance_url) as client:
        return client.download(
            image_id,
            dest,
            metadata=metadata,
            allow_unverified=allow_unverified,
            cache_dir=cache_dir,
            register=register,
        )


def rank(
    image_id: str,
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    config: _ConfigArg = None,
) -> Ranking:
    """Score every location of an image without downloading it."""
    with Client(config=config, glance_url=glance_url) as client:
        return client.rank(image_id, metadata=metadata)


def verify(
    image_id: str,
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    config: _ConfigArg = None,
    quick: bool = False,
    prune: bool = False,
    yes: bool = False,
) -> VerifyReport:
    """Check that every replica of an image is reachable and matches its size and hash.

    ``prune``: plan removing missing/mismatched locations from Glance (``report.prune``);
    ``yes``: carry it out. The last verified location is never removed.
    """
    with Client(config=config, glance_url=glance_url) as client:
        return client.verify(image_id, metadata=metadata, quick=quick, prune=prune, yes=yes)
