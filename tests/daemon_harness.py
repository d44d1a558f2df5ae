"""Start real `powlab node` subprocesses on temporary data directories and free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.client import RPCConnectionError, RPCError, read_cookie, rpc_call_sync

START_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail loudly after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


@dataclass
class NodeProcess:
    datadir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    auth: tuple[str, str] | None = None

    @property
    def log_path(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    def start(self, wait: bool = True) -> NodeProcess:
        self.datadir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.datadir / "rpc.url").unlink()
        cmd = [
            sys.executable, "-m", "node",
            "--datadir", str(self.datadir),
            "--rpc-bind", "127.0.0.1:0",
            "--p2p-bind", "127.0.0.1:0",
            "--log-format", "json",
            *self.args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO, env=env)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            url_file = self.datadir / "rpc.url"
            if not url_file.exists():
                return False
            self.url = url_file.read_text().strip()
            self.auth = read_cookie(self.datadir / ".cookie")
            try:
                self.rpc("getblockcount")
            except RPCConnectionError:
                return False
            return True

        wait_for(ready, START_TIMEOUT, "the node's RPC")

    def rpc(self, method: str, *params: Any, timeout: float = 60) -> Any:
        return rpc_call_sync(self.url, method, list(params), self.auth, timeout)

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

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"node did not stop within {timeout}s:\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_powlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `powlab` command line in a subprocess, from the repository root."""
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def tear_down_testnet(directory: Path, timeout: float = 120) -> None:
    """`powlab testnet down`, then SIGKILL anything it left: never leave processes behind."""
    import json

    from lab.testnet.processes import process_alive

    run_powlab("testnet", "down", "--dir", str(directory), timeout=timeout)
    try:
        nodes = json.loads((directory / "testnet.json").read_text())["nodes"]
    except FileNotFoundError:
        return
    for pid in (n.get("pid") for n in nodes):
        if pid and process_alive(pid):
            os.kill(pid, signal.SIGKILL)
