"""wallet.dat: one msgpack map, replaced atomically (written to a temporary file, fsynced,
renamed, directory fsynced) on every change, so a crash leaves the old file or the new one.

Each top-level key has its own reader and writer below; a new kind of wallet content is a
new key, a new pair of functions and, when old files need converting, a version bump with
its migration in `_MIGRATIONS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from storage.files import write_atomic

WALLET_FILE = "wallet.dat"
# 1: keys and sent payments (txid -> [raw, time]).
# 2: every transaction that concerns the wallet, with sent/abandoned flags; the scan marker.
WALLET_VERSION = 2


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # Version 1 knew only what it sent; what it received is found by a rescan from genesis
    # (no scan marker), once.
    return {**data, "version": 2, "txs_v1": data.get("txs", {}), "txs": {}, "scanned": None}


_MIGRATIONS = {1: _v1_to_v2}


def read_wallet_file(path: Path, network: str) -> dict[str, Any]:
    """The file's map at the current version; ValueError when it is not a wallet of ours."""
    data = msgpack.unpackb(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError("not a wallet map")
    if data.get("network") != network:
        raise ValueError(f"wallet is for network {data.get('network')!r}, not {network!r}")
    version = data.get("version")
    while version != WALLET_VERSION:
        migrate = _MIGRATIONS.get(version)  # type: ignore[arg-type]
        if migrate is None:
            raise ValueError(
                f"unknown wallet version {version!r} (this node reads up to {WALLET_VERSION})"
            )
        data = migrate(data)
        version = data["version"]
    return data


def write_wallet_file(path: Path, content: dict[str, Any]) -> None:
    data = {"version": WALLET_VERSION, **content}
    write_atomic(path, msgpack.packb(data, use_bin_type=True), 0o600)
