"""Node processes: one class to start, watch and stop a `python -m node` daemon, used by the
testnet, the tests and the benchmarks alike; /proc liveness and process-group helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import waiting
from lab.client import (
    CookieError,
    NodeEndpoint,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
    datadir_endpoint,
)
from lab.testnet import forkserver
from lab.testnet.manifest import Manifest, NodeEntry

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# The directory holding this lab package and the daemon's beside it. Nodes start there by
# default, so `python -m node` runs the daemon installed with this lab (from a checkout: the
# checkout's own, whatever else is installed).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Files a node writes once it is up; after a crash they are stale, so they are removed before
# a start: waiting for them must mean waiting for the new process.
_RUNTIME_FILES = (".cookie", "rpc.url", "p2p.addr")

# Popen objects of nodes this process started: polling them reaps exited children, so a
# long-lived caller (a test run) never mistakes a zombie for a running node.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class NodeProcessError(RuntimeError):
    """A node process exited when it should run, or would not stop."""


@dataclass
class NodeProcess:
    """One `python -m node` daemon: started by this process, or known by its pid.

    Without ``config`` the node runs on ``datadir`` with any free loopback ports and JSON
    logs, the setting of tests and benchmarks; ``args`` come after those flags, so they can
    override them. With ``config`` it runs from that file alone (a testnet node). ``env``
    is added to this process's environment, from which every ``POWLAB_*`` variable is
    dropped first (a stray one in a shell would silently reconfigure the node). Output, the
    node's log, is appended to ``log`` (default: DATADIR.log beside the data directory).
    ``launcher`` replaces ``python -m node`` (a profiler, a patched daemon); ``own_session``
    gives the node a session and process group of its own: no terminal signals, and
    :meth:`shut_down` can sweep up its miner workers.
    """

    datadir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    config: Path | None = None
    log: Path | None = None
    cwd: Path | None = None
    launcher: list[str] | None = None
    own_session: bool = False
    # A testnet directory whose fork server (lab/testnet/forkserver.py) forks the node
    # instead of a new `python -m node` being executed; needs `config`.
    forkserver: Path | None = None
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    auth: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir)

    @property
    def log_path(self) -> Path:
        return self.log or self.datadir.parent / f"{self.datadir.name}.log"

    @property
    def marker(self) -> str:
        """Text the node's command line contains: tells it from a process that reused its pid."""
        return str(self.config or self.datadir)

    def command(self) -> list[str]:
        launcher = self.launcher or [sys.executable, "-m", "node"]
        if self.config is not None:
            return [*launcher, "--config", str(self.config), *self.args]
        return [*launcher, "--datadir", str(self.datadir), "--rpc-bind", "127.0.0.1:0",
                "--p2p-bind", "127.0.0.1:0", "--log-format", "json", *self.args]

    # ------------------------------------------------------------------ starting

    def start(self, wait: bool = True) -> NodeProcess:
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in _RUNTIME_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.datadir / stale).unlink()
        env = node_environment(self.env)
        self.url, self.auth = "", None
        if self.forkserver is not None:
            assert self.config is not None, "a forked node runs from its config file"
            cwd = self.cwd or PACKAGE_ROOT
            forkserver.ensure_server(self.forkserver, PACKAGE_ROOT, env)
            self.proc = None
            self.pid = forkserver.spawn(self.forkserver, ["--config", str(self.config), *self.args],
                                        self.log_path,
                                        cwd, env)
            if wait:
                self.wait_ready()
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd or PACKAGE_ROOT, env=env, start_new_session=self.own_session,
            )
        _CHILDREN[self.proc.pid] = self.proc
        self.pid = self.proc.pid
        if wait:
            self.wait_ready()
        return self

    def alive(self) -> bool:
        return process_alive(self.pid, self.marker)

    def ready(self) -> bool:
        """Whether the node answers RPC (then `url` and `auth` are set); raises
        :class:`NodeProcessError` with the log's end if it has exited."""
        if not self.alive():
            code = self.proc.poll() if self.proc is not None else None
            raise NodeProcessError(
                f"{self.datadir.name} exited during start-up"
                + (f" (exit status {code})" if code is not None else "")
                + f"; last lines of {self.log_path}:\n{self.log_tail(20)}"
            )
        if not (self.datadir / "rpc.url").exists():
            return False
        endpoint = self.endpoint()
        try:
            endpoint.call("getblockcount", timeout=5)
        except (RPCConnectionError, RPCAuthError, CookieError, OSError):
            return False
        self.url, self.auth = endpoint.url, endpoint.auth
        return True

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        waiting.wait_until(self.ready, timeout, f"node {self.datadir.name}'s RPC", first=0.02)

    # ------------------------------------------------------------------ RPC

    def endpoint(self) -> NodeEndpoint:
        """The URL and cookie the node wrote to its data directory."""
        return datadir_endpoint(self.datadir)

    def rpc(self, method: str, *params: Any, timeout: float = 60) -> Any:
        return NodeEndpoint(self.url, self.auth).call(method, *params, timeout=timeout)

    def rpc_error(self, method: str, *params: Any) -> RPCError:
        try:
            self.rpc(method, *params)
        except RPCError as exc:
            return exc
        raise AssertionError(f"{method}{params} did not fail")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # ------------------------------------------------------------------ stopping

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM a node started here and wait: its exit code. One that does not stop
        within `timeout` is killed, and :class:`NodeProcessError` raised."""
        if self.proc is None:
            raise NodeProcessError(f"node {self.datadir.name} was not started here")
        if self.shut_down(timeout) == "killed":
            raise NodeProcessError(
                f"node {self.datadir.name} did not stop within {timeout}s:\n{self.log_tail()}"
            )
        return self.proc.wait()

    def shut_down(self, timeout: float = STOP_TIMEOUT, was_up: bool | None = None) -> str:
        """SIGTERM, wait, then SIGKILL the node and its whole process group; for any node
        known by its pid. Returns what happened: "stopped", "killed", "was down", "not
        started" or "stopped (leftover workers killed)". `was_up` tells a node the caller
        already sent SIGTERM to apart from one that was down."""
        pid = self.pid
        if not pid:
            return "not started"
        outcome = "stopped"
        if was_up is None:
            was_up = self.alive()
        if was_up:
            with contextlib.suppress(ProcessLookupError):
                if self.alive():
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.alive():
                outcome = "killed"
        else:
            outcome = "was down"
        # The group outlives its leader while any member (a miner worker) does; the pid
        # cannot be reused while the group exists, so signalling the group is safe.
        if process_group(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while process_group(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if outcome == "stopped":
                outcome = "stopped (leftover workers killed)"
        if outcome == "killed" and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(1 if outcome != "killed" else 10)
        return outcome

    def kill(self) -> None:
        """SIGKILL a node started here (a crash, for tests)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def node_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any `POWLAB_*` variable (a stray one in a shell
    would silently reconfigure a node), unbuffered, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWLAB_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- testnet nodes


def node_process(entry: NodeEntry, cwd: Path | None = None) -> NodeProcess:
    """A testnet node as a process: run from its config file (in `cwd`, the testnet's
    directory), in a session of its own, so Ctrl-C in the shell that ran `up` does not
    reach it and `down` can sweep up its miner workers."""
    return NodeProcess(Path(entry.datadir), config=Path(entry.config), log=Path(entry.log),
                       cwd=cwd, own_session=True, pid=entry.pid)


def with_launcher(node: NodeProcess, manifest: Manifest) -> NodeProcess:
    """`node`, to be forked by the testnet's fork server when its nodes are (launcher
    "fork"), else executed."""
    if manifest.launcher == "fork" and node.config is not None:
        node.forkserver = manifest.directory
    return node


def spawn_node(manifest: Manifest, entry: NodeEntry) -> int:
    """Starts the node (forked by the testnet's fork server with `launcher` "fork"), records
    its pid in `entry` and returns it, without waiting for its RPC."""
    node = with_launcher(node_process(entry, manifest.directory), manifest)
    node.start(wait=False)
    assert node.pid is not None
    entry.pid = node.pid
    return node.pid


def node_alive(entry: NodeEntry) -> bool:
    return node_process(entry).alive()


def stop_node(entry: NodeEntry, timeout: float = STOP_TIMEOUT, was_up: bool | None = None) -> str:
    """SIGTERM, wait, then SIGKILL the node's whole process group. Returns what happened."""
    return node_process(entry).shut_down(timeout, was_up)


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: a large testnet holds many sockets and logs,
    and its nodes (and fork server) inherit the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- /proc


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    return text[text.rfind(")") + 2:].split()


def process_alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether `pid` is a live (non-zombie) process, and, given `marker`, one whose command
    line contains it: pids are reused, so a stale manifest must not make us signal a stranger."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        # Our own child: its pid cannot be reused before we reap it, and its command line
        # may not show the marker yet (between fork and exec).
        return child.poll() is None
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        if marker is not None:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                return False
            return marker.encode() in cmdline
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_group(pgid: int) -> list[int]:
    """Live members of a process group (a node and its miner workers)."""
    members = []
    proc = Path("/proc")
    if not proc.exists():
        return members
    for child in proc.iterdir():
        if not child.name.isdigit():
            continue
        fields = _proc_stat(int(child.name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(child.name))
    return members
