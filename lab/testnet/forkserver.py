"""The lab's side of the daemon's fork server (`python -m node.forkserver`, node/forkserver.py):
starting it in a testnet directory, asking it for a node, stopping it.

The lab talks to it only through its unix socket, DIR/forkserver.sock (mode 0600), one JSON
line each way, and never imports it. A node it forks is a daemon like any other: its pid is
recorded in the manifest, its command line reads `python -m node --config …`, and it is
stopped by pid and process group as before. The server is only needed to start nodes; when
it is gone (killed, or the machine's processes were stopped), the next `up` starts a new one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab import waiting
from lab.testnet.manifest import TestnetError

SOCKET_NAME = "forkserver.sock"
PID_NAME = "forkserver.pid"
STAMP_NAME = "forkserver.code"  # code_stamp() of what the running server imported
DAEMON_PACKAGES = ("consensus", "storage", "p2p", "node")
LOG_NAME = "forkserver.log"
# Room in the server's command line that each child rewrites as `python -m node --config …`
# (node/forkserver.py: retitle); a testnet directory path must fit in it.
TITLE_ROOM = 4096
MARKER = "node.forkserver"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less its terminating NUL
START_TIMEOUT = 60.0
BUSY_TIMEOUT = 15.0  # longer than the server's own per-child wait (node/forkserver.py)
_MAX_REPLY = 64 * 1024


class ForkServerError(TestnetError):
    """The fork server cannot be started or refused a request."""


def socket_path(directory: Path) -> Path:
    return directory / SOCKET_NAME


def request(path: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request/reply on the server's socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.sendall(json.dumps(message).encode() + b"\n")
        with conn.makefile("rb") as replies:
            data = replies.readline(_MAX_REPLY)
    try:
        reply = json.loads(data)
    except ValueError:
        raise ForkServerError(f"the fork server at {path} answered {data[:200]!r}") from None
    if not isinstance(reply, dict):
        raise ForkServerError(f"the fork server at {path} answered {reply!r}")
    return reply


def server_pid(directory: Path) -> int | None:
    """The pid of the fork server running for `directory`, else None."""
    try:
        pid = int((directory / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    marker = f"{MARKER} --socket {socket_path(directory)}".encode()
    return pid if marker in cmdline and state not in ("Z", "X") else None


def ping(directory: Path) -> bool:
    try:
        return bool(request(socket_path(directory), {"op": "ping"}, timeout=5).get("ok"))
    except (OSError, ForkServerError):
        return False


def ensure_server(directory: Path, cwd: Path, env: dict[str, str]) -> int:
    """The running fork server of `directory`, started (and waited for) if there is none."""
    pid = server_pid(directory)
    stamp = code_stamp(cwd)
    if pid is not None and _recorded_stamp(directory) != stamp:
        # It imported the daemon's code as it was when it started: nodes it forks now would
        # run that, not what is on disk (a testnet resumed after an upgrade or an edit).
        stop_server(directory)
        pid = None
    if pid is not None:
        # Alive: it may be busy with a spawn (up to its child start timeout), so ask again
        # before giving up on it; a second server would take over the socket and orphan it.
        try:
            waiting.wait_until(lambda: ping(directory), BUSY_TIMEOUT, "the fork server", 0.5)
            return pid
        except TimeoutError:
            stop_server(directory)
    path = socket_path(directory)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ForkServerError(f"{path} is too long for a unix socket; use a shorter --dir")
    command = [sys.executable, "-m", MARKER, "--socket", str(path),
               "--title-room", "x" * TITLE_ROOM]
    with open(directory / LOG_NAME, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True)
    (directory / PID_NAME).write_text(f"{proc.pid}\n")
    (directory / STAMP_NAME).write_text(stamp + "\n")

    def ready() -> bool:
        if proc.poll() is not None:
            tail = (directory / LOG_NAME).read_text(errors="replace").splitlines()[-20:]
            raise ForkServerError("the fork server exited during start-up:\n" + "\n".join(tail))
        return ping(directory)

    waiting.wait_until(ready, START_TIMEOUT, "the fork server", 0.1, ForkServerError,
                       first=0.02)
    return proc.pid


@functools.lru_cache(maxsize=8)
def code_stamp(root: Path) -> str:
    """When the daemon's code under `root` last changed: the newest modification time of its
    Python files (the packages a node imports). Read once per lab process."""
    newest = 0
    for package in DAEMON_PACKAGES:
        for path in (root / package).rglob("*.py"):
            with contextlib.suppress(OSError):
                newest = max(newest, path.stat().st_mtime_ns)
    return str(newest)


def _recorded_stamp(directory: Path) -> str | None:
    try:
        return (directory / STAMP_NAME).read_text().strip()
    except OSError:
        return None


def spawn(directory: Path, argv: list[str], log: Path, cwd: Path, env: dict[str, str]) -> int:
    """Asks the server of `directory` for one `python -m node ARGV` daemon; its pid."""
    reply = request(socket_path(directory), {
        "op": "spawn", "argv": argv, "log": str(log), "cwd": str(cwd), "env": env,
    })
    if not reply.get("ok") or not isinstance(reply.get("pid"), int):
        raise ForkServerError(f"the fork server refused to start a node: {reply.get('error')}")
    return int(reply["pid"])


def stop_server(directory: Path, timeout: float = 10.0) -> str:
    """SIGTERM the fork server (its nodes keep running), SIGKILL if it lingers."""
    pid = server_pid(directory)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            (directory / PID_NAME).unlink()
        return "was down"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    outcome = "stopped"
    try:
        waiting.wait_until(lambda: server_pid(directory) is None, timeout, "the fork server",
                           0.05)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        outcome = "killed"
    with contextlib.suppress(FileNotFoundError):
        (directory / PID_NAME).unlink()
    return outcome
