"""A process testnet started as scripts/run starts it, and `powlab testnet dashboard`
processes on it, for tests/test_dashboard.py and tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from lab.dashboard.collector import Collector
from lab.dashboard.model import Model
from lab.dashboard.server import Dashboard
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


# ----------------------------------------------------------------- a hostile fake node

GENESIS = "0" * 64


def strict_json(text: str | bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are errors."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


class FakeNode:
    """An RPC endpoint and /events stream that answer whatever the test puts in `answers`
    (method -> function of the params) and `events` (lines written to /events)."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {
            "getblockcount": lambda p: 0,
            "getblockhash": lambda p: GENESIS,
            "getblock": lambda p: self.blocks.get(p[0]),
            "getchaintips": lambda p: [{"hash": GENESIS, "height": 0, "status": "active"}],
            "getblockchaininfo": lambda p: {"blocks": 0, "warnings": ""},
            "getpeerinfo": lambda p: [], "getmempoolinfo": lambda p: {"size": 0},
            "getmininginfo": lambda p: {"mining": False, "hashrate": 0.0},
            "getnetworkinfo": lambda p: {}, "validateaddress": lambda p: {"ismine": False},
        }
        self.blocks: dict[str, dict[str, Any]] = {
            GENESIS: {"hash": GENESIS, "height": 0, "time": 0, "nTx": 1, "tx": []}}
        self.events: asyncio.Queue[bytes] = asyncio.Queue()
        self.url = ""
        self._runner: Any = None

    async def start(self) -> str:
        from aiohttp import web

        def one(call: dict[str, Any]) -> dict[str, Any]:
            answer = self.answers.get(call["method"])
            if answer is None:
                return {"jsonrpc": "2.0", "id": call["id"],
                        "error": {"code": -32601, "message": "no such method"}}
            return {"jsonrpc": "2.0", "id": call["id"], "result": answer(call.get("params"))}

        async def rpc(request: web.Request) -> web.Response:
            body = await request.json()
            out = [one(c) for c in body] if isinstance(body, list) else one(body)
            # json.dumps writes NaN and Infinity as a hostile node would.
            return web.Response(text=json.dumps(out), content_type="application/json")

        async def events(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            while line := await self.events.get():  # b"" ends the stream
                await resp.write(line)
            return resp

        app = web.Application(client_max_size=2**24)
        app.router.add_post("/", rpc)
        app.router.add_get("/events", events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"
        return self.url

    async def stop(self) -> None:
        self.events.put_nowait(b"")
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def fake_dashboard(directory: Path | None = None, node: FakeNode | None = None,
                         token: str | None = None,
                         ) -> AsyncIterator[tuple[FakeNode, Collector, Dashboard, str]]:
    """A fake node, a real collector following it and a real dashboard serving the page."""
    from lab.dashboard.controls import Controls
    from lab.dashboard.sources import endpoint_sources

    node = node or FakeNode()
    await node.start()
    sources = endpoint_sources([f"evil={node.url}"])
    sources.directory = directory
    model = Model()
    collector = Collector(sources, model)
    dashboard = Dashboard(collector, model, "127.0.0.1", 0, token, Controls(collector))
    await collector.start()
    url = await dashboard.start()
    await collector.loaded.wait()
    try:
        yield node, collector, dashboard, url
    finally:
        await dashboard.stop()
        await collector.stop()
        await node.stop()


async def get_text(url: str) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()
