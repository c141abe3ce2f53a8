"""locpick: fetch a VM image from the best of its many copies, verified.

```python
import locpick
result = locpick.download("IMAGE_ID", "/var/lib/nova/images/IMAGE_ID", metadata="image.json")
```

Every name a caller handles is here (``__all__``); the modules behind them load on first use,
so ``import locpick`` stays cheap. A long-running agent keeps one :class:`Client` (or
:class:`AsyncClient`); an operator's calls are :class:`Cache`'s and :class:`Fleet`'s.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from locpick.admin import Cache, Fleet
    from locpick.aio import AsyncClient
    from locpick.cache.files import CacheEntry
    from locpick.client import Client
    from locpick.config.env import Environment
    from locpick.config.load import config_from_mapping, load_config
    from locpick.config.model import Config
    from locpick.errors import (
        AllLocationsFailed,
        AuthError,
        Cancelled,
        ChecksumMismatch,
        ConfigError,
        DeliveryError,
        DestinationError,
        ImageNotActive,
        ImageNotFound,
        InputError,
        IntegrityError,
        LocationError,
        LocationUnreachable,
        LocpickError,
        MetadataError,
        SizeMismatch,
        TransferError,
        UnsupportedLocation,
        UnverifiedImage,
    )
    from locpick.jobs.progress import ProgressCallback
    from locpick.jobs.session import Metadata
    from locpick.models import (
        Attempt,
        CacheAction,
        CacheStep,
        EvictResult,
        Image,
        Location,
        Progress,
        PruneResult,
        Ranking,
        ReapResult,
        Reasons,
        ReplicaStatus,
        Result,
        Score,
        SourceShare,
        VerifyReport,
    )
    from locpick.report import DownloadReport, Recorder

#: Public name -> the module defining it (imported on first use: PEP 562).
_LAZY = {
    "AsyncClient": "locpick.aio",
    "Cache": "locpick.admin",
    "CacheEntry": "locpick.cache.files",
    "Client": "locpick.client",
    "Config": "locpick.config.model",
    "DownloadReport": "locpick.report",
    "Environment": "locpick.config.env",
    "Fleet": "locpick.admin",
    "Recorder": "locpick.report",
    "config_from_mapping": "locpick.config.load",
    "load_config": "locpick.config.load",
    **dict.fromkeys(
        (
            "AllLocationsFailed",
            "AuthError",
            "Cancelled",
            "ChecksumMismatch",
            "ConfigError",
            "DeliveryError",
            "DestinationError",
            "ImageNotActive",
            "ImageNotFound",
            "InputError",
            "IntegrityError",
            "LocationError",
            "LocationUnreachable",
            "LocpickError",
            "MetadataError",
            "SizeMismatch",
            "TransferError",
            "UnsupportedLocation",
            "UnverifiedImage",
        ),
        "locpick.errors",
    ),
    **dict.fromkeys(
        (
            "Attempt",
            "CacheAction",
            "CacheStep",
            "EvictResult",
            "Image",
            "Location",
            "Progress",
            "PruneResult",
            "Ranking",
            "ReapResult",
            "Reasons",
            "ReplicaStatus",
            "Result",
            "Score",
            "SourceShare",
            "VerifyReport",
        ),
        "locpick.models",
    ),
}


def __getattr__(name: str) -> Any:
    """The public classes, imported from their defining module on first use; ``__version__``
    from the package metadata (it costs ~25 ms, which every command would otherwise pay)."""
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
    return sorted({*globals(), *__all__})


__all__ = [
    "AllLocationsFailed",
    "AsyncClient",
    "Attempt",
    "AuthError",
    "Cache",
    "CacheAction",
    "CacheEntry",
    "CacheStep",
    "Cancelled",
    "ChecksumMismatch",
    "Client",
    "Config",
    "ConfigError",
    "DeliveryError",
    "DestinationError",
    "DownloadReport",
    "Environment",
    "EvictResult",
    "Fleet",
    "Image",
    "ImageNotActive",
    "ImageNotFound",
    "InputError",
    "IntegrityError",
    "Location",
    "LocationError",
    "LocationUnreachable",
    "LocpickError",
    "MetadataError",
    "Progress",
    "PruneResult",
    "Ranking",
    "ReapResult",
    "Reasons",
    "Recorder",
    "ReplicaStatus",
    "Result",
    "Score",
    "SizeMismatch",
    "SourceShare",
    "TransferError",
    "UnsupportedLocation",
    "UnverifiedImage",
    "VerifyReport",
    "__version__",
    "adownload",
    "config_from_mapping",
    "download",
    "load_config",
    "rank",
    "verify",
]


def download(
    image_id: str,
    dest: str | os.PathLike[str],
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    token: str | None = None,
    config: Config | str | os.PathLike[str] | None = None,
    insecure: bool = False,
    allow_unverified: bool = False,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    register: bool | None = None,
    recorder: Recorder | None = None,
) -> Result:
    """Download (or system-copy) an image to ``dest`` from its best location, verified.

    A short-lived :class:`Client` (``glance_url``, ``token``, ``config``, ``insecure``) makes
    one :meth:`Client.download` call with the other options: ``progress`` (a callback taking
    a :class:`Progress`; its contract is there), ``timeout`` (seconds in all), ``cancel`` (a
    ``threading.Event``: set it to stop with :class:`Cancelled`, dest untouched, part kept),
    ``cache_dir``/``register`` (the node cache, and publishing it in Glance). An agent making
    many calls keeps one :class:`Client` instead (pooled connections, cached probes, tokens).
    """
    from locpick.client import Client

    with Client(config=config, glance_url=glance_url, token=token, insecure=insecure) as client:
        return client.download(
            image_id,
            dest,
            metadata=metadata,
            allow_unverified=allow_unverified,
            progress=progress,
            timeout=timeout,
            cancel=cancel,
            cache_dir=cache_dir,
            register=register,
            recorder=recorder,
        )


async def adownload(
    image_id: str,
    dest: str | os.PathLike[str],
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    token: str | None = None,
    config: Config | str | os.PathLike[str] | None = None,
    insecure: bool = False,
    allow_unverified: bool = False,
    progress: ProgressCallback | None = None,
    timeout: float | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    register: bool | None = None,
    recorder: Recorder | None = None,
) -> Result:
    """:func:`download` for asyncio: ``await locpick.adownload(...)``.

    The sync download runs in a worker thread; cancelling the awaiting task (``task.cancel()``,
    ``asyncio.timeout``) stops it: ``CancelledError`` is raised once the transfer has ended,
    with ``dest`` untouched and the part kept. ``progress`` runs in the event loop's thread.
    """
    from locpick.aio import AsyncClient

    async with AsyncClient(
        config=config, glance_url=glance_url, token=token, insecure=insecure
    ) as client:
        return await client.download(
            image_id,
            dest,
            metadata=metadata,
            allow_unverified=allow_unverified,
            progress=progress,
            timeout=timeout,
            cache_dir=cache_dir,
            register=register,
            recorder=recorder,
        )


def rank(
    image_id: str,
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    token: str | None = None,
    config: Config | str | os.PathLike[str] | None = None,
) -> Ranking:
    """Score every location of an image without downloading it."""
    from locpick.client import Client

    with Client(config=config, glance_url=glance_url, token=token) as client:
        return client.rank(image_id, metadata=metadata)


def verify(
    image_id: str,
    *,
    metadata: Metadata | None = None,
    glance_url: str | None = None,
    token: str | None = None,
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

    with Client(config=config, glance_url=glance_url, token=token) as client:
        return client.verify(image_id, metadata=metadata, quick=quick, prune=prune, yes=yes)
