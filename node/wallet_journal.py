"""wallet.log: the wallet's changes since wallet.dat was last written, appended and fsynced one
batch at a time, so that a payment or a block costs a small append instead of a rewrite of the
whole wallet. Loading replays it over wallet.dat; beyond MAX_JOURNAL_BYTES the wallet writes a
fresh wallet.dat and empties it.

Each entry is a frame: 4-byte length, 4-byte CRC-32, msgpack map. A crash during an append
leaves at most a torn last frame, which was never acknowledged (the fsync had not returned);
reading stops there and the next append cuts it off first.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

JOURNAL_FILE = "wallet.log"
# Past this size the next flush rewrites wallet.dat and empties the journal: bounds both the
# file and the replay at start-up.
MAX_JOURNAL_BYTES = 1 << 20
_FRAME = struct.Struct(">II")  # payload length, CRC-32 of the payload


def _frame(entry: dict[str, Any]) -> bytes:
    payload = msgpack.packb(entry, use_bin_type=True)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0  # bytes of whole, valid frames: where the next append goes

    def read(self) -> list[dict[str, Any]]:
        """The entries up to a torn last frame; ValueError when a frame before the last one is
        corrupt (a torn append only ever leaves the last one short or mismatched)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.size = 0
            return []
        entries = []
        offset = 0
        while offset + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, offset)
            start, end = offset + _FRAME.size, offset + _FRAME.size + length
            if end > len(data):
                break
            if zlib.crc32(data[start:end]) != crc:
                if end < len(data):
                    # Not a torn tail: cutting here at the next append would silently throw
                    # away the acknowledged entries (keys, payments) that follow.
                    raise ValueError(
                        f"{self.path.name} is corrupt at byte {offset} (checksum mismatch, "
                        f"{len(data) - end} bytes follow)"
                    )
                break
            entry = msgpack.unpackb(data[start:end])
            if not isinstance(entry, dict):
                raise ValueError(f"{self.path.name} is corrupt at byte {offset} (not an entry)")
            entries.append(entry)
            offset = end
        self.size = offset
        return entries

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Append and fsync; on OSError (a full disk) the file is cut back to what it held."""
        data = b"".join(_frame(e) for e in entries)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, self.size)  # a torn frame a crash left behind goes first
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], self.size + written)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path.parent)
        self.size += len(data)

    def clear(self) -> None:
        """Empty the journal (its entries are in a wallet.dat written and fsynced before)."""
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        self.size = 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
