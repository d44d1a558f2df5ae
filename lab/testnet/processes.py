"""Starting and stopping node processes, and telling live ones from dead ones (/proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.testnet.manifest import Manifest, NodeEntry

STOP_TIMEOUT = 20.0

# Popen objects of nodes this process started: polling them reaps exited children, so a
# long-lived caller (a test run) never mistakes a zombie for a running node.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


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
    if child is not None and child.poll() is not None:
        return False
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


def node_alive(entry: NodeEntry) -> bool:
    return process_alive(entry.pid, entry.config)


def spawn_node(manifest: Manifest, entry: NodeEntry) -> int:
    datadir = Path(entry.datadir)
    # After a crash these are stale: waiting for them must mean waiting for the new process.
    for stale in (".cookie", "rpc.url", "p2p.addr"):
        with contextlib.suppress(FileNotFoundError):
            (datadir / stale).unlink()
    # POWLAB_* variables outrank the config file; a stray POWLAB_CONNECT in the user's shell
    # would silently rewire the topology.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWLAB_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(entry.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "--config", entry.config],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=manifest.directory,
            env=env,
            # Own session: no terminal signals (Ctrl-C in the shell that ran `up`), and one
            # process group per node so `down` can also sweep up its miner workers.
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    entry.pid = proc.pid
    return proc.pid


def stop_node(entry: NodeEntry, timeout: float = STOP_TIMEOUT, was_up: bool | None = None) -> str:
    """SIGTERM, wait, then SIGKILL the node's whole process group. Returns what happened.

    `was_up` tells a node the caller already sent SIGTERM to apart from one that was down."""
    pid = entry.pid
    if not pid:
        return "not started"
    outcome = "stopped"
    if was_up is None:
        was_up = node_alive(entry)
    if was_up:
        with contextlib.suppress(ProcessLookupError):
            if node_alive(entry):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while node_alive(entry) and time.monotonic() < deadline:
            time.sleep(0.1)
        if node_alive(entry):
            outcome = "killed"
    else:
        outcome = "was down"
    # The group outlives its leader while any member (a miner worker) does; the pid cannot be
    # reused while the group exists, so signalling the group is safe.
    if process_group(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while process_group(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if outcome == "stopped":
            outcome = "stopped (leftover workers killed)"
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(1)
    return outcome


def log_tail(entry: NodeEntry, lines: int = 20) -> str:
    try:
        return "\n".join(Path(entry.log).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
