"""`python -m node.forkserver --socket PATH`: starts daemons by forking one parent that has
already imported everything, so that the nodes of a large testnet share its code pages.

A plain `python -m node` imports the interpreter's and the daemon's modules (cryptography,
msgpack, structlog, aiohttp, sqlite3, node.*) afresh in every process: tens of megabytes
each. This server imports them once, freezes the garbage collector's view of them
(`gc.freeze()`, so collections in the children do not touch, and so copy, those pages) and
then, for each request on its unix socket, forks one child that runs the daemon's `main`
with the request's arguments. It starts no thread and no event loop before forking.

The protocol is one JSON object per connection, one line each way:

    {"op": "spawn", "argv": ["--config", "/…/n1/powlab.toml"], "log": "/…/n1.log",
     "cwd": "/…", "env": {"PYTHONUNBUFFERED": "1"}}      ->  {"ok": true, "pid": 4242}
    {"op": "ping"}                                         ->  {"ok": true, "pid": <server>}

and `{"ok": false, "error": "…"}` for anything else; a bad request never ends the server.
The socket is created mode 0600, so only this user can ask for a process.

A child is a daemon exactly like `python -m node ARGV`: its own session and process group
(so `kill -TERM PID` and a sweep of its group stop it and its miner workers), default signal
dispositions, stdin from /dev/null, stdout and stderr appended to its log, its own
environment, and a command line rewritten to `python -m node ARGV` (/proc/PID/cmdline, as
`ps` shows it and as the lab checks a pid against its node). It never returns into the
server's loop. The server reaps its children; when the server exits or is killed the
children keep running (they are then reparented, like any orphan).

Randomness: the node draws keys, nonces and cookies from the OS CSPRNG (`secrets`,
`os.urandom`), which a fork does not copy; the module-level `random` generator, which a fork
would copy, is reseeded from the OS in every child anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import os
import random
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Bounds on what a client can make the server hold.
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 5.0
CHILD_START_TIMEOUT_S = 10.0  # a child that takes longer to retitle is reported anyway
# Room in the server's own command line that each child overwrites with `python -m node …`.
TITLE_ROOM = 4096
_PAD_FLAG = "--title-room"
# Modules every daemon imports: loaded once here, shared copy-on-write by all the children.
PRELOAD = (
    "asyncio", "sqlite3", "json", "ssl", "msgpack", "structlog", "aiohttp", "aiohttp.web",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "cryptography.hazmat.primitives.ciphers.aead",
    "node.main", "node.daemon", "node.logs", "node.wallet", "node.datadir", "storage",
    "multiprocessing.spawn", "concurrent.futures.thread",
)


class RequestError(ValueError):
    """A request the server refuses; its text goes back to the client."""


def preload(modules: Sequence[str] = PRELOAD) -> list[str]:
    """Import `modules` (those that exist), collect, then freeze the survivors out of the
    collector's reach; returns the ones that failed to import."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    gc.collect()
    gc.freeze()
    return missing


def parse_request(raw: bytes) -> dict[str, Any]:
    """Check a request line; raises RequestError naming what is wrong."""
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise RequestError("request must be a JSON object")
    op = request.get("op")
    if op == "ping":
        return request
    if op != "spawn":
        raise RequestError(f"unknown op {op!r}; expected 'spawn' or 'ping'")
    argv = request.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) and _encodable(a) for a in argv):
        raise RequestError("argv must be a list of strings")
    for key in ("log", "cwd"):
        value = request.get(key)
        if not isinstance(value, str) or not os.path.isabs(value) or not _encodable(value):
            raise RequestError(f"{key} must be an absolute path")
    if not os.path.isdir(request["cwd"]):
        raise RequestError(f"cwd {request['cwd']!r} is not a directory")
    env = request.get("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _encodable(k) and _encodable(v)
            and k and "=" not in k for k, v in env.items()):
        raise RequestError("env must be an object of strings")
    return request


def _encodable(text: str) -> bool:
    """Usable as a path, argument or environment string: no NUL, no lone surrogate."""
    if "\0" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def retitle(args: Sequence[str]) -> bool:
    """Overwrite this process's command line (/proc/self/cmdline) with `args`, within the
    room the original one had; False where that cannot be done."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
        data = b"\0".join(a.encode() for a in args) + b"\0"
        if len(data) > end - start:
            return False
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data.ljust(end - start, b"\0"))
        return True
    except (OSError, IndexError, ValueError):
        return False


def _child(request: dict[str, Any], log_fd: int, closing: Sequence[socket.socket],
           started_fd: int) -> None:
    """Runs in the forked child; never returns. Writes a byte to `started_fd` once its
    command line reads `python -m node …`."""
    code = 1
    try:
        for sock in closing:
            sock.close()
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP,
                    signal.SIGPIPE, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(devnull)
        os.close(log_fd)
        # The server's streams, now on the log: written through, as PYTHONUNBUFFERED would.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request.get("env", {}))
        random.seed()  # from os.urandom: no state shared with the server or a sibling
        argv = list(request["argv"])
        retitle([sys.executable, "-m", "node", *argv])
        os.write(started_fd, b"1")
        os.close(started_fd)
        sys.argv = ["node", *argv]
        from node.main import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # whatever happens, never return to the server
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def spawn(request: dict[str, Any], closing: Sequence[socket.socket]) -> int:
    """Fork one daemon for a checked request; its pid."""
    try:
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RequestError(f"cannot open log {request['log']!r}: {exc.strerror}") from None
    try:
        started_r, started_w = os.pipe()
    except OSError:
        os.close(log_fd)
        raise
    try:
        try:
            pid = os.fork()
        except OSError:
            os.close(started_w)
            raise
        if pid == 0:
            os.close(started_r)
            _child(request, log_fd, closing, started_w)
        os.close(started_w)
        # Reply once the child shows as the node it runs: the lab recognises a node's pid by
        # its command line, and may look the moment it has the pid.
        ready, _, _ = select.select([started_r], [], [], CHILD_START_TIMEOUT_S)
        if ready:
            os.read(started_r, 1)
        return pid
    finally:
        os.close(log_fd)
        os.close(started_r)


def reap() -> None:
    """Collect exited children, so that none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _read_line(conn: socket.socket) -> bytes:
    # One deadline for the whole request: a client trickling a byte at a time cannot hold
    # this single-threaded server longer than that.
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RequestError(f"request not complete within {REQUEST_TIMEOUT_S:g}s")
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise RequestError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    return data.split(b"\n", 1)[0]


def handle(conn: socket.socket, listener: socket.socket) -> None:
    """Answers one connection; a failure is the client's, never the server's end."""
    try:
        request = parse_request(_read_line(conn))
        if request["op"] == "ping":
            reply: dict[str, Any] = {"ok": True, "pid": os.getpid()}
        else:
            reply = {"ok": True, "pid": spawn(request, (conn, listener))}
    except RequestError as exc:
        reply = {"ok": False, "error": str(exc)}
    except Exception as exc:
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(reply).encode() + b"\n")


def listen(path: Path) -> socket.socket:
    """A unix socket at `path`, mode 0600 from the start (umask), replacing a stale one."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener


def serve(path: Path) -> int:
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    listener = listen(path)
    bound = os.stat(path).st_ino
    print(json.dumps({"event": "forkserver_ready", "socket": str(path), "pid": os.getpid()}),
          flush=True)
    try:
        while not stopping:
            try:
                readable, _, _ = select.select([listener], [], [], 1.0)
            except InterruptedError:
                continue
            reap()
            if not readable:
                continue
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ECONNABORTED):
                    continue
                raise
            with conn:
                handle(conn, listener)
    finally:
        listener.close()
        # Only our own socket: another server may have replaced it at the same path.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == bound:
                path.unlink()
    print(json.dumps({"event": "forkserver_stopped", "pid": os.getpid()}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.forkserver")
    parser.add_argument("--socket", required=True, type=Path, help="unix socket to listen on")
    parser.add_argument(_PAD_FLAG, default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    missing = preload()
    if missing:
        print(json.dumps({"event": "forkserver_preload_missing", "modules": missing}),
              flush=True)
    return serve(args.socket.resolve())


if __name__ == "__main__":
    sys.exit(main())
