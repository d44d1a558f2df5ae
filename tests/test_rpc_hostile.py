"""Hostile RPC clients: oversized batches, malformed ids, slow headers, connection floods,
and the daemon's SIGPIPE disposition."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.testnet.processes import NodeProcess
from node.config import ConfigError, load_config
from node.events import EventHub
from node.rpc.errors import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR
from node.rpc.limits import (
    DEFAULT_MAX_RPC_BATCH,
    DEFAULT_MAX_RPC_CONNECTIONS,
    DEFAULT_RPC_HEADER_TIMEOUT,
)
from node.rpc.registry import MethodRegistry
from node.rpc.server import RPCServer
from tests.async_wait import wait_until_async as wait_until
from tests.daemon_harness import REPO

TIMEOUT = 5.0
SIGPIPE_BIT = 1 << (13 - 1)  # /proc/PID/status masks: bit n-1 is signal n (SIGPIPE = 13)


class RecordingLogger:
    """Stands in for the structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._log("exception", event, **kw)

    def events(self) -> list[str]:
        return [event for _, event, _ in self.records]


def make_registry(order: list[str] | None = None) -> MethodRegistry:
    log = order if order is not None else []
    reg = MethodRegistry()

    def getblockcount() -> int:
        return 42

    def echo(value: Any = None) -> Any:
        return value

    def scale(x: float) -> float:
        return x * 2

    def nan() -> float:
        return float("nan")

    def boom() -> None:
        raise ValueError("kaboom")

    def tick() -> list[dict[str, Any]]:
        log.append("tick")
        return [{"txid": "00" * 32, "vout": i, "amount": 5_000_000_000} for i in range(20)]

    for name, fn in [("getblockcount", getblockcount), ("echo", echo), ("scale", scale),
                     ("nan", nan), ("boom", boom), ("tick", tick)]:
        reg.register(name, fn)
    return reg


class Env:
    def __init__(self, server: RPCServer, hub: EventHub, log: RecordingLogger) -> None:
        self.server, self.hub, self.log = server, hub, log
        self.url = server.url
        assert server.port is not None
        self.port = server.port


async def start_env(
    registry: MethodRegistry | None = None, auth: tuple[str, str] | None = None, **kwargs: Any
) -> Env:
    hub = EventHub()
    log = RecordingLogger()
    server = RPCServer(
        registry or make_registry(), hub, auth, logger=log, auth_failure_delay=0.0,
        keepalive_interval=0.2, **kwargs,
    )
    await server.start("127.0.0.1", 0)
    return Env(server, hub, log)


async def stop_env(env: Env) -> None:
    await env.server.stop()
    env.hub.close()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = await start_env()
    yield e
    await stop_env(e)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


def req(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    r: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        r["params"] = params
    return r


def _no_constants(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in a reply")


def strict_loads(body: bytes) -> Any:
    return json.loads(body, parse_constant=_no_constants)


async def post_raw(
    session: aiohttp.ClientSession, url: str, data: bytes
) -> tuple[int, str, bytes]:
    async with session.post(url, data=data) as resp:
        return resp.status, resp.content_type, await resp.read()


async def post(session: aiohttp.ClientSession, url: str, payload: Any) -> tuple[int, Any]:
    status, _, body = await post_raw(session, url, json.dumps(payload).encode())
    return status, (strict_loads(body) if body else None)


# ---------------------------------------------------------------------------- batch limit


async def test_batch_over_limit_gets_one_error_and_runs_nothing(
    session: aiohttp.ClientSession,
) -> None:
    order: list[str] = []
    env = await start_env(make_registry(order), max_batch=5)
    try:
        status, body = await post(session, env.url, [req("tick", id=i) for i in range(6)])
        assert status == 200  # like every other invalid request, empty batch included
        assert isinstance(body, dict) and body["id"] is None
        assert body["error"]["code"] == INVALID_REQUEST
        assert "limit is 5" in body["error"]["message"]
        assert "max_rpc_batch" in body["error"]["message"]
        assert order == []
        assert "rpc_batch_too_large" in env.log.events()

        status, body = await post(session, env.url, [req("tick", id=i) for i in range(5)])
        assert status == 200 and [r["id"] for r in body] == [0, 1, 2, 3, 4]
        assert order == ["tick"] * 5
    finally:
        await stop_env(env)


async def test_default_batch_limit(env: Env, session: aiohttp.ClientSession) -> None:
    assert DEFAULT_MAX_RPC_BATCH == 1000
    batch = [req("getblockcount", id=i) for i in range(DEFAULT_MAX_RPC_BATCH)]
    status, body = await post(session, env.url, batch)
    assert status == 200 and len(body) == DEFAULT_MAX_RPC_BATCH
    assert all(r["result"] == 42 for r in body)

    batch.append(req("getblockcount", id=DEFAULT_MAX_RPC_BATCH))
    status, body = await post(session, env.url, batch)
    assert status == 200 and body["error"]["code"] == INVALID_REQUEST
    assert f"limit is {DEFAULT_MAX_RPC_BATCH}" in body["error"]["message"]


async def test_batch_yields_to_a_concurrent_request() -> None:
    order: list[str] = []
    started = asyncio.Event()
    reg = make_registry(order)

    def gate() -> int:
        order.append("gate")
        started.set()
        return 0

    def single() -> str:
        order.append("single")
        return "single"

    reg.register("gate", gate)
    reg.register("single", single)
    env = await start_env(reg)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as batch_client,
            aiohttp.ClientSession(timeout=timeout) as other_client,
        ):
            # A warm keep-alive connection: the single request then needs only a few loop
            # iterations (no connect, no resolver thread), far fewer than the batch's calls.
            assert (await post(other_client, env.url, req("getblockcount")))[0] == 200
            n = DEFAULT_MAX_RPC_BATCH
            batch = [req("gate", id=0)] + [req("tick", id=i) for i in range(1, n)]
            batch_reply = asyncio.create_task(post(batch_client, env.url, batch))
            await asyncio.wait_for(started.wait(), TIMEOUT)

            status, body = await post(other_client, env.url, req("single"))
            assert status == 200 and body["result"] == "single"
            single_done_first = not batch_reply.done()

            status, replies = await asyncio.wait_for(batch_reply, TIMEOUT)
            assert status == 200 and len(replies) == n
        # Without yielding, "single" could only run after the batch's last call.
        assert order.index("single") < len(order) - 1, "the batch did not yield"
        assert single_done_first, "the batch reply arrived before the single request's reply"
    finally:
        await stop_env(env)


# ---------------------------------------------------------------------------- malformed input

BAD_ID_BODIES = [
    b'{"jsonrpc":"2.0","method":"getblockcount","id":1e999999}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":-1e999999}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":NaN}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":Infinity}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":-Infinity}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":9223372036854775808}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":-9223372036854775809}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":1' + b"0" * 4000 + b"}",
    b'{"jsonrpc":"2.0","method":"getblockcount","id":1' + b"0" * 5000 + b"}",
    b'{"jsonrpc":"2.0","method":"getblockcount","id":{"a":{"b":[1]}}}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":[1]}',
    b'{"jsonrpc":"2.0","method":"getblockcount","id":true}',
    b'{"method":"getblockcount","id":1e999999}',  # legacy
    b'{"method":"getblockcount","id":{"x":1}}',
    b'{"jsonrpc":"2.0","method":"echo","params":[1e999],"id":1}',
    b'{"jsonrpc":"2.0","method":"echo","params":[NaN],"id":1}',
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"jsonrpc":"2.0","method":"echo","params":[' + b"[" * 5000 + b"]" * 5000 + b'],"id":1}',
]


@pytest.mark.parametrize("body", BAD_ID_BODIES, ids=lambda b: b[:60].decode())
async def test_malformed_request_gets_a_jsonrpc_error(
    env: Env, session: aiohttp.ClientSession, body: bytes
) -> None:
    status, content_type, raw = await post_raw(session, env.url, body)
    assert status == 200
    assert content_type == "application/json"
    reply = strict_loads(raw)
    assert reply["id"] is None
    assert reply["error"]["code"] in (PARSE_ERROR, INVALID_REQUEST)
    assert "rpc_request_failed" not in env.log.events()


@pytest.mark.parametrize("depth", [900, 950, 970, 980, 990, 1000])
async def test_deep_nesting_near_the_recursion_limit(
    env: Env, session: aiohttp.ClientSession, depth: int
) -> None:
    # Deep enough and the parser refuses; just shallower, the reply encoder must cope.
    nested = b"[" * depth + b"]" * depth
    body = b'{"jsonrpc":"2.0","method":"echo","params":[' + nested + b'],"id":1}'
    status, _, raw = await post_raw(session, env.url, body)
    reply = strict_loads(raw)
    assert status == 200 and ("result" in reply or "error" in reply)
    assert "rpc_request_failed" not in env.log.events()


async def test_usable_ids_are_echoed(env: Env, session: aiohttp.ClientSession) -> None:
    for rid in [2**63 - 1, -(2**63), 1.5, -0.0, 1e308, "", "x" * 1000, None]:
        status, body = await post(session, env.url, req("getblockcount", id=rid))
        assert status == 200 and body["result"] == 42 and body["id"] == rid, rid


async def test_bad_id_in_a_batch_only_fails_that_item(
    env: Env, session: aiohttp.ClientSession
) -> None:
    body = b'[{"jsonrpc":"2.0","method":"getblockcount","id":1},' \
           b'{"jsonrpc":"2.0","method":"getblockcount","id":{"a":1}},' \
           b'{"jsonrpc":"2.0","method":"getblockcount","id":99999999999999999999}]'
    status, _, raw = await post_raw(session, env.url, body)
    replies = strict_loads(raw)
    assert status == 200
    assert replies[0] == {"jsonrpc": "2.0", "result": 42, "id": 1}
    for r in replies[1:]:
        assert r["id"] is None and r["error"]["code"] == INVALID_REQUEST


async def test_non_finite_results_never_reach_the_wire(
    env: Env, session: aiohttp.ClientSession
) -> None:
    for payload in [req("nan"), req("scale", [1e308]), {"method": "nan", "id": 3}]:
        status, _, raw = await post_raw(session, env.url, json.dumps(payload).encode())
        reply = strict_loads(raw)
        assert reply["error"]["code"] == INTERNAL_ERROR, payload
        assert status == (200 if "jsonrpc" in payload else 500)


async def test_unexpected_failure_is_a_json_error_not_plain_text(
    env: Env, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(req: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(env.server, "_process_one", broken)
    status, content_type, raw = await post_raw(session, env.url, b'{"method":"x","id":1}')
    assert status == 500 and content_type == "application/json"
    assert strict_loads(raw)["error"]["code"] == INTERNAL_ERROR
    assert "rpc_request_failed" in env.log.events()


# ---------------------------------------------------------------------------- property test


class ThreadedServer:
    """An RPCServer on its own loop in a thread, so hypothesis can drive it synchronously."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.log = RecordingLogger()

        async def start() -> tuple[RPCServer, EventHub]:
            hub = EventHub()
            server = RPCServer(make_registry(), hub, None, logger=self.log, **kwargs)
            await server.start("127.0.0.1", 0)
            return server, hub

        self.server, self.hub = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        assert self.server.port is not None
        self.port = self.server.port

    def post(self, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.hub.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


PROPERTY_BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[ThreadedServer]:
    server = ThreadedServer(max_body_bytes=PROPERTY_BODY_LIMIT, max_batch=8)
    yield server
    server.close()


def _lenient_dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # may emit NaN / Infinity


_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**70)
    | st.floats() | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=12,
)
_requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", "3"]) | _values,
        "method": st.sampled_from(["getblockcount", "echo", "scale", "nan", "boom", "help",
                                   "nope"]) | _values,
        "params": _values,
        "id": _values,
    },
)
_id_tokens = st.sampled_from([
    "1e999999", "-1e999999", "NaN", "Infinity", "-Infinity", "1" + "0" * 4400, "1" * 20,
    "{}", "[]", '{"a":[{}]}', "true", "null", "1.5", "-0", '"x"', "1E400", "0.0e-99999",
])
_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
    _values.map(_lenient_dumps),
    _requests.map(_lenient_dumps),
    st.lists(_requests, max_size=10).map(_lenient_dumps),
    _id_tokens.map(
        lambda t: b'{"jsonrpc":"2.0","method":"getblockcount","id":' + t.encode() + b"}"
    ),
    st.integers(0, 2 * PROPERTY_BODY_LIMIT).map(lambda n: b'{"pad":"' + b"x" * n + b'"}'),
)


def check_reply(status: int, body: bytes) -> None:
    if status == 204:  # notifications only: nothing to answer
        assert body == b""
        return
    assert status in (200, 400, 404, 413, 500), status
    reply = strict_loads(body)
    items = reply if isinstance(reply, list) else [reply]
    if isinstance(reply, list):
        assert status == 200 and reply
    for item in items:
        assert isinstance(item, dict) and "id" in item
        assert "error" in item or "result" in item
        error = item.get("error")
        if error is not None or "result" not in item:
            assert isinstance(error["code"], int) and isinstance(error["message"], str)
    if status == 413:
        assert reply["error"]["code"] == INVALID_REQUEST


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=_bodies)
def test_any_body_gets_a_jsonrpc_reply(threaded_server: ThreadedServer, body: bytes) -> None:
    status, reply = threaded_server.post(body)
    check_reply(status, reply)
    assert "rpc_request_failed" not in threaded_server.log.events()


def test_server_still_up_after_property_test(threaded_server: ThreadedServer) -> None:
    status, body = threaded_server.post(b'{"jsonrpc":"2.0","method":"getblockcount","id":1}')
    assert status == 200 and strict_loads(body)["result"] == 42


# ---------------------------------------------------------------------------- slow clients

HEADER_TIMEOUT = 0.3
PARTIAL_HEADER = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """Everything the server sends until it closes the connection (fails after timeout)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


async def test_partial_header_client_is_disconnected() -> None:
    env = await start_env(header_timeout=HEADER_TIMEOUT)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        t0 = time.monotonic()
        writer.write(PARTIAL_HEADER)
        await writer.drain()
        assert await read_until_closed(reader) == b""
        assert time.monotonic() - t0 >= HEADER_TIMEOUT * 0.8  # not dropped straight away
        await wait_until(lambda: env.server.connection_count == 0)
        assert "rpc_header_timeout" in env.log.events()
        writer.close()
    finally:
        await stop_env(env)


async def test_dripping_bytes_does_not_extend_the_deadline() -> None:
    env = await start_env(header_timeout=HEADER_TIMEOUT)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        closed = asyncio.create_task(read_until_closed(reader, timeout=30))
        header = PARTIAL_HEADER + b"X-Pad: " + b"a" * 1000
        for i in range(len(header)):
            if closed.done():
                break
            writer.write(header[i : i + 1])
            # Client pacing (one byte per 20 ms), not synchronisation: the header would take
            # 20 s to finish, the server must cut it off long before.
            await asyncio.wait([closed], timeout=0.02)
        assert closed.done(), "a client dripping its header one byte at a time was not dropped"
        assert closed.result() == b""
        writer.close()
    finally:
        await stop_env(env)


async def test_idle_keepalive_connection_with_partial_next_request_is_disconnected() -> None:
    env = await start_env(header_timeout=HEADER_TIMEOUT)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        body = json.dumps(req("getblockcount")).encode()
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        assert strict_loads(await reader.readexactly(length))["result"] == 42
        writer.write(PARTIAL_HEADER)  # the next request never completes
        assert await read_until_closed(reader) == b""
        writer.close()
    finally:
        await stop_env(env)


async def test_honest_clients_outlive_the_header_timeout(session: aiohttp.ClientSession) -> None:
    release = asyncio.Event()
    reg = make_registry()

    async def slow() -> str:
        await release.wait()
        return "done"

    reg.register("slow", slow)
    env = await start_env(reg, header_timeout=HEADER_TIMEOUT)
    try:
        honest = asyncio.create_task(post(session, env.url, req("slow")))
        async with session.get(env.url + "events") as stream:
            assert (await stream.content.readline()).startswith(b": connected")
            # A slowloris client on the side: by the time it is dropped, the honest request
            # and the stream have been open longer than the header timeout.
            reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
            writer.write(PARTIAL_HEADER)
            assert await read_until_closed(reader) == b""
            writer.close()

            release.set()
            status, body = await asyncio.wait_for(honest, TIMEOUT)
            assert status == 200 and body["result"] == "done"
            env.hub.publish({"type": "block_connected", "height": 7})
            async with asyncio.timeout(TIMEOUT):
                while not (line := await stream.content.readline()).startswith(b"data: "):
                    assert line, "stream closed"
            assert json.loads(line[6:])["height"] == 7
    finally:
        await stop_env(env)


async def test_many_unauthenticated_slow_clients_are_all_dropped() -> None:
    env = await start_env(auth=("user", "pw"), header_timeout=HEADER_TIMEOUT)
    try:
        conns = [await asyncio.open_connection("127.0.0.1", env.port) for _ in range(200)]
        for _, writer in conns:
            writer.write(PARTIAL_HEADER)
        results = await asyncio.gather(*(read_until_closed(r, 10 * TIMEOUT) for r, _ in conns))
        assert results == [b""] * len(conns)
        await wait_until(lambda: env.server.connection_count == 0)
        for _, writer in conns:
            writer.close()
    finally:
        await stop_env(env)


async def test_connection_limit(session: aiohttp.ClientSession) -> None:
    env = await start_env(max_connections=3)
    try:
        held = [await asyncio.open_connection("127.0.0.1", env.port) for _ in range(3)]
        await wait_until(lambda: env.server.connection_count == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        writer.write(PARTIAL_HEADER + b"\r\n")
        assert await read_until_closed(reader) == b""  # closed on arrival, no answer
        writer.close()
        assert env.server.connection_count == 3
        assert "rpc_connection_limit_reached" in env.log.events()

        held[0][1].close()
        await wait_until(lambda: env.server.connection_count == 2)
        status, body = await post(session, env.url, req("getblockcount"))
        assert status == 200 and body["result"] == 42
        for _, w in held[1:]:
            w.close()
    finally:
        await stop_env(env)


def test_server_rejects_nonsense_bounds() -> None:
    hub = EventHub()
    for kwargs in [{"max_batch": 0}, {"header_timeout": 0}, {"max_connections": 0}]:
        with pytest.raises(ValueError):
            RPCServer(make_registry(), hub, None, **kwargs)
    hub.close()


# ---------------------------------------------------------------------------- configuration

HOME = {"HOME": "/home/alice"}


def test_bound_options_default_to_the_server_constants() -> None:
    cfg = load_config({}, HOME)
    assert cfg.max_rpc_batch == DEFAULT_MAX_RPC_BATCH == 1000
    assert cfg.rpc_header_timeout == DEFAULT_RPC_HEADER_TIMEOUT == 10.0
    assert cfg.max_rpc_connections == DEFAULT_MAX_RPC_CONNECTIONS == 256


@pytest.mark.parametrize(
    ("name", "file_value", "env_value", "expected"),
    [
        ("max_rpc_batch", "10", "20", (10, 20)),
        ("rpc_header_timeout", "2.5", "0.5", (2.5, 0.5)),
        ("max_rpc_connections", "3", "4", (3, 4)),
    ],
)
def test_bound_options_from_file_and_env(
    name: str, file_value: str, env_value: str, expected: tuple[Any, Any]
) -> None:
    text = f"{name} = {file_value}\n"
    env = {**HOME, "POWLAB_" + name.upper(): env_value}
    assert getattr(load_config({}, HOME, text), name) == expected[0]
    assert getattr(load_config({}, env, text), name) == expected[1]


@pytest.mark.parametrize(
    ("name", "bad"),
    [("max_rpc_batch", "0"), ("max_rpc_batch", "x"), ("rpc_header_timeout", "0"),
     ("rpc_header_timeout", "inf"), ("max_rpc_connections", "0")],
)
def test_bound_options_reject_bad_values(name: str, bad: str) -> None:
    var = "POWLAB_" + name.upper()
    with pytest.raises(ConfigError, match=var):
        load_config({}, {**HOME, var: bad})


# ---------------------------------------------------------------------------- SIGPIPE


def sigpipe_ignored(status_text: str) -> bool:
    line = next(x for x in status_text.splitlines() if x.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) & SIGPIPE_BIT)


def test_client_commands_keep_sigpipe_default() -> None:
    # Run `powlab rpc` in a child with the command replaced by a probe of its own signal
    # mask: no node needed, and the real main() does the signal set-up.
    probe = (
        "import sys, lab.cli as cli\n"
        "cli._cmd_rpc = lambda args: print(open('/proc/self/status').read()) or 0\n"
        "sys.exit(cli.main(['rpc', 'getblockcount']))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=REPO, check=True).stdout
    assert not sigpipe_ignored(out), "powlab rpc must die quietly on a closed pipe"


@pytest.mark.slow
def test_daemon_ignores_sigpipe(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1").start()
    try:
        assert node.proc is not None
        status = Path(f"/proc/{node.proc.pid}/status").read_text()
        assert sigpipe_ignored(status), "powlab node must not be killed by SIGPIPE"
        assert node.stop() == 0
    finally:
        node.ensure_dead()


@pytest.mark.slow
def test_daemon_uses_configured_batch_limit(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n1", env={"POWLAB_MAX_RPC_BATCH": "2"}).start()
    try:
        assert node.auth is not None
        conn = http.client.HTTPConnection(node.url.split("//")[1].rstrip("/"), timeout=30)
        token = base64.b64encode(":".join(node.auth).encode()).decode()
        batch = json.dumps([req("getblockcount", id=i) for i in range(3)])
        conn.request("POST", "/", body=batch, headers={"Authorization": f"Basic {token}"})
        reply = strict_loads(conn.getresponse().read())
        conn.close()
        assert isinstance(reply, dict), "a batch of 3 ran despite POWLAB_MAX_RPC_BATCH=2"
        assert reply["error"]["code"] == INVALID_REQUEST
        assert "limit is 2" in reply["error"]["message"]
        assert node.stop() == 0
    finally:
        node.ensure_dead()
