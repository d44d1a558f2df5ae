"""The RPC cookie file: ``DATADIR/.cookie`` holds ``__cookie__:<random password>`` while the
node runs without ``rpc_user`` (as bitcoind's does). Clients read it with
:func:`lab.client.read_cookie`: the format is the interface, not this module."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

COOKIE_USER = "__cookie__"
COOKIE_FILENAME = ".cookie"


def write_cookie(datadir: Path) -> tuple[str, str]:
    """Create ``DATADIR/.cookie`` (mode 0600, atomically) with a fresh random password.

    Content is ``__cookie__:<64 hex chars>`` (no trailing newline, like bitcoind).
    Returns ``(user, password)``.
    """
    datadir = Path(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(32)
    final = datadir / COOKIE_FILENAME
    tmp = datadir / f"{COOKIE_FILENAME}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # independent of umask
            os.write(fd, f"{COOKIE_USER}:{password}".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return COOKIE_USER, password


def delete_cookie(datadir: Path) -> None:
    """Remove ``DATADIR/.cookie`` if present."""
    with contextlib.suppress(FileNotFoundError):
        (Path(datadir) / COOKIE_FILENAME).unlink()
