"""A process testnet started as scripts/run starts it, and `powlab testnet dashboard`
processes on it, for tests/test_dashboard.py and tests/test_dashboard_browser.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.waiting import wait_until
from tests.daemon_harness import REPO, run_powlab, tear_down_testnet
from tests.test_tour import scripts_run_arguments


@contextlib.contextmanager
def scripts_run_testnet(directory: Path, subnet: str, block_time: float = 3.0) -> Iterator[Path]:
    """The 4-node line of scripts/run (n1 and n3 mining) on `subnet`; always torn down."""
    try:
        up = run_powlab("testnet", "up", "--dir", str(directory), *scripts_run_arguments(),
                        "--block-time", str(block_time), "--subnet", subnet, "--no-hints",
                        timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        yield directory
    finally:
        tear_down_testnet(directory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DashboardProcess:
    """`powlab testnet dashboard ARGS…` in the background; `url` once it serves."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab", "testnet", "dashboard", "--no-open",
             "--bind", f"127.0.0.1:{self.port}", *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}/"
        wait_until(self._serving, 60, "the dashboard to serve", first=0.05)

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dashboard exited: {self.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def output(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stdout is not None
        return self.proc.stdout.read()

    def get(self, path: str, headers: dict[str, str] | None = None,
            timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
        return http(self.base + path.lstrip("/"), headers=headers, timeout=timeout)

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        assert self.proc.stdout is not None
        return self.proc.stdout.read()


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None, timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
