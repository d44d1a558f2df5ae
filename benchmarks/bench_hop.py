"""Where one relaying node spends a block's hop: a per-stage budget, in process.

A line a — b — c over `p2p.memory.MemoryNetwork` (real sessions, real `P2PProtocol`s), where b
is a real daemon `Node` (SQLite store, wallet, mempool, signature cache, events, metrics, JSON
logs to a file) standing in for the middle node of the benchmarks' 8-node line. For each
repetition a fresh sibling block (same parent, same transactions, another coinbase) is pushed
by a as the encoded, sealed `cmpctblock` stream frame it would send, and b takes it the whole
way: decrypt → decode → header → short ids → reconstruct → validate → connect → announce to c
→ log, events, commit, wallet, mempool. Then b invalidates the block (untimed), which puts its
transactions back into the mempool for the next sibling; they stay in the signature cache.

Each stage is timed with `time.perf_counter_ns` by wrapping the method that does it; a stage's
figure is its own time, without the stages it calls (the wrappers add well under a
microsecond each, charged to the caller). Printed per case: stage, p50 µs, share of the p50
total, and "relayed", the time from the frame arriving to the announcement having been
handed to the transport. The hop's total and "relayed" are also given in CPU time of the
thread (`time.thread_time_ns`, too dear to call around every stage): on a shared machine the
wall-clock figures include the time other processes held the core, the CPU figures do not.

Cases: a 1-tx block (coinbase only) with an empty mempool, the same with the 1000 block
transactions waiting in the mempool, and the 1000-tx block whose transactions all are.

Usage: python benchmarks/bench_hop.py [--txs 1000] [--reps 200] [--big-reps 40]
                                      [--profile {small,small-busy,big}] [--seed 1]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import node.daemon as daemon_module
from consensus.block import Block
from consensus.blockbuild import assemble_block, solve_block
from consensus.params import REGTEST
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, sign_transaction
from node.config import NodeConfig
from node.daemon import Node
from node.logs import configure_logging
from p2p.actions import SendStream
from p2p.config import P2PConfig
from p2p.memory import MemoryNetwork, MemoryNode
from p2p.messages import CompactBlock

try:
    import p2p.shortids as shortids
except ImportError:  # the code before the short-id index (for before/after figures)
    shortids = None  # type: ignore[assignment]

PARAMS = REGTEST.with_overrides({"coinbase_maturity": 2})
PORT = 18444
SPLIT = 100  # outputs per funding transaction
FEE = 10_000


class StageTimer:
    """Exclusive time per named stage, for the calls made while armed."""

    def __init__(self) -> None:
        self.current: dict[str, int] | None = None
        self._stack: list[int] = []
        self.relayed_at: int | None = None
        self.relayed_cpu: int | None = None
        self.samples: list[dict[str, int]] = []
        self._gc_start = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Cyclic collections inside a stage are part of its time; counted here as well."""
        if self.current is None:
            return
        if phase == "start":
            self._gc_start = time.perf_counter_ns()
        else:
            key = f"(of which cyclic GC, gen {info['generation']})"
            self.current[key] = self.current.get(key, 0) + time.perf_counter_ns() - self._gc_start

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            current = self.current
            if current is None:
                return fn(*args, **kwargs)
            self._stack.append(0)
            start = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter_ns() - start
                children = self._stack.pop()
                current[name] = current.get(name, 0) + elapsed - children
                if self._stack:
                    self._stack[-1] += elapsed
        return timed

    @contextmanager
    def armed(self) -> Iterator[dict[str, int]]:
        self.current = {}
        self.relayed_at = self.relayed_cpu = None
        cpu_start = time.thread_time_ns()
        start = time.perf_counter_ns()
        try:
            yield self.current
        finally:
            end = time.perf_counter_ns()
            cpu_end = time.thread_time_ns()
            sample = self.current
            sample["total"] = end - start
            sample["relayed"] = (self.relayed_at or end) - start
            sample["cpu total"] = cpu_end - cpu_start
            sample["cpu relayed"] = (self.relayed_cpu or cpu_end) - cpu_start
            self.samples.append(sample)
            self.current = None


class TimedLog:
    """structlog's bound logger, each call counted as the stage "logs"."""

    def __init__(self, inner: Any, timer: StageTimer) -> None:
        self._inner = inner
        self._timer = timer

    def __getattr__(self, name: str) -> Any:
        return self._timer.wrap("logs", getattr(self._inner, name))


class MemoryService:
    """What the daemon uses of its `P2PService`: the protocol and a flush onto the network."""

    def __init__(self, net: MemoryNetwork, holder: MemoryNode, timer: StageTimer) -> None:
        self.net = net
        self.holder = holder
        self.protocol = holder.p2p
        self._timer = timer

    def flush(self) -> None:
        self.net.flush(self.holder)
        if self._timer.current is not None and self._timer.relayed_at is None:
            self._timer.relayed_at = time.perf_counter_ns()
            self._timer.relayed_cpu = time.thread_time_ns()


class Hop:
    def __init__(self, datadir: Path, txs: int, seed: int) -> None:
        self.timer = StageTimer()
        self.net = MemoryNetwork(PARAMS, seed=seed)
        cfg = P2PConfig(listen_port=PORT, connect_only=True)
        self.a, self.b, self.c = (self.net.add_node(n, cfg) for n in "abc")
        self.node = Node(NodeConfig(datadir=datadir), PARAMS, clock=lambda: self.net.now)
        self.node._open_state()
        self._plug_daemon()
        self._link(self.a, self.b)
        self._link(self.b, self.c)
        self.txs = self._fill_mempools(txs)
        self.fees = sum(self.node.mempool.get(t.txid).fee for t in self.txs)  # type: ignore[union-attr]
        self._pkh = self.a.payout_pkh
        self._extra = itertools.count(1)
        self._instrument()

    # ------------------------------------------------------------------ set-up

    def _plug_daemon(self) -> None:
        """b's protocol talks to the daemon `Node` instead of the bare MemoryNode."""
        b, node = self.b, self.node
        b.p2p.node = node  # type: ignore[assignment]
        b.chain, b.mempool = node.chain, node.mempool
        b.submit_block = node.submit_block  # type: ignore[method-assign]
        b.submit_transaction = node.submit_transaction  # type: ignore[method-assign]
        node.p2p = MemoryService(self.net, b, self.timer)  # type: ignore[assignment]

    def _link(self, left: MemoryNode, right: MemoryNode) -> None:
        right.connect(left)

        def up() -> bool:
            pl, pr = left.p2p.by_addr.get(right.addr), right.p2p.by_addr.get(left.addr)
            return bool(pl and pr and pl.established and pr.established)

        assert self.net.run_until(up, 10), "handshake"

    def _settle(self, done: Callable[[], bool], what: str, timeout: float = 30) -> None:
        assert self.net.run_until(done, timeout), what

    def _fill_mempools(self, count: int) -> list[Transaction]:
        a = self.a
        funders = -(-count // SPLIT)
        mined = [a.mine(txs=False) for _ in range(funders + PARAMS.coinbase_maturity)]
        self._settle(self.net.converged, "funding blocks")
        fan_outs = []
        for block in mined[:funders]:
            coinbase = block.txs[0]
            part = (coinbase.outputs[0].amount - FEE) // SPLIT
            fan_outs.append(self._sign([OutPoint(coinbase.txid, 0)], [part] * SPLIT))
        for tx in fan_outs:
            a.submit_transaction(tx)
        a.mine()
        self._settle(self.net.converged, "fan-out block")
        spends = []
        for tx in fan_outs:
            for n, out in enumerate(tx.outputs):
                if len(spends) < count:
                    spends.append(self._sign([OutPoint(tx.txid, n)], [out.amount - FEE]))
        for tx in spends:
            a.submit_transaction(tx)
        self.net.flush(a)
        self._settle(
            lambda: len(self.node.mempool) == count and len(self.c.mempool) == count, "tx relay"
        )
        # c takes part in the handshakes and the relay above; from now on what b sends it is
        # dropped, so that c's own work is not interleaved with b's (it is not timed anyway).
        self.c.p2p.receive_stream_data = lambda *args: None  # type: ignore[method-assign]
        self.c.p2p.receive_datagram = lambda *args: None  # type: ignore[method-assign]
        return spends

    def _sign(self, inputs: list[OutPoint], amounts: list[int]) -> Transaction:
        unsigned = Transaction(
            [TxIn(op.txid, op.index, b"", b"") for op in inputs],
            [TxOut(v, self.a.payout_pkh) for v in amounts],
        )
        return sign_transaction(unsigned, [self.a.wallet_key], PARAMS.genesis_hash)

    def _instrument(self) -> None:
        t, proto, node = self.timer, self.b.p2p, self.node
        chain = node.chain
        proto.receive_stream_data = t.wrap(  # type: ignore[method-assign]
            "stream: decrypt, decode, dispatch", proto.receive_stream_data
        )
        handlers = dict(proto._handlers)
        handlers[CompactBlock] = t.wrap("compact: header, bookkeeping", handlers[CompactBlock])
        proto._handlers = handlers  # type: ignore[misc]
        proto._mempool_short_ids = t.wrap(  # type: ignore[method-assign]
            "compact: mempool short ids", proto._mempool_short_ids
        )
        if shortids is not None:  # since the index is built on the first lookup
            shortids.short_ids_of = t.wrap("compact: mempool short ids", shortids.short_ids_of)
        proto._finish_compact = t.wrap(  # type: ignore[method-assign]
            "compact: decode prefilled, merkle root", proto._finish_compact
        )
        proto._process_block = t.wrap("sync: process block", proto._process_block)  # type: ignore[method-assign]
        node.accept_header = t.wrap("chain: header checks", node.accept_header)  # type: ignore[method-assign]
        node.submit_block = t.wrap("node: metrics, rest", node.submit_block)  # type: ignore[method-assign]
        chain.accept_block = t.wrap(  # type: ignore[method-assign]
            "chain: block checks, store", chain.accept_block
        )
        chain._connect_block = t.wrap("chain: connect (UTXO)", chain._connect_block)  # type: ignore[method-assign]
        chain._summarise = t.wrap("chain: summarise", chain._summarise)  # type: ignore[method-assign]
        proto.announce_blocks = t.wrap("relay: announce", proto.announce_blocks)  # type: ignore[method-assign]
        service = node.p2p
        service.flush = t.wrap("relay: flush to transport", service.flush)  # type: ignore[method-assign,union-attr]
        node._commit = t.wrap("store: commit (SQLite)", node._commit)  # type: ignore[method-assign]
        node._wallet_note_blocks = t.wrap("wallet: scan", node._wallet_note_blocks)  # type: ignore[method-assign]
        node.mempool.update_for_chain = t.wrap(  # type: ignore[method-assign]
            "mempool: update", node.mempool.update_for_chain
        )
        node._publish_tx_statuses = t.wrap("events: tx statuses", node._publish_tx_statuses)  # type: ignore[method-assign]
        node.events.publish = t.wrap("events: publish", node.events.publish)  # type: ignore[method-assign]
        daemon_module.log = TimedLog(daemon_module.log, t)  # type: ignore[assignment]

    # ------------------------------------------------------------------ one hop

    def sibling(self, txs: list[Transaction], fees: int) -> Block:
        """A new block on b's tip with `txs`, different from every earlier one."""
        chain = self.node.chain
        block = solve_block(
            assemble_block(chain, txs, fees, self._pkh, int(self.net.now), next(self._extra))
        )
        assert block is not None
        return block

    def push(self, block: Block, profiler: cProfile.Profile | None) -> None:
        """a pushes `block` as a compact block; b takes it, armed; then b drops it again."""
        self._settle(lambda: not self.net._queue, "quiet network")
        a = self.a
        a.p2p.announce_block(block, self.net.now)
        frames = []
        for action in a.p2p.take_actions():
            if isinstance(action, SendStream):
                end = self.net._stream_peer.get((a.addr, action.stream_id))
                if end is not None and end[0] == self.b.addr:
                    frames.append((end[1], action.data))
                    continue
            raise AssertionError(f"unexpected action {action}")
        assert len(frames) == 1, frames
        stream_id, data = frames[0]
        if profiler is not None:
            profiler.enable()
        with self.timer.armed():
            self.b.p2p.receive_stream_data(stream_id, data, self.net.now)
        if profiler is not None:
            profiler.disable()
        assert self.node.chain.tip.hash == block.hash, "the block did not connect"
        self.net.flush(self.b)

    def undo(self, block: Block) -> None:
        self.node.invalidate_block(block.hash)
        assert self.node.chain.tip.hash == block.header.prev_hash

    def close(self) -> None:
        self.node._close_state()


def run_case(
    hop: Hop, name: str, txs: list[Transaction], fees: int, reps: int, keep_last: bool,
    profiler: cProfile.Profile | None,
) -> list[dict[str, int]]:
    hop.timer.samples = []
    for rep in range(reps):
        block = hop.sibling(txs, fees)
        hop.push(block, profiler)
        if not (keep_last and rep == reps - 1):
            hop.undo(block)
    return hop.timer.samples


def report(name: str, samples: list[dict[str, int]]) -> None:
    whole = ("total", "relayed", "cpu total", "cpu relayed")
    stages = sorted({k for s in samples for k in s} - set(whole))
    p50 = {k: statistics.median(s.get(k, 0) for s in samples) / 1000 for k in stages}
    total, relayed, cpu_total, cpu_relayed = (
        statistics.median(s[k] for s in samples) / 1000 for k in whole
    )
    print(f"\n{name}: {len(samples)} hops, p50 total {total:,.0f} µs (CPU {cpu_total:,.0f}), "
          f"relayed after {relayed:,.0f} µs (CPU {cpu_relayed:,.0f})")
    print(f"  {'stage':42} {'p50 µs':>9} {'share':>6}")
    for stage in sorted(stages, key=lambda k: (k.startswith("("), -p50[k])):
        print(f"  {stage:42} {p50[stage]:9,.1f} {p50[stage] / total:6.1%}")
    own = [k for k in stages if not k.startswith("(")]
    rest = statistics.median(s["total"] - sum(s.get(k, 0) for k in own) for s in samples) / 1000
    print(f"  {'(unattributed: the harness)':42} {rest:9,.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=200, help="hops per 1-tx case")
    parser.add_argument("--big-reps", type=int, default=40, help="hops of the big block")
    parser.add_argument("--profile", choices=("small", "small-busy", "big"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="bench_hop") as tmp:
        logfile = open(Path(tmp) / "node.log", "w")  # noqa: SIM115 (closed below)
        stderr, sys.stderr = sys.stderr, logfile
        try:
            configure_logging("json", "info")
        finally:
            sys.stderr = stderr
        datadir = Path(tmp) / "b"
        datadir.mkdir()
        hop = Hop(datadir, args.txs, args.seed)
        profilers = {c: cProfile.Profile() for c in ("small", "small-busy", "big")}
        try:
            # Not reported: the first hops of a process pay for cold caches and lazy imports.
            run_case(hop, "warm", [], 0, args.reps, False, None)
            busy = run_case(hop, "small-busy", [], 0, args.reps, False,
                            profilers["small-busy"] if args.profile == "small-busy" else None)
            big = run_case(hop, "big", hop.txs, hop.fees, args.big_reps, True,
                           profilers["big"] if args.profile == "big" else None)
            assert len(hop.node.mempool) == 0
            small = run_case(hop, "small", [], 0, args.reps, False,
                             profilers["small"] if args.profile == "small" else None)
        finally:
            hop.close()
            logfile.close()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"bench_hop: {started}, load average {load}, seed {args.seed}")
    report("1-tx block, empty mempool", small)
    report(f"1-tx block, {args.txs} txs in the mempool", busy)
    report(f"{args.txs + 1}-tx block, every tx in the mempool and signature cache", big)
    if args.profile:
        out = io.StringIO()
        pstats.Stats(profilers[args.profile], stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
