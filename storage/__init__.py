"""Persistence of the chain state: an on-disk SQLite store and an in-memory one for tests.

Both implement `consensus.update.ChainStore`. This layer may import `consensus` but never
`p2p`, `node` or `scripts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from storage.errors import StorageError
from storage.memory import MemoryStore
from storage.sqlite import SQLiteStore, Synchronous

__all__ = ["MemoryStore", "SQLiteStore", "StorageError", "open_store"]


class _NetworkParams(Protocol):
    # Only what the store needs from `consensus.params.ChainParams`.
    @property
    def name(self) -> str: ...

    @property
    def genesis_hash(self) -> bytes: ...


def open_store(
    datadir: Path | str, params: _NetworkParams, *, synchronous: Synchronous = "NORMAL"
) -> SQLiteStore:
    """Open the chain store of `params`'s network in `datadir` (created if missing)."""
    return SQLiteStore.open(
        Path(datadir), params.name, params.genesis_hash, synchronous=synchronous
    )
