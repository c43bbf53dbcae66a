"""p2pfs: peer-to-peer file distribution with one tracker and many peers.

A peer publishes a file; the tracker records which peer holds which chunk; downloaders fetch different
chunks from many holders at once, rarest first, verify each chunk's SHA-256, and serve what they have.

As a library (docs/API.md):

    import p2pfs

    with p2pfs.share("weights.bin", tracker="10.0.0.1:6969") as shared:   # serves until the block ends
        ...
    result = p2pfs.get("weights.bin", "/data/", tracker="10.0.0.1:6969")   # -> p2pfs.Result

and `await p2pfs.aio.get(...)`, `async with p2pfs.aio.share(...)` inside an event loop. The names below
are imported on first use, so `import p2pfs` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from p2pfs.errors import (
    FileNotPublished,
    NoSourceForChunk,
    P2PFSError,
    ProtocolError,
    TrackerError,
    TrackerUnavailable,
)

if TYPE_CHECKING:
    from p2pfs import aio
    from p2pfs.address import Address
    from p2pfs.aio import InvalidArgument
    from p2pfs.api import Seeding, Share, get, share
    from p2pfs.peer.storage import StorageError
    from p2pfs.peer.transfer import DownloadResult as Result
    from p2pfs.peer.transfer import Progress

__version__ = "1.0.0"

__all__ = [
    "Address",
    "FileNotPublished",
    "InvalidArgument",
    "NoSourceForChunk",
    "P2PFSError",
    "Progress",
    "ProtocolError",
    "Result",
    "Seeding",
    "Share",
    "StorageError",
    "TrackerError",
    "TrackerUnavailable",
    "__version__",
    "aio",
    "get",
    "share",
]

#: public name -> (module, attribute; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "aio": ("p2pfs.aio", None),
    "share": ("p2pfs.api", "share"),
    "get": ("p2pfs.api", "get"),
    "Share": ("p2pfs.api", "Share"),
    "Seeding": ("p2pfs.api", "Seeding"),
    "InvalidArgument": ("p2pfs.aio", "InvalidArgument"),
    "Result": ("p2pfs.peer.transfer", "DownloadResult"),
    "Progress": ("p2pfs.peer.transfer", "Progress"),
    "StorageError": ("p2pfs.peer.storage", "StorageError"),
    "Address": ("p2pfs.address", "Address"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'p2pfs' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
