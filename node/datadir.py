"""The data directory: created private, and locked so two nodes never share one."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"


class DataDirLocked(Exception):
    pass


class DataDirLock:
    """An advisory `flock` held for the node's lifetime; the kernel drops it if we die."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self._fd: int | None = None

    def acquire(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.datadir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"data directory {self.datadir} is in use by another powlab node (pid {holder}); "
                "stop it first or choose another --datadir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
