"""locpick: fetch a VM image from the best of its many copies, verified.

```python
import locpick
result = locpick.download("IMAGE_ID", "/var/lib/nova/images/IMAGE_ID", metadata="image.json")
```
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names resolve lazily at run time (PEP 562): ``import locpick`` is cheap
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

#: Public name -> the module that defines it, imported on first use (so ``import locpick``
#: and ``locpick --help`` do not pay for the HTTP stack, attrs models, etc.).
_LAZY = {
    "AllLocationsFailed": "locpick.errors",
    "ChecksumMismatch": "locpick.errors",
    "DeliveryError": "locpick.errors",
    "InputError": "locpick.errors",
    "LocationError": "locpick.errors",
    "LocpickError": "locpick.errors",
    "Client": "locpick.client",
    "Config": "locpick.config.model",
    "Ranking": "locpick.models",
    "Result": "locpick.models",
    "VerifyReport": "locpick.models",
}


def __getattr__(name: str) -> Any:
    """The public classes, imported on first use; ``__version__`` from the package metadata
    (it costs ~25 ms, which every ``locpick`` command would otherwise pay)."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("locpick")
        except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
            return "0.0.0"
    raise AttributeError(f"module 'locpick' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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


def download(
    image_id: str,
    dest: str | os.PathLike[str],
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    config: Config | str | os.PathLike[str] | None = None,
    allow_unverified: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    register: bool | None = None,
) -> Result:
    """Download (or system-copy) an image to ``dest`` from its best location, verified.

    ``cache_dir`` (else ``[cache] dir``): use/keep a verified copy in the node cache;
    ``register`` (else ``[cache] register``): publish it as a location in Glance.
    """
    from locpick.client import Client

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
    config: Config | str | os.PathLike[str] | None = None,
) -> Ranking:
    """Score every location of an image without downloading it."""
    from locpick.client import Client

    with Client(config=config, glance_url=glance_url) as client:
        return client.rank(image_id, metadata=metadata)


def verify(
    image_id: str,
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    config: Config | str | os.PathLike[str] | None = None,
    quick: bool = False,
    prune: bool = False,
    yes: bool = False,
) -> VerifyReport:
    """Check that every replica of an image is reachable and matches its size and hash.

    ``prune``: plan removing missing/mismatched locations from Glance (``report.prune``);
    ``yes``: carry it out. The last verified location is never removed.
    """
    from locpick.client import Client

    with Client(config=config, glance_url=glance_url) as client:
        return client.verify(image_id, metadata=metadata, quick=quick, prune=prune, yes=yes)
