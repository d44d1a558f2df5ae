"""What a run must undo, on disk, so that a runner killed outright (kill -9, a lost terminal)
does not leave the testnet cut, delayed or without miners: `DIR/runs/restore-PID.json` lists
the mining state each node had, and every ban, added link, link fault and switched-off network
the run made, and the nodes it started (processes, containers) or recreated (compose). Each
change is written (atomically) before it is made (an added link: after, since a link that was
there already must stay). A normal end deletes the file; the next run on the testnet finds a
file whose process is gone and undoes it first."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lab.testnet.processes import process_alive
from storage.files import write_atomic

PREFIX = "restore-"
KINDS = ("bans", "links", "faults", "offline", "processes", "containers", "recreated",
         "restarted")


class Journal:
    """The undo list of one run; with no path it only keeps it in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.state: dict[str, Any] = {"pid": os.getpid(), "mining": {},
                                      **{kind: [] for kind in KINDS}}

    def mining(self, saved: Mapping[str, tuple[bool, float | None]]) -> None:
        self.state["mining"] = {name: list(value) for name, value in saved.items()}
        self._flush()

    def record(self, kind: str, *item: str) -> None:
        entry = list(item)
        if entry not in self.state[kind]:
            self.state[kind].append(entry)
            self._flush()

    def close(self) -> None:
        """The run handed everything back: nothing left to undo (a later change of the same
        run starts a new list; the mining state found at the start stays what it gives
        back)."""
        for _, _, backup in self.state["restarted"]:
            if backup:
                with contextlib.suppress(OSError):
                    Path(backup).unlink()
        for kind in KINDS:
            self.state[kind] = []
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _flush(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):  # a full disk must not stop the run itself
            write_atomic(self.path, json.dumps(self.state).encode())


def journal_path(runs: Path) -> Path | None:
    try:
        runs.mkdir(exist_ok=True)
    except OSError:
        return None
    return runs / f"{PREFIX}{os.getpid()}.json"


def _stop_process(pid: int, marker: str) -> bool:
    """SIGTERM to `pid` if its command line still names `marker` (pids are reused)."""
    import signal

    if not marker or not process_alive(pid, marker):
        return False
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
        return True
    return False


def _remove_container(name: str) -> bool:
    """`docker rm -f -v` an extra node's container (a compose network's sybil); False when
    there is none or Docker does not answer."""
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True,
                                timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _recreate(project_dir: str, compose_file: str, project: str, node: str) -> bool:
    """Recreate a compose node's container from its compose file alone (a run restarted it
    with other options) and wait until the project's nodes answer; False on failure."""
    try:
        from lab.testnet.docker import RPC_FAILURES, DockerError, DockerTestnet
    except ImportError:
        return False
    testnet = DockerTestnet(Path(project_dir), Path(compose_file), project_name=project)
    try:
        testnet.recreate(node, None)
        testnet.wait_ready(90)
    except (DockerError, *RPC_FAILURES):
        return False
    return True


Restart = Callable[[Path, str, "bytes | None"], None]


def _back_on_own_config(testnet_dir: str, name: str, backup: str,
                        restart: Restart | None) -> bool:
    """A process testnet's node a killed run restarted with other options: back on its own
    configuration and address book (by `restart`, lab.scenario.nodes' own)."""
    if restart is None:
        return False
    try:
        peers = Path(backup).read_bytes() if backup else None
        restart(Path(testnet_dir), name, peers)
    except Exception:  # any failure leaves the journal for the next run
        return False
    if backup:
        with contextlib.suppress(OSError):
            Path(backup).unlink()
    return True


def orphans(runs: Path) -> list[Path]:
    """Journals left by runs whose process is gone."""
    found = []
    for path in sorted(runs.glob(f"{PREFIX}*.json")):
        try:
            pid = int(path.stem.removeprefix(PREFIX))
        except ValueError:
            continue
        if pid != os.getpid() and not process_alive(pid):
            found.append(path)
    return found


def _undo_nodes(state: dict[str, Any], restart: Restart | None) -> tuple[list[str], int]:
    """Nodes a run restarted or started: compose nodes recreated from their compose file,
    extra node processes stopped, extra containers removed. What was done, and how many
    could not be."""
    done, missed = [], 0
    for project_dir, compose_file, project, node in state.get("recreated", []):
        if _recreate(project_dir, compose_file, project, node):
            done.append(f"{node} recreated from {Path(compose_file).name}")
        else:
            missed += 1
    for testnet_dir, name, backup in state.get("restarted", []):
        if _back_on_own_config(testnet_dir, name, backup, restart):
            done.append(f"{name} restarted on its own configuration")
        else:
            missed += 1
    for pid, marker in state.get("processes", []):
        if _stop_process(int(pid), marker):
            done.append(f"extra node {Path(marker).stem} (pid {pid}) stopped")
    for (name,) in state.get("containers", []):
        if _remove_container(name):
            done.append(f"extra node container {name} removed")
    return done, missed


def undo(path: Path, call: Callable[[str, str, tuple[Any, ...]], bool],
         restart: Restart | None = None) -> list[str]:
    """Undoes what the journal at `path` lists through `call(node, method, params)` (False:
    that node did not answer); returns what was done, one line each. The file goes once
    everything was undone; a node that did not answer keeps it for the next run."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            path.unlink()
        return [f"{path.name}: unreadable, removed"]
    steps: list[tuple[str, str, tuple[Any, ...], str]] = []
    for node, host in state.get("bans", []):
        steps.append((node, "setban", (host, "remove"), f"{node} unbans {host}"))
    for node, dial in state.get("links", []):
        steps.append((node, "addnode", (dial, "remove"), f"{node} drops the link it added"))
    for node, addr in state.get("faults", []):
        steps.append((node, "setlinkfault", ({}, addr), f"{node} clears the fault to {addr}"))
    for (node,) in state.get("offline", []):
        steps.append((node, "setnetworkactive", (True,), f"{node} back on the network"))
    for node, (mining, limit) in state.get("mining", {}).items():
        steps.append((node, "setmining", (bool(mining), limit or -1),
                       f"{node} mining {'on' if mining else 'off'}"))
    done, missed = _undo_nodes(state, restart)
    for node, method, params, text in steps:
        if call(node, method, params):
            done.append(text)
        else:
            missed += 1
    if not missed:
        with contextlib.suppress(OSError):
            path.unlink()
    return done
