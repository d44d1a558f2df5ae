"""The live record of scenario runs that other tools (the dashboard) read: one JSON-lines file
per run in the testnet's directory, `DIR/runs/STAMP-NAME.jsonl`. Its first line is the start
(`{"type": "start", "scenario", "command", "seed", "roles", "started"}`), then one line per
timeline event (`{"type": "event", "t", "node", "event", …}`) as it happens, and last the end
(`{"type": "end", "verdict", "success", "error"?}`). Each line is written whole and flushed,
so a reader sees complete lines; only the newest `KEEP_RUNS` files are kept."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

RUNS_DIR = "runs"
KEEP_RUNS = 50


def runs_dir(testnet_dir: Path) -> Path:
    return testnet_dir / RUNS_DIR


def run_files(testnet_dir: Path) -> list[Path]:
    """The run records, oldest first."""
    return sorted(runs_dir(testnet_dir).glob("*.jsonl"))


class RunLog:
    """Appends one run's start, events and end to its file; failures to write are ignored
    (the record is for watching, the run must not fail because of it)."""

    def __init__(self, testnet_dir: Path, name: str) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        directory = runs_dir(testnet_dir)
        self.directory = directory
        try:
            directory.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**6:06d}"
            self.path = directory / f"{stamp}-{name}.jsonl"
            self._file = self.path.open("a", encoding="utf-8")
            for old in run_files(testnet_dir)[:-KEEP_RUNS]:
                old.unlink(missing_ok=True)
        except OSError:
            self._file = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(record, default=str)
        with self._lock:
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except (OSError, ValueError):
                self._file = None

    def event(self, event: dict[str, Any]) -> None:
        self.write({"type": "event", **event})

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


LOCK_NAME = "active.lock"


class RunLock:
    """One run at a time on a testnet: a second would save the first one's paused miners as
    "off" and hand them back that way. The lock file holds the owner's pid; a lock whose
    process is gone (a killed run) is taken over."""

    def __init__(self, testnet_dir: Path) -> None:
        self.path = runs_dir(testnet_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        from lab.scenario.engine import ScenarioError
        from lab.scenario.journal import process_alive

        try:
            self.path.parent.mkdir(exist_ok=True)
        except OSError:
            return  # nowhere to keep a lock (a read-only directory): run unguarded
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and process_alive(owner):
                    raise ScenarioError(
                        f"another scenario or attack (pid {owner}) is running on this testnet; "
                        f"wait for it to end, or stop it (its lock: {self.path})") from None
                with contextlib.suppress(OSError):
                    self.path.unlink()
                continue
            except OSError:
                return
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return

    def release(self) -> None:
        if not self.held:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.path.read_text().strip()) == os.getpid():
                self.path.unlink()
        self.held = False
