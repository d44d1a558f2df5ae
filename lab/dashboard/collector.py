"""Fills the dashboard's model from the nodes: each node's `/events` stream (server-sent
events) is followed live; RPC fills in what events do not carry (a new block's header and
coinbase, peers, mempool, mining) and catches up after a gap (at start, after a reconnect,
or when a block's parent is unknown). The live run records of `powlab attack` and `powlab
scenario run` (DIR/runs/*.jsonl, lab/scenario/runlog.py) are followed the same way.

Only lab.client talks to the nodes; the credentials stay here."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from lab.client import (
    CookieError,
    NodeEndpoint,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
    rpc_batch,
    rpc_call,
)
from lab.dashboard.model import Block, Model, NodeView
from lab.dashboard.sources import NodeSource, Sources
from lab.dashboard.untrusted import as_float, as_int, as_str, loads, redact
from lab.scenario.runlog import run_files

STATS_INTERVAL = 2.0  # seconds between polls of peers, mempool, mining and chain tips
RECONNECT_DELAY = 1.0  # seconds before a lost /events stream is reopened
RUNS_INTERVAL = 0.5  # seconds between looks at DIR/runs/
INITIAL_DEPTH = 10_000  # blocks of the active chain loaded at start
BATCH = 250  # calls per JSON-RPC batch
MAX_TIPS = 20  # chain tips of a node followed (the highest)
MAX_BRANCH_WALK = 1_000  # blocks walked back along a side branch to find a known ancestor
MAX_ADDRESSES = 10_000  # reward addresses whose owner is remembered
MAX_EVENT_LINE = 1_000_000  # bytes: a longer SSE line ends the stream
MAX_RUN_LINE = 1_000_000  # bytes: a longer run-record line is skipped (and counted)
RPC_TIMEOUT = 30.0
RPC_FAILURES = (RPCConnectionError, RPCAuthError, CookieError, RPCError, OSError)
HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIP_GRACE = STATS_INTERVAL + 1.0  # seconds an event-set tip outranks an older poll's view


class Collector:
    def __init__(self, sources: Sources, model: Model) -> None:
        self.sources = sources
        self.model = model
        self.session: aiohttp.ClientSession | None = None
        self._fetching: dict[str, asyncio.Future[Block | None]] = {}
        self._owners: dict[str, str | None] = {}
        self._node_ids: dict[str, str] = {}  # node id (hex) -> name
        self._tasks: list[asyncio.Task[None]] = []
        self._run_offsets: dict[Path, int] = {}
        self._run_skipping: set[Path] = set()  # files inside a line over MAX_RUN_LINE
        self.skipped_run_lines = 0  # run-record lines too long to read
        self._event_tip_at: dict[str, float] = {}  # when an event last moved each tip
        self._runs_seen = False  # records older than the dashboard are not logged as new
        self.loaded = asyncio.Event()  # the initial chain is in the model
        for src in sources.nodes:
            model.nodes[src.name] = NodeView(src.name, src.role, src.share)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=4))
        self._tasks = [asyncio.create_task(self._initial_load())]
        self._tasks += [asyncio.create_task(self._follow(src)) for src in self.sources.nodes]
        self._tasks.append(asyncio.create_task(self._poll_stats()))
        if self.sources.directory is not None:
            self._tasks.append(asyncio.create_task(self._follow_runs()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.session is not None:
            await self.session.close()

    def source(self, name: str) -> NodeSource:
        for src in self.sources.nodes:
            if src.name == name:
                return src
        raise KeyError(name)

    # -- RPC --------------------------------------------------------------------------------
    async def call(self, src: NodeSource, method: str, *params: Any) -> Any:
        ep = src.endpoint()
        return await rpc_call(ep.url, method, list(params), ep.auth, RPC_TIMEOUT, self.session)

    async def batch(self, src: NodeSource, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        ep: NodeEndpoint = src.endpoint()
        out: list[Any] = []
        for k in range(0, len(calls), BATCH):
            out += await rpc_batch(ep.url, calls[k:k + BATCH], ep.auth, RPC_TIMEOUT * 4,
                                   self.session)
        return out

    # -- blocks -----------------------------------------------------------------------------
    async def _initial_load(self) -> None:
        try:
            for src in self.sources.nodes:
                try:
                    height = as_int(await self.call(src, "getblockcount"))
                except RPC_FAILURES:
                    continue
                if height is None or height < 0:
                    continue
                low = max(0, height - INITIAL_DEPTH + 1)
                hashes = await self.batch(src, [("getblockhash", [h])
                                                for h in range(low, height + 1)])
                wanted = [h for h in hashes if isinstance(h, str) and h not in self.model.blocks]
                await self._load_blocks(src, wanted)
                break
        finally:
            self.loaded.set()

    async def _load_blocks(self, src: NodeSource, hashes: list[str]) -> None:
        replies = await self.batch(src, [("getblock", [h, 2]) for h in hashes])
        infos = [r for r in replies if isinstance(r, dict) and as_int(r.get("height")) is not None]
        await self._resolve_owners([_reward_address(i) for i in infos])
        for info in sorted(infos, key=lambda i: i["height"]):
            self._add(info, src.name)

    def _add(self, info: dict[str, Any], node: str) -> None:
        """A block from `getblock` into the model, if it is well formed (a node's answer is
        checked before the page draws it) and fits the tree: one above its parent when the
        parent is known; with an unknown parent only below every block held (a branch's
        root under the window), so a node cannot hang a block of any height it likes."""
        try:
            block = self._block(info, node)
        except (KeyError, TypeError, ValueError):
            return
        if not HEX64.match(block.hash) or (block.prev is not None
                                           and not HEX64.match(block.prev)):
            return
        if block.prev is None:
            if block.height != 0:
                return
        elif (parent := self.model.blocks.get(block.prev)) is not None:
            if block.height != parent.height + 1:
                return
        elif self.model.blocks and block.height > self.model.lowest_height():
            return
        self.model.add_block(block)

    def _block(self, info: dict[str, Any], node: str) -> Block:
        address = _reward_address(info)
        owner = self._owners.get(address) if address else None
        height = as_int(info["height"])
        if height is None or height < 0:
            raise ValueError("block height is not a natural number")
        prev = info.get("previousblockhash")
        txs = info.get("tx")
        count = as_int(info.get("nTx"))
        return Block(info["hash"], prev if isinstance(prev, str) else None, height,
                     as_int(info.get("time")) or 0,
                     count if count is not None else len(txs) if isinstance(txs, list) else 0,
                     miner="genesis" if height == 0 else owner or node, first_node=node)

    async def _resolve_owners(self, addresses: list[str | None]) -> None:
        """Which node's wallet each reward address belongs to (validateaddress: ismine)."""
        unknown = sorted({a for a in addresses if a and a not in self._owners})
        if not unknown:
            return

        async def ask(src: NodeSource) -> tuple[str, list[Any]]:
            try:
                return src.name, await self.batch(src, [("validateaddress", [a])
                                                         for a in unknown])
            except RPC_FAILURES:
                return src.name, []

        answers = await asyncio.gather(*(ask(s) for s in self.sources.nodes))
        for address in unknown:
            self._owners[address] = None
        for name, replies in answers:
            for address, reply in zip(unknown, replies, strict=False):
                if isinstance(reply, dict) and reply.get("ismine"):
                    self._owners[address] = name
        while len(self._owners) > MAX_ADDRESSES:
            self._owners.pop(next(iter(self._owners)))

    async def ensure_block(self, src: NodeSource, block_hash: str) -> Block | None:
        """The block, fetched from `src` with any unknown ancestors (a side branch is walked
        back until it meets a known block); one fetch per hash at a time."""
        known = self.model.blocks.get(block_hash)
        if known is not None:
            return known
        pending = self._fetching.get(block_hash)
        if pending is not None:
            return await pending
        future: asyncio.Future[Block | None] = asyncio.get_running_loop().create_future()
        self._fetching[block_hash] = future
        try:
            block = await self._fetch_chain(src, block_hash)
            future.set_result(block)
            return block
        except BaseException as exc:
            future.set_result(None)
            if isinstance(exc, RPC_FAILURES):
                return None
            raise
        finally:
            self._fetching.pop(block_hash, None)

    async def _fetch_chain(self, src: NodeSource, block_hash: str) -> Block | None:
        infos: list[dict[str, Any]] = []
        cursor: str | None = block_hash
        floor = self.model.lowest_height() if self.model.blocks else 0
        while cursor and cursor not in self.model.blocks and len(infos) < MAX_BRANCH_WALK:
            info = await self.call(src, "getblock", cursor, 2)
            if not isinstance(info, dict) or as_int(info.get("height")) is None:
                break
            infos.append(info)
            if info["height"] <= floor:
                break
            cursor = info.get("previousblockhash")
        await self._resolve_owners([_reward_address(i) for i in infos])
        for info in reversed(infos):
            self._add(info, src.name)
        return self.model.blocks.get(block_hash)

    # -- the /events stream -----------------------------------------------------------------
    async def _follow(self, src: NodeSource) -> None:
        await self.loaded.wait()
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, CookieError,
                                     ValueError):
                try:
                    await self._stream(src)
                except (KeyError, TypeError, AttributeError, RPCError) as exc:
                    _warn(f"{src.name}: unexpected answer ({exc!r}); reconnecting")
            view = self.model.nodes[src.name]
            if view.up:
                view.up = False
                self.model.add_log("node", src.name, f"{src.name} unreachable")
                self.model.publish_nodes()
            await asyncio.sleep(RECONNECT_DELAY)  # retry pacing, not synchronisation

    async def _stream(self, src: NodeSource) -> None:
        from lab.client import basic_auth_header

        assert self.session is not None
        ep = src.endpoint()
        headers = {"Authorization": basic_auth_header(*ep.auth)} if ep.auth else {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
        async with self.session.get(ep.url + "events", headers=headers, timeout=timeout,
                                    read_bufsize=2**16) as resp:
            if resp.status != 200:
                raise ValueError(f"/events answered HTTP {resp.status}")
            await self._catch_up(src)  # events from now on arrive on the stream
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                if len(line) > MAX_EVENT_LINE:
                    raise ValueError("event line too long")
                if line.startswith(b"data: "):
                    try:
                        event = loads(line[6:])
                        if isinstance(event, dict):
                            await self.on_event(src, event)
                    except Exception as exc:  # one bad event must not end the stream
                        _warn(f"{src.name}: event skipped ({type(exc).__name__}: "
                              f"{redact(str(exc))[:100]})")

    async def _catch_up(self, src: NodeSource) -> None:
        """After (re)connecting: the node's tips, and whatever blocks we missed."""
        try:
            tips = await self.call(src, "getchaintips")
        except RPC_FAILURES:
            return
        await self._apply_tips(src, tips)

    async def _apply_tips(self, src: NodeSource, tips: list[dict[str, Any]]) -> None:
        tips = [t for t in tips if isinstance(t, dict) and as_int(t.get("height")) is not None
                and isinstance(t.get("hash"), str) and HEX64.match(t["hash"])]
        for tip in sorted(tips, key=lambda t: t["height"])[-MAX_TIPS:]:
            if tip["status"] in ("headers-only", "valid-headers"):
                continue
            if tip["status"] == "invalid":
                self.model.mark_invalid(tip["hash"])
                continue
            if tip["height"] < self.model.lowest_height():
                continue
            block = await self.ensure_block(src, tip["hash"])
            if block is None:  # a tip the tree refused (or could not fetch) is not drawn
                continue
            if tip["status"] == "active" and not self._event_is_newer(src.name, block.height):
                self.model.set_tip(src.name, block.hash, block.height, "caught up")
        view = self.model.nodes[src.name]
        if not view.up:
            view.up = True
            view.error = None
            self.model.publish_nodes()

    def _event_is_newer(self, name: str, height: int) -> bool:
        """A poll's answer may predate the last event: a higher tip set by an event in the
        last moments stands (the next poll corrects it if the node really went back)."""
        view = self.model.nodes[name]
        return (view.height is not None and view.height > height
                and time.monotonic() - self._event_tip_at.get(name, 0.0) < TIP_GRACE)

    async def on_event(self, src: NodeSource, event: dict[str, Any]) -> None:
        kind = event.get("type")
        name = src.name
        if kind == "block_connected":
            block = await self.ensure_block(src, str(event.get("hash")))
            if block is not None:
                self._event_tip_at[name] = time.monotonic()
                self.model.set_tip(name, block.hash, block.height, "block connected")
        elif kind == "block_disconnected":
            # A reorganisation disconnects, then connects: the tip is logged once, at its
            # new block (so playback one step before a reorg shows the old branch). A node
            # that only disconnects (invalidateblock) is caught up by the next poll.
            pass
        elif kind == "reorg":
            self.model.add_log("reorg", name, f"{name} reorganised {event.get('depth')} "
                               f"block(s) at fork height {event.get('fork_height')}",
                               old_tip=event.get("old_tip"), new_tip=event.get("new_tip"),
                               depth=event.get("depth"))
        elif kind == "reorg_refused":
            self.model.add_log("reorg_refused", name, f"{name} refused a reorganisation "
                               f"beyond finality: {event.get('warning', '')}")
        elif kind == "double_spend":
            self.model.add_log("double_spend", name, f"{name} saw a double spend: "
                               f"{str(event.get('txid'))[:16]}… vs "
                               f"{str(event.get('conflicting'))[:16]}…",
                               txid=event.get("txid"), conflicting=event.get("conflicting"))
        elif kind == "tx_status":
            self.model.publish({"kind": "tx", "node": name, "txid": event.get("txid"),
                                "status": event.get("status"),
                                "confirmations": event.get("confirmations")})
        elif kind in ("peer_connected", "peer_disconnected"):
            self.model.add_log("peer", name, f"{name}: {kind.replace('_', ' ')} "
                               f"{event.get('addr', event.get('id', ''))}")

    # -- node status ------------------------------------------------------------------------
    async def _poll_stats(self) -> None:
        await self.loaded.wait()
        while True:
            results = await asyncio.gather(*(self.refresh(src) for src in self.sources.nodes),
                                           return_exceptions=True)
            for src, result in zip(self.sources.nodes, results, strict=True):
                if isinstance(result, Exception):
                    _warn(f"{src.name}: status poll failed ({result!r})")
            partition = self.sources.partition()
            if partition != self.model.partition:
                self.model.partition = partition
                text = ("partition: " + " | ".join(",".join(g) for g in partition)
                        if partition else "healed: the partition is lifted")
                self.model.add_log("partition" if partition else "heal", None, text,
                                   groups=partition)
            self.model.publish_nodes()
            await asyncio.sleep(STATS_INTERVAL)  # the poll's period

    async def refresh(self, src: NodeSource) -> None:
        view = self.model.nodes[src.name]
        try:
            info, peers, mempool, mining, tips, net = await self.batch(src, [
                ("getblockchaininfo", []), ("getpeerinfo", []), ("getmempoolinfo", []),
                ("getmininginfo", []), ("getchaintips", []), ("getnetworkinfo", []),
            ])
        except RPC_FAILURES as exc:
            view.up, view.error = False, redact(str(exc))[:200]
            return
        if isinstance(net, dict) and (node_id := as_str(net.get("node_id"))):
            view.node_id = node_id
            self._node_ids[node_id] = src.name
        if isinstance(info, dict):
            view.height = as_int(info.get("blocks"))
            view.warnings = as_str(info.get("warnings"))
        if isinstance(peers, list):
            established = [p for p in peers if isinstance(p, dict)
                           and p.get("status", "established") == "established"]
            view.peer_count = len(established)
            view.peers = sorted(self._node_ids.get(as_str(p.get("node_id")), "?")
                                for p in established)
        if isinstance(mempool, dict):
            view.mempool = as_int(mempool.get("size"))
        if isinstance(mining, dict):
            mining_flag = mining.get("mining")
            view.hashrate = as_float(mining.get("hashrate"))
            view.mining = mining_flag if isinstance(mining_flag, bool) else None
        view.error = None
        if isinstance(tips, list):
            with contextlib.suppress(*RPC_FAILURES):
                await self._apply_tips(src, tips)

    # -- attack runs ------------------------------------------------------------------------
    async def _follow_runs(self) -> None:
        assert self.sources.directory is not None
        while True:
            try:
                self.read_runs(self.sources.directory)
            except Exception as exc:  # the follower keeps going whatever a file holds
                _warn(f"run records: {exc!r}")
            await asyncio.sleep(RUNS_INTERVAL)  # the poll's period

    def read_runs(self, directory: Path) -> None:
        from lab.dashboard.model import MAX_RUNS

        files = run_files(directory)[-MAX_RUNS:]
        for path in files:
            self._read_run_file(path)
        for old in set(self._run_offsets) - set(files):
            del self._run_offsets[old]
            self._run_skipping.discard(old)
        self._runs_seen = True

    def _read_run_file(self, path: Path) -> None:
        """The complete lines added to one run record since the last look. Every line is
        parsed on its own: a bad record is skipped with a warning, the others still count.
        A line longer than MAX_RUN_LINE is skipped up to its newline (and counted)."""
        offset = self._run_offsets.get(path, 0)
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(MAX_RUN_LINE)
        if path in self._run_skipping:
            newline = data.find(b"\n")
            if newline < 0:
                self._run_offsets[path] = offset + len(data)
                return
            self._run_skipping.discard(path)
            self.skipped_run_lines += 1
            _warn(f"run records: {path.name}: a line over {MAX_RUN_LINE} bytes skipped")
            offset += newline + 1
            data = data[newline + 1:]
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= MAX_RUN_LINE:  # no newline in a full chunk: the line is too long
                self._run_skipping.add(path)
                self._run_offsets[path] = offset + len(data)
            else:
                self._run_offsets[path] = offset  # a line still being written
            return
        self._run_offsets[path] = offset + end + 1
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                record = loads(line)
                if isinstance(record, dict):
                    self.model.run_record(path.stem, record, log=self._runs_seen)
            except Exception as exc:  # one bad record must not stop the others
                _warn(f"run records: {path.name}: record skipped ({type(exc).__name__}: "
                      f"{str(exc)[:100]})")


def _warn(text: str) -> None:
    print(f"dashboard: {redact(text)}", file=sys.stderr, flush=True)


def _reward_address(info: dict[str, Any]) -> str | None:
    txs = info.get("tx") or []
    if txs and isinstance(txs[0], dict):
        outs = txs[0].get("vout") or []
        if outs:
            return outs[0].get("address")
    return None
