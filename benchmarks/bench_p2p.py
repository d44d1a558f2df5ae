"""P2P benchmarks on real `powlab node` processes over loopback (127.0.0.2, 127.0.0.3, ...;
POWLAB_BENCH_SUBNET=127.B.C moves them).

Usage: python benchmarks/bench_p2p.py [--quick] [--nodes 8] [--rounds 7] [--txs 1000]
                                      [--sync-blocks 5000] [--only propagation|sync]

Measures, all in this run on this machine:
  (a) block propagation across N nodes (default 8) in a LINE (node i --connect node i-1) and
      in a MESH (every pair linked), for a 1-transaction block (coinbase only, nTx = 1) and a
      1000-transaction block (the 1000 transactions are first submitted to the end node and
      relayed until every mempool holds all of them; then `generatetoaddress 1` on that end
      node). The figure is the time from the miner's `block_connected` log line to the LAST
      node's, median and p90 over several blocks; timestamps come from the nodes' JSON logs
      (all processes share the machine's clock).
  (b) the same with FULL-block relay: there is no switch to turn compact blocks off, so the
      nodes of this variant are started through a shim in this script (`--_relay-shim MODE`)
      that replaces `P2PProtocol.announce_block` (and turns off compact fetches and relay
      ahead of validation). MODE "full" (the default comparison)
      announces the header (`Headers`), and the peer fetches the block with `GetData` as it
      does during sync — Bitcoin's `sendheaders` relay; MODE "push" sends the whole block
      (`BlockMsg`) unsolicited. Everything else is the real daemon. Goal: compact ÷ full
      latency for the 1000-transaction block <= 0.3. Bytes on the wire for relaying the block
      (sum of `bytes_sent` deltas of every node) are reported for both.
  (c) bytes on the wire per relayed transaction per node: the `bytes_sent` / `bytes_recv`
      deltas of all nodes while the 1000 transactions of (a) relay, ÷ (txs × nodes).
  (d) fresh-node sync of 5,000 blocks: a node with 5,000 (coinbase-only) blocks, a fresh node
      `--connect`ing to it over an authenticated, encrypted session; blocks/s over the window
      from the fresh node's first `block_connected` to its last (and, for reference, from its
      `peer_connected`). Two baselines, both measured in the same run:
        - the goal's baseline, the NODE IMPORT: an empty `powlab node --loadblock FILE` of the
          same blocks, timed the same way from its own `block_connected` lines (the same
          per-block work as the sync: log line, event, metrics, one commit per block);
        - the stricter BARE IMPORT, for reference: in-process `ChainState.accept_block` +
          `SQLiteStore.apply` (one commit per block) on an empty store, each block decoded
          from the bytes served by `getblock HASH 0` (no log, event or metrics per block).
      Goal: sync ÷ node import >= 0.7; both ratios are printed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from consensus.block import Block, decode_block  # noqa: E402
from consensus.chainstate import ChainState  # noqa: E402
from consensus.keys import PrivateKey, encode_address, pubkey_hash  # noqa: E402
from consensus.params import REGTEST  # noqa: E402
from consensus.tx import Transaction, TxIn, TxOut, sign_transaction  # noqa: E402
from consensus.validation import SignatureCache  # noqa: E402
from lab.stats import percentile  # noqa: E402
from lab.testnet.manifest import check_subnet  # noqa: E402
from lab.testnet.processes import NodeProcess  # noqa: E402
from lab.waiting import wait_until  # noqa: E402

# Nodes bind SUBNET.2, SUBNET.3, …; POWLAB_BENCH_SUBNET=127.B.C moves them (loopback only),
# e.g. to run next to a testnet or the test suite.
SUBNET = check_subnet(os.environ.get("POWLAB_BENCH_SUBNET") or "127.0.0")

PARAMS = REGTEST
KEY = PrivateKey(bytes(range(1, 33)))
PKH = pubkey_hash(KEY.public_key)
ADDRESS = encode_address(PARAMS.address_prefix, PKH)
BURN = encode_address(PARAMS.address_prefix, bytes(20))
TX_FEE = 1_000
FULL_RELAY_FLAG = "--_relay-shim"
LATENCY_GOAL_RATIO = 0.3
SYNC_GOAL_RATIO = 0.7


# ----------------------------------------------------------------- small helpers


def ms_summary(seconds: Sequence[float]) -> str:
    if not seconds:
        return "n=0"
    ms = [s * 1e3 for s in seconds]
    return (
        f"n={len(ms):<3} p50 {percentile(ms, 0.5):8.2f} ms  p90 {percentile(ms, 0.9):8.2f} ms"
        f"  min {min(ms):8.2f}  max {max(ms):8.2f}"
    )


def parse_iso(text: str) -> float:
    """ISO-8601 (with `Z` or an offset) to POSIX seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class KeepAliveRPC:
    """JSON-RPC over one persistent HTTP connection (with batches)."""

    def __init__(self, url: str, auth: tuple[str, str] | None, timeout: float = 600) -> None:
        parts = urlsplit(url)
        self.path = parts.path or "/"
        self.headers = {"Content-Type": "application/json"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
        )
        self._id = 0

    def _post(self, payload: Any) -> Any:
        body = json.dumps(payload)
        try:
            self.conn.request("POST", self.path, body, self.headers)
            return json.loads(self.conn.getresponse().read())
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closed an idle keep-alive connection: reconnect once.
            self.conn.close()
            self.conn.request("POST", self.path, body, self.headers)
            return json.loads(self.conn.getresponse().read())

    def call(self, method: str, *params: Any) -> Any:
        self._id += 1
        reply = self._post({"jsonrpc": "2.0", "id": self._id, "method": method,
                            "params": list(params)})
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]], chunk: int = 200) -> list[Any]:
        results: list[Any] = []
        for i in range(0, len(calls), chunk):
            part = calls[i : i + chunk]
            payload = [
                {"jsonrpc": "2.0", "id": n, "method": m, "params": list(p)}
                for n, (m, p) in enumerate(part)
            ]
            replies = sorted(self._post(payload), key=lambda r: r["id"])
            for (method, _), reply in zip(part, replies, strict=True):
                if reply.get("error"):
                    raise RuntimeError(f"{method}: {reply['error']}")
                results.append(reply["result"])
        return results

    def close(self) -> None:
        self.conn.close()


class LogFollower:
    """Reads a node's JSON log incrementally; remembers when each block hash connected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.connected: dict[str, float] = {}
        self.events: dict[str, list[float]] = {}
        self._partial = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.startswith(b"{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            event = record.get("event")
            stamp = record.get("timestamp")
            if not isinstance(event, str) or not isinstance(stamp, str):
                continue
            at = parse_iso(stamp)
            if event == "block_connected":
                self.connected[record["hash"]] = at
            self.events.setdefault(event, []).append(at)


# ----------------------------------------------------------------- our nodes


@dataclass
class BenchNode(NodeProcess):
    """A `NodeProcess` that can be launched through the full-relay shim of this script."""

    relay: str = "compact"  # or "full" / "push": through the shim, see run_shimmed_node
    profile_to: Path | None = None  # run the daemon under cProfile, stats written at exit
    follower: LogFollower | None = None
    client: KeepAliveRPC | None = None
    p2p_addr: str = ""

    def start(self, wait: bool = True) -> BenchNode:
        launcher = (
            [sys.executable, str(Path(__file__).resolve()), FULL_RELAY_FLAG, self.relay]
            if self.relay != "compact"
            else [sys.executable, "-m", "node"]
        )
        if self.profile_to is not None:
            launcher[1:1] = ["-m", "cProfile", "-o", str(self.profile_to)]
        self.launcher = launcher
        self.follower = LogFollower(self.log_path)
        super().start(wait)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        super().wait_ready(timeout)
        self.client = KeepAliveRPC(self.url, self.auth)
        self.p2p_addr = (self.datadir / "p2p.addr").read_text().strip()

    def call(self, method: str, *params: Any) -> Any:
        assert self.client is not None
        return self.client.call(method, *params)

    def bytes_totals(self) -> tuple[int, int]:
        peers = self.call("getpeerinfo")
        return sum(p["bytes_sent"] for p in peers), sum(p["bytes_recv"] for p in peers)

    def shutdown(self) -> None:
        if self.client is not None:
            self.client.close()
        self.shut_down(20)


def wait_connected(
    nodes: Sequence[BenchNode], degree: Callable[[int], int], timeout: float
) -> None:
    for i, node in enumerate(nodes):
        wait_until(lambda n=node, i=i: n.call("getconnectioncount") >= degree(i), timeout,
                   f"node {i} connections", first=0.02)


@contextlib.contextmanager
def network(
    workdir: Path, count: int, topology: str, relay: str = "compact", first_host: int = 2,
    profile: dict[int, Path] | None = None,
) -> Iterator[list[BenchNode]]:
    """`count` nodes on SUBNET.<first_host + i>, linked as a line or a full mesh."""
    nodes: list[BenchNode] = []
    tag = f"{topology}-{relay}"
    try:
        for i in range(count):
            host = f"{SUBNET}.{first_host + i}"
            if topology == "line":
                targets = [nodes[i - 1].p2p_addr] if i else []
            else:
                targets = [n.p2p_addr for n in nodes]
            args = ["--p2p-bind", f"{host}:0"]
            for target in targets:
                args += ["--connect", target]
            node = BenchNode(workdir / f"{tag}-{i}", args=args, relay=relay,
                             profile_to=(profile or {}).get(i))
            node.start()
            nodes.append(node)

        def degree(i: int) -> int:
            if topology == "mesh":
                return count - 1
            return 1 if i in (0, count - 1) else 2

        wait_connected(nodes, degree, 60)
        yield nodes
    finally:
        for node in nodes:
            node.shutdown()
        for node in nodes:
            node.ensure_dead()


def wait_block_everywhere(nodes: Sequence[BenchNode], block_hash: str, timeout: float) -> None:
    """Follow the logs (no RPC load on the nodes) until every node connected `block_hash`."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in pending:
            assert node.follower is not None
            node.follower.poll()
        pending = [n for n in pending if block_hash not in n.follower.connected]  # type: ignore[union-attr]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"block {block_hash[:16]} did not reach {len(pending)} nodes")
        time.sleep(0.02)


def wait_height(nodes: Sequence[BenchNode], height: int, timeout: float) -> None:
    for node in nodes:
        wait_until(lambda n=node: n.call("getblockcount") >= height, timeout, f"height {height}",
                   first=0.02)


def wait_mempools(nodes: Sequence[BenchNode], ntxs: int, timeout: float) -> int:
    """Wait until every mempool holds `ntxs` transactions; returns how many are missing.

    A transaction whose only announcement (or reply) datagram is lost is never fetched again,
    so in a line a mempool can stay short: we go on after `timeout` and report the shortfall.
    """
    deadline = time.monotonic() + timeout
    while True:
        sizes = [n.call("getmempoolinfo")["size"] for n in nodes]
        if min(sizes) >= ntxs or time.monotonic() > deadline:
            return sum(max(0, ntxs - s) for s in sizes)
        time.sleep(0.1)


def fill_mempools(
    nodes: Sequence[BenchNode], miner: BenchNode, txs: Sequence[Transaction], chunk: int
) -> int:
    """Submit `txs` to `miner`, `chunk` at a time, each chunk relayed everywhere before the
    next (chunk 0: all at once). Returns the transactions missing from mempools at the end."""
    assert miner.client is not None
    chunk = chunk or len(txs)
    missing = 0
    for i in range(0, len(txs), chunk):
        part = txs[i : i + chunk]
        miner.client.batch([("sendrawtransaction", [tx.encode().hex()]) for tx in part], 50)
        missing = wait_mempools(nodes, i + len(part), 5)
    return missing


def propagation_of(nodes: Sequence[BenchNode], miner: BenchNode, block_hash: str) -> float:
    """Seconds from the miner's block_connected to the last node's."""
    times = [n.follower.connected[block_hash] for n in nodes]  # type: ignore[union-attr]
    return max(times) - miner.follower.connected[block_hash]  # type: ignore[union-attr]


def total_bytes(nodes: Sequence[BenchNode]) -> tuple[int, int]:
    sent = recv = 0
    for node in nodes:
        s, r = node.bytes_totals()
        sent += s
        recv += r
    return sent, recv


# ----------------------------------------------------------------- transactions


def fan_out(coinbase: Transaction, outputs: int) -> Transaction:
    amount = coinbase.outputs[0].amount
    fee = 200 * outputs  # far above 1 unit/byte
    each = (amount - fee) // outputs
    unsigned = Transaction([TxIn(coinbase.txid, 0, b"", b"")], [TxOut(each, PKH)] * outputs)
    return sign_transaction(unsigned, [KEY], PARAMS.genesis_hash)


def spends(parent: Transaction, count: int) -> list[Transaction]:
    txs = []
    for n in range(count):
        amount = parent.outputs[n].amount - TX_FEE
        unsigned = Transaction([TxIn(parent.txid, n, b"", b"")], [TxOut(amount, PKH)])
        txs.append(sign_transaction(unsigned, [KEY], PARAMS.genesis_hash))
    return txs


def fetch_block(node: BenchNode, block_hash: str) -> Block:
    return decode_block(bytes.fromhex(node.call("getblock", block_hash, 0)),
                        PARAMS.max_block_size)


# ----------------------------------------------------------------- propagation


@dataclass
class PropagationResult:
    topology: str
    relay: str
    small: list[float] = field(default_factory=list)
    large: list[float] = field(default_factory=list)
    small_bytes: list[int] = field(default_factory=list)
    large_bytes: list[int] = field(default_factory=list)
    tx_sent: list[float] = field(default_factory=list)  # bytes per tx per node
    tx_recv: list[float] = field(default_factory=list)
    large_block_size: int = 0
    missing_txs: list[int] = field(default_factory=list)  # summed over nodes, per round


def settle() -> None:
    # Idle nodes, and a random phase relative to the nodes' 250 ms timer ticks.
    time.sleep(0.3 + random.random() * 0.25)


def measure_block(nodes: Sequence[BenchNode], miner: BenchNode) -> tuple[float, int, str]:
    before = total_bytes(nodes)[0]
    block_hash = miner.call("generatetoaddress", 1, BURN)[0]
    wait_block_everywhere(nodes, block_hash, 60)
    seconds = propagation_of(nodes, miner, block_hash)
    time.sleep(0.1)  # let stragglers (duplicate announcements) land in the byte count
    return seconds, total_bytes(nodes)[0] - before, block_hash


def bench_propagation(
    workdir: Path, count: int, topology: str, relay: str, rounds: int, ntxs: int,
    small_only: bool = False, burst_chunk: int = 10, profile: dict[int, Path] | None = None,
    bandwidth_kbps: float = 0.0,
) -> PropagationResult:
    result = PropagationResult(topology, relay)
    with network(workdir, count, topology, relay, profile=profile) as nodes:
        miner = nodes[0]
        large_rounds = 0 if small_only else rounds
        if large_rounds:
            # Coinbases to our key, one per 1000-tx round, then maturity.
            funding = miner.call("generatetoaddress", large_rounds, ADDRESS)
            miner.call("generatetoaddress", PARAMS.coinbase_maturity, BURN)
            parents = [fan_out(fetch_block(miner, h).txs[0], ntxs) for h in funding]
            for parent in parents:
                miner.call("sendrawtransaction", parent.encode().hex())
            miner.call("generatetoaddress", 1, BURN)
        else:
            parents = []
            miner.call("generatetoaddress", 3, BURN)
        height = miner.call("getblockcount")
        wait_height(nodes, height, 120)
        if bandwidth_kbps:
            # Every link capped (after funding, which is not measured): loopback has no
            # bandwidth of its own, so this is what lets block size matter.
            for node in nodes:
                node.call("setlinkfault", {"bandwidth_kbps": bandwidth_kbps})
        # Warm-up: one block of each kind is not counted.
        settle()
        measure_block(nodes, miner)

        for _ in range(rounds):
            settle()
            seconds, nbytes, _ = measure_block(nodes, miner)
            result.small.append(seconds)
            result.small_bytes.append(nbytes)

        for parent in parents:
            txs = spends(parent, ntxs)
            settle()
            sent0, recv0 = total_bytes(nodes)
            result.missing_txs.append(fill_mempools(nodes, miner, txs, burst_chunk))
            time.sleep(0.3)
            sent1, recv1 = total_bytes(nodes)
            result.tx_sent.append((sent1 - sent0) / (ntxs * count))
            result.tx_recv.append((recv1 - recv0) / (ntxs * count))
            settle()
            seconds, nbytes, block_hash = measure_block(nodes, miner)
            result.large.append(seconds)
            result.large_bytes.append(nbytes)
            result.large_block_size = len(miner.call("getblock", block_hash, 0)) // 2
    return result


def print_propagation(r: PropagationResult, count: int, ntxs: int) -> None:
    head = f"  {r.topology:<4} {r.relay:<7}"
    print(f"{head} 1-tx block      {ms_summary(r.small)}"
          + (f"  wire {statistics.median(r.small_bytes):,.0f} B" if r.small_bytes else ""))
    if r.large:
        print(f"{head} {ntxs}-tx block   {ms_summary(r.large)}"
              f"  wire {statistics.median(r.large_bytes):,.0f} B"
              f" (block {r.large_block_size:,} B)")
    if r.tx_sent:
        print(f"{head} tx relay: {statistics.median(r.tx_sent):.1f} B sent, "
              f"{statistics.median(r.tx_recv):.1f} B received per tx per node "
              f"({count} nodes, {ntxs} txs per round)")
    if any(r.missing_txs):
        print(f"{head} WARNING: transactions missing from mempools before mining "
              f"(sum over nodes, per round): {r.missing_txs}")


# ----------------------------------------------------------------- sync


@dataclass
class SyncResult:
    blocks: int
    generate_s: float
    sync_window_s: float  # first block_connected -> last, on the fresh node
    sync_from_peer_s: float  # peer_connected -> last block_connected
    sync_wall_s: float  # process launch -> height reached (includes start-up)
    local_s: float  # in-process ChainState + SQLiteStore import (no node around it)
    node_import_s: float  # `powlab node --loadblock`: first block_connected -> last

    @property
    def sync_rate(self) -> float:
        return (self.blocks - 1) / self.sync_window_s

    @property
    def local_rate(self) -> float:
        return self.blocks / self.local_s

    @property
    def node_import_rate(self) -> float:
        return (self.blocks - 1) / self.node_import_s


def wait_logged(node: BenchNode, block_hash: str, what: str, timeout: float = 600) -> LogFollower:
    """Follow `node`'s log until it has connected `block_hash`; fail if the node dies."""
    assert node.follower is not None
    follower = node.follower
    deadline = time.monotonic() + timeout
    while block_hash not in follower.connected:
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"{node.datadir.name} exited during the {what}:\n"
                                 f"{node.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.datadir.name}: no {what} in {timeout:.0f} s")
        time.sleep(0.05)
        follower.poll()
    return follower


def import_with_loadblock(
    workdir: Path, hexes: Sequence[str], hashes: Sequence[str], host: int
) -> float:
    """The goal's baseline: an empty node importing the same blocks from a file
    (`powlab node --loadblock`), timed like the sync from its own block_connected lines."""
    export = workdir / "blocks.hex"
    export.write_text("".join(h + "\n" for h in hexes))
    node = BenchNode(workdir / "loadblock", args=[
        "--p2p-bind", f"{SUBNET}.{host}:0", "--loadblock", str(export)])
    try:
        node.start(wait=False)
        follower = wait_logged(node, hashes[-1], "import")
        return follower.connected[hashes[-1]] - follower.connected[hashes[0]]
    finally:
        node.shutdown()
        node.ensure_dead()


def import_locally(raw_blocks: Sequence[bytes], workdir: Path) -> float:
    """Seconds to import `raw_blocks` into an empty on-disk store, as the daemon would."""
    from storage import open_store

    datadir = workdir / "local-import"
    shutil.rmtree(datadir, ignore_errors=True)
    datadir.mkdir(parents=True)
    store = open_store(datadir, PARAMS)
    chain = ChainState(PARAMS, store, store.load(),
                       signature_cache=SignatureCache(100_000))
    store.apply(chain.take_update())
    now = int(time.time())
    t0 = time.perf_counter()
    for raw in raw_blocks:
        block = decode_block(raw, PARAMS.max_block_size)
        result = chain.accept_block(block, now)
        if result.status != "connected":
            raise AssertionError(f"local import: {result.status} {result.reason}")
        store.apply(chain.take_update())
    elapsed = time.perf_counter() - t0
    store.close()
    return elapsed


def bench_sync(
    workdir: Path, nblocks: int, host_a: int = 2, profile_to: Path | None = None
) -> SyncResult:
    source = BenchNode(workdir / "sync-source", args=["--p2p-bind", f"{SUBNET}.{host_a}:0"])
    fresh: BenchNode | None = None
    try:
        source.start()
        t0 = time.perf_counter()
        hashes: list[str] = []
        while len(hashes) < nblocks:
            hashes += source.call("generatetoaddress", min(1000, nblocks - len(hashes)), BURN)
        generate_s = time.perf_counter() - t0
        assert source.client is not None
        hexes = source.client.batch([("getblock", [h, 0]) for h in hashes], chunk=250)
        local_s = import_locally([bytes.fromhex(h) for h in hexes], workdir)
        node_import_s = import_with_loadblock(workdir, hexes, hashes, host_a + 2)

        fresh = BenchNode(workdir / "sync-fresh", args=[
            "--p2p-bind", f"{SUBNET}.{host_a + 1}:0", "--connect", source.p2p_addr],
            profile_to=profile_to)
        launched = time.time()
        fresh.start(wait=False)
        follower = wait_logged(fresh, hashes[-1], "sync")
        reached = follower.connected[hashes[-1]]
        first = follower.connected[hashes[0]]
        peer_at = min(follower.events.get("peer_connected", [first]))
        return SyncResult(nblocks, generate_s, reached - first, reached - peer_at,
                          reached - launched, local_s, node_import_s)
    finally:
        source.shutdown()
        source.ensure_dead()
        if fresh is not None:
            fresh.shutdown()
            fresh.ensure_dead()


def print_sync(r: SyncResult) -> None:
    print(f"  source generated {r.blocks} blocks in {r.generate_s:.1f} s")
    print(f"  fresh-node sync : {r.sync_rate:8.1f} blocks/s (first->last block_connected "
          f"{r.sync_window_s:.2f} s; from peer_connected {r.sync_from_peer_s:.2f} s; "
          f"from launch {r.sync_wall_s:.2f} s)")
    print(f"  node import     : {r.node_import_rate:8.1f} blocks/s (an empty `powlab node "
          f"--loadblock` of the same blocks, first->last block_connected {r.node_import_s:.2f} s)")
    print(f"  bare import     : {r.local_rate:8.1f} blocks/s ({r.local_s:.2f} s, in-process "
          f"ChainState + SQLiteStore, one commit per block, no node around it)")
    ratio = r.sync_rate / r.node_import_rate
    verdict = "OK" if ratio >= SYNC_GOAL_RATIO else "MISSED"
    print(f"  sync / node import : {ratio:.2f}  (goal >= {SYNC_GOAL_RATIO}) {verdict}")
    print(f"  sync / bare import : {r.sync_rate / r.local_rate:.2f}  (stricter: also charges "
          f"the node's own per-block work, logs and events, to the network)")


# ----------------------------------------------------------------- profiling

PROFILE_FUNCTIONS = (
    "_on_compact_block", "_mempool_short_ids", "_request_blocks", "_refresh_download_queue",
    "_on_headers", "accept_header", "_on_block", "receive_stream_data", "_on_getdata",
    "_finish_compact", "_process_block",
    "submit_block", "accept_block", "_after_chain_change", "_commit", "apply",
    "update_for_chain", "_publish_tx_statuses", "announce_block", "decode_transaction",
    "merkle_root", "_on_tx", "submit_transaction", "handle_timer",
)


def print_profile(path: Path, title: str, top: int = 18) -> None:
    """The daemon's own functions by cumulative time, then everything by own time."""
    import pstats

    wait_until(path.exists, 30, "profile output", first=0.02)
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    ours, flat = [], []
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in raw.items():
        label = f"{Path(filename).parent.name}/{Path(filename).name}:{line}:{name}"
        flat.append((tottime, ncalls, label))
        if str(REPO) in filename and name in PROFILE_FUNCTIONS:
            ours.append((cumtime, ncalls, label))
    print(f"\n{title}\n  cumulative, selected daemon functions:")
    for seconds, ncalls, label in sorted(ours, reverse=True)[:top]:
        print(f"    {seconds:8.3f} s {ncalls:>9} calls  {label}")
    print("  own time, top functions:")
    for seconds, ncalls, label in sorted(flat, reverse=True)[:top]:
        print(f"    {seconds:8.3f} s {ncalls:>9} calls  {label}")


def profile_relay(workdir: Path, rounds: int, ntxs: int, burst_chunk: int) -> None:
    """A 3-node line, 1000-tx blocks, with the middle node (the relaying one) under cProfile."""
    out = workdir / "middle.prof"
    r = bench_propagation(workdir, 3, "line", "compact", rounds, ntxs, burst_chunk=burst_chunk,
                          profile={1: out})
    print_propagation(r, 3, ntxs)
    print_profile(out, f"middle node of 3 under cProfile, whole run ({rounds} blocks of {ntxs} "
                  f"txs, their relay, {rounds + 1} empty blocks, setup):")


# ----------------------------------------------------------------- full-relay shim


def run_shimmed_node(mode: str, argv: list[str]) -> int:
    """The real daemon with compact-block announcements replaced (`mode` "full" or "push")."""
    import p2p.sync
    from node.main import main as node_main
    from p2p.messages import BlockMsg, Headers
    from p2p.protocol import P2PProtocol

    def announce_block_full(
        self: P2PProtocol, block: Block, now: float, pipelined: bool = False
    ) -> None:
        block_hash = block.hash
        msg: BlockMsg | Headers | None = None
        for peer in self.peers.values():
            if not peer.established or block_hash in peer.known:
                continue
            if msg is None:
                msg = (
                    BlockMsg(block.encode()) if mode == "push"
                    else Headers((block.header.encode(),))
                )
            peer.known.add(block_hash)
            self._send(peer, msg, stream=mode == "push")

    P2PProtocol.announce_block = announce_block_full  # type: ignore[method-assign]
    # Full relay throughout: no compact block fetched for a header announcement, none
    # passed on before validation.
    p2p.sync.INV_CMPCT_BLOCK = p2p.sync.INV_BLOCK  # type: ignore[misc]
    P2PProtocol._pipeline = lambda self, block, now: None  # type: ignore[method-assign]
    return node_main(argv)


# ----------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, 200-tx blocks, 1000-block sync (a smoke run)")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="blocks measured per scenario")
    parser.add_argument("--txs", type=int, default=1000, help="transactions in the large block")
    parser.add_argument("--sync-blocks", type=int, default=5000)
    parser.add_argument("--only", choices=("propagation", "sync", "profile"),
                        help="profile: a 3-node line with the relaying node under cProfile, "
                             "then a sync with the fresh node under cProfile")
    parser.add_argument("--topologies", default="line,mesh")
    parser.add_argument("--relays", default="compact,full",
                        help="comma-separated: compact, full (header announcement, then "
                             "getdata/block), push (unsolicited full block); see the docstring")
    parser.add_argument("--burst-chunk", type=int, default=10,
                        help="transactions submitted per step while filling mempools "
                             "(0 = all at once; see the UDP-loss caveat in the docs)")
    parser.add_argument("--bandwidth-kbps", type=float, default=0.0,
                        help="cap every link with setlinkfault (kbit/s) during the measurements;"
                             " 0 = loopback's unlimited bandwidth")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the nodes
    if args.quick:
        args.rounds, args.txs, args.sync_blocks = 3, 200, 1000
    if args.nodes > 200:
        parser.error(f"--nodes: at most 200 ({SUBNET}.2 ...)")

    workdir = Path(tempfile.mkdtemp(prefix="bench_p2p_"))
    print(f"bench_p2p: {args.nodes} nodes on {SUBNET}.2.., {os.cpu_count()} cores, "
          f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}, work {workdir}")
    try:
        if args.only == "profile":
            profile_relay(workdir, args.rounds, args.txs, args.burst_chunk)
            out = workdir / "fresh.prof"
            print_sync(bench_sync(workdir, args.sync_blocks, profile_to=out))
            print_profile(out, f"fresh node syncing {args.sync_blocks} blocks under cProfile:")
        if args.only in (None, "propagation"):
            print(f"\nblock propagation (miner block_connected -> last node's), "
                  f"{args.rounds} blocks each:")
            results: dict[tuple[str, str], PropagationResult] = {}
            for topology in args.topologies.split(","):
                for relay in args.relays.split(","):
                    r = bench_propagation(workdir, args.nodes, topology, relay, args.rounds,
                                          args.txs, burst_chunk=args.burst_chunk,
                                          bandwidth_kbps=args.bandwidth_kbps)
                    results[(topology, r.relay)] = r
                    print_propagation(r, args.nodes, args.txs)
            for topology in args.topologies.split(","):
                c, f = results.get((topology, "compact")), results.get((topology, "full"))
                if c and f and c.large and f.large:
                    # The same p50 as the rows above print (lab.stats: nearest rank).
                    ratio = percentile(c.large, 0.5) / percentile(f.large, 0.5)
                    byte_ratio = statistics.median(c.large_bytes) / statistics.median(
                        f.large_bytes)
                    verdict = "OK" if ratio <= LATENCY_GOAL_RATIO else "MISSED"
                    print(f"  {topology}: compact / full, {args.txs}-tx block: latency p50 "
                          f"{ratio:.2f} (goal <= {LATENCY_GOAL_RATIO}) {verdict}; "
                          f"wire bytes {byte_ratio:.3f}")
        if args.only in (None, "sync"):
            print(f"\nfresh-node sync of {args.sync_blocks} blocks:")
            print_sync(bench_sync(workdir, args.sync_blocks))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == FULL_RELAY_FLAG:
        sys.exit(run_shimmed_node(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
