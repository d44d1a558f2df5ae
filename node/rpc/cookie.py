"""The RPC cookie file: ``DATADIR/.cookie`` holds ``__cookie__:<random password>`` while the
node runs without ``rpc_user`` (as bitcoind's does)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

COOKIE_USER = "__cookie__"
COOKIE_FILENAME = ".cookie"


class CookieError(Exception):
    """The RPC cookie file is missing, unreadable or malformed."""



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


def read_cookie(path: Path | str) -> tuple[str, str]:
    """Read a cookie file (or ``DIR/.cookie`` if ``path`` is a directory) → ``(user, pw)``."""
    p = Path(path)
    if p.is_dir():
        p = p / COOKIE_FILENAME
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CookieError(
            f"RPC cookie file not found: {p} (is the node running with this datadir?)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CookieError(f"cannot read RPC cookie file {p}: {exc}") from exc
    user, sep, password = text.partition(":")
    if not sep or not user or not password or "\n" in text:
        raise CookieError(f"malformed RPC cookie file {p}: expected 'user:password'")
    return user, password


def delete_cookie(datadir: Path) -> None:
    """Remove ``DATADIR/.cookie`` if present."""
    with contextlib.suppress(FileNotFoundError):
        (Path(datadir) / COOKIE_FILENAME).unlink()
