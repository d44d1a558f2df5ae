"""powlab against Debian's `litecoind` (regtest), side by side in the same run.

Usage: python benchmarks/bench_litecoind.py [--compare] [--quick] [--nodes 8] [--rounds 9]
           [--large-rounds 7] [--txs 1000] [--flow-seconds 30] [--flow-txs N]
           [--sync-blocks 5000] [--only blocks,flow,sync,mesh] [--ltc-default-relay]

Install the reference with `apt-get install -y litecoind`; without it the script says so, runs
our half only and exits 0 (1 with --compare: no goal can be judged).

Every node binds an address of one free loopback range 127.A.B (chosen per run, or
POWLAB_BENCH_SUBNET=127.B.C). Both implementations run the same LINE of N nodes (node i
connects to node i-1 only), the miner at one end, and are timed the same way: each node's own
log line for the tip change (powlab: `block_connected` in its JSON log; litecoind: `UpdateTip:
new best=` in debug.log with `-logtimemicros`), miner -> LAST node, p50/p90 over the blocks.
  (1) a 1-transaction block (coinbase only, empty mempools), after a few uncounted warm-up
      blocks (litecoind picks high-bandwidth compact-block peers after the first blocks);
  (2) a 1000-transaction block whose transactions are all in every mempool first: a key set
      is funded by one fan-out per block (powlab: one key, a 1000-output transaction signed
      in this process; litecoind: 1000 wallet keys, `getnewaddress` + `dumpprivkey`, paid by one
      `sendmany`), each output is spent by a raw transaction signed by key (powlab: in this
      process; litecoind: `createrawtransaction` + `signrawtransactionwithkey`), all 1000 are
      submitted to the miner with `sendrawtransaction` in JSON-RPC batches, and the block is
      mined only when every node's `getmempoolinfo.size` has them all;
  (3) sustained transaction throughput: pre-signed raw transactions of the same shape go to the
      first node in JSON-RPC batches of 100 `sendrawtransaction`s, back to back, for 30 s; the
      figure is how many reached the last node's mempool within the window ÷ the window
      (benchmarks/txflow.py);
  (4) fresh-node sync of 5,000 coinbase-only blocks from one peer: blocks/s over the fresh
      node's first to last block connection. litecoind's chain carries one MWEB peg-in at
      height 432 (regtest cannot mine past 431 without one, litecoin-project/litecoin#807).
--compare also runs powlab's 1000-tx block on an 8-node MESH with compact and with full
relay (bench_p2p.py), prints one table of ratios against the goals and exits 1 when one is
missed (or cannot be measured).

litecoind runs with `-whitelist=noban,relay@127.0.0.0/8` unless --ltc-default-relay: without
it litecoind trickles transaction announcements to inbound peers (one inv on average every 5 s,
at most 35 txids) and its mempools take minutes to fill; the whitelist measures its relay
capacity rather than its privacy delay. Nothing else differs from its defaults.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_p2p
from bench_p2p import (
    ADDRESS,
    BURN,
    BenchNode,
    bench_propagation,
    bench_sync,
    fan_out,
    fetch_block,
    ms_summary,
    network,
    print_sync,
    propagation_of,
    settle,
    spends,
    wait_block_everywhere,
    wait_height,
)
from litecoind import (
    LITECOIND,
    LTC_ADDRESS,
    MWEB_HEIGHT,
    OUTPUT_VALUE,
    RPC_PASSWORD,
    RPC_USER,
    LitecoinNode,
    LtcWallet,
    litecoin_line,
    ltc_wait_block,
    ltc_wait_height,
)
from txflow import DRAIN_TIMEOUT_S, BatchRPC, FlowResult, flow_summary, measure_flow

from lab.stats import percentile
from lab.testnet.manifest import DEFAULT_P2P_PORT, DEFAULT_RPC_PORT, check_subnet
from lab.waiting import wait_until

# Goals, powlab ÷ litecoind (issue 17); the mesh goal is bench_p2p's compact ÷ full.
ONE_TX_GOAL = 0.5  # at most
LARGE_GOAL = 0.3  # at most
FLOW_GOAL = 2.0  # at least
SYNC_GOAL = 5.0  # at least
MESH_GOAL = bench_p2p.LATENCY_GOAL_RATIO  # at most
WARMUP_BLOCKS = 3
FLOW_WIDTH = 1000  # outputs per fan-out funding the throughput run
# Pre-signed transactions per second of throughput window: above what either daemon accepted
# at its first node on this VM (powlab 3,200-4,900/s, litecoind 1,700-2,700/s in batches).
FLOW_TXS_PER_S = 4000
FILL_TIMEOUT_S = 300.0  # for every mempool to hold a large block's transactions
POWLAB_FANOUTS_PER_BLOCK = 30  # 26 kB each: well inside powlab's 1 MB block
PARTS = ("blocks", "flow", "sync", "mesh")


# ----------------------------------------------------------------- addresses


def pick_subnet(hosts: int) -> str:
    """POWLAB_BENCH_SUBNET, or a random 127.A.B range where nothing holds a testnet's ports
    on the first `hosts` addresses (as tests/subnets.py picks the test suite's)."""
    forced = os.environ.get("POWLAB_BENCH_SUBNET")
    if forced:
        return check_subnet(forced)
    rng = random.Random()
    for _ in range(200):
        candidate = f"127.{rng.randint(100, 254)}.{rng.randint(1, 254)}"
        if all(_bindable(f"{candidate}.{last}") for last in range(2, hosts + 2)):
            return candidate
    raise RuntimeError("no free 127.A.B range found; set POWLAB_BENCH_SUBNET")


def _bindable(host: str) -> bool:
    for port, kind in ((DEFAULT_RPC_PORT, socket.SOCK_STREAM),
                       (DEFAULT_P2P_PORT, socket.SOCK_STREAM),
                       (DEFAULT_P2P_PORT, socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


# ----------------------------------------------------------------- results


@dataclass
class LineResult:
    small: list[float] = field(default_factory=list)  # seconds, miner -> last node
    large: list[float] = field(default_factory=list)
    flow: FlowResult | None = None


@dataclass
class Options:
    nodes: int
    rounds: int
    large_rounds: int
    txs: int
    flow_seconds: float
    flow_txs: int
    sync_blocks: int
    flow_drain: float = DRAIN_TIMEOUT_S


def wait_mempools_full(sizes: Callable[[], list[int]], ntxs: int, what: str) -> None:
    """Every mempool holds `ntxs` transactions, or the benchmark stops: a block mined before
    would not measure what it says."""
    def full() -> bool:
        return min(sizes()) >= ntxs

    try:
        wait_until(full, FILL_TIMEOUT_S, f"{what}: {ntxs} transactions in every mempool",
                   interval=0.1, first=0.02, error=RuntimeError)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; mempool sizes {sizes()}") from None


def fanouts_for(opts: Options) -> int:
    return math.ceil(opts.flow_txs / FLOW_WIDTH) if opts.flow_seconds > 0 else 0


# ----------------------------------------------------------------- powlab


def powlab_block(nodes: Sequence[BenchNode], miner: BenchNode) -> float:
    block_hash = miner.call("generatetoaddress", 1, BURN)[0]
    wait_block_everywhere(nodes, block_hash, 60)
    return propagation_of(nodes, miner, block_hash)


def powlab_fund(nodes: Sequence[BenchNode], widths: Sequence[int]) -> list[list[str]]:
    """One coinbase per fan-out of `widths[i]` outputs to our key, matured and mined; the
    signed spends of each fan-out's outputs, as hex."""
    miner = nodes[0]
    if not widths:
        return []
    funding = miner.call("generatetoaddress", len(widths), ADDRESS)
    miner.call("generatetoaddress", bench_p2p.PARAMS.coinbase_maturity, BURN)
    parents = [fan_out(fetch_block(miner, h).txs[0], w)
               for h, w in zip(funding, widths, strict=True)]
    for i, parent in enumerate(parents):
        miner.call("sendrawtransaction", parent.encode().hex())
        if (i + 1) % POWLAB_FANOUTS_PER_BLOCK == 0:
            miner.call("generatetoaddress", 1, BURN)
    miner.call("generatetoaddress", 1, BURN)
    if miner.call("getmempoolinfo")["size"]:
        raise RuntimeError("powlab: fan-outs left unmined")
    wait_height(nodes, miner.call("getblockcount"), 120)
    return [[tx.encode().hex() for tx in spends(p, w)]
            for p, w in zip(parents, widths, strict=True)]


def powlab_line(workdir: Path, opts: Options, parts: set[str]) -> LineResult:
    result = LineResult()
    with network(workdir, opts.nodes, "line") as nodes:
        miner, last = nodes[0], nodes[-1]
        large = opts.large_rounds if "blocks" in parts else 0
        widths = [opts.txs] * large + [FLOW_WIDTH] * (fanouts_for(opts) if "flow" in parts
                                                       else 0)
        t0 = time.perf_counter()
        spend_sets = powlab_fund(nodes, widths)
        print(f"  (powlab: {sum(widths):,} transactions funded and signed in "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        for _ in range(WARMUP_BLOCKS):
            powlab_block(nodes, miner)
        if "blocks" in parts:
            for _ in range(opts.rounds):
                settle()
                result.small.append(powlab_block(nodes, miner))
            assert miner.client is not None
            for hexes in spend_sets[:large]:
                miner.client.batch([("sendrawtransaction", [h]) for h in hexes], 100)
                wait_mempools_full(lambda: [n.call("getmempoolinfo")["size"] for n in nodes],
                                   len(hexes), "powlab")
                settle()
                result.large.append(powlab_block(nodes, miner))
        if "flow" in parts and opts.flow_seconds > 0:
            pool = [h for hexes in spend_sets[large:] for h in hexes]
            first = BatchRPC(miner.url, miner.auth)
            try:
                settle()
                assert last.client is not None
                result.flow = measure_flow(first, last.client, pool, opts.flow_seconds,
                                           drain_timeout=opts.flow_drain)
            finally:
                first.close()
    return result


# ----------------------------------------------------------------- litecoind


def ltc_block(nodes: Sequence[LitecoinNode], miner: LitecoinNode) -> float:
    block_hash = miner.call("generatetoaddress", 1, LTC_ADDRESS)[0]
    ltc_wait_block(nodes, block_hash, 60)
    return max(n.connected[block_hash] for n in nodes) - miner.connected[block_hash]


def ltc_line(
    workdir: Path, subnet: str, opts: Options, parts: set[str], noban: bool
) -> LineResult:
    result = LineResult()
    large = opts.large_rounds if "blocks" in parts else 0
    flow_fanouts = fanouts_for(opts) if "flow" in parts else 0
    with litecoin_line(workdir, opts.nodes, subnet, wallet=True, noban=noban) as nodes:
        miner, last = nodes[0], nodes[-1]
        miner.call("createwallet", "bench")
        wallet = LtcWallet(miner)
        batches = []
        t0 = time.perf_counter()
        if large or flow_fanouts:
            wallet.make_keys(max(opts.txs if large else 0, FLOW_WIDTH if flow_fanouts else 0))
            value = (large * opts.txs + flow_fanouts * FLOW_WIDTH) * OUTPUT_VALUE
            wallet.mine_coinbases(math.ceil(value / 45) + 1)  # 50 LTC each, fees aside
            batches = wallet.fan_outs(large, opts.txs) + wallet.fan_outs(flow_fanouts,
                                                                         FLOW_WIDTH)
            print(f"  (litecoind: {len(batches)} fan-outs funded in "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
        for _ in range(WARMUP_BLOCKS):
            ltc_block(nodes, miner)
        ltc_wait_height(nodes, miner.call("getblockcount"), 120)
        if "blocks" in parts:
            for _ in range(opts.rounds):
                settle()
                result.small.append(ltc_block(nodes, miner))
            assert miner.client is not None
            for coins in batches[:large]:
                hexes = wallet.sign_spends(coins)
                miner.client.batch([("sendrawtransaction", [h]) for h in hexes], 100)
                wait_mempools_full(lambda: [n.call("getmempoolinfo")["size"] for n in nodes],
                                   len(hexes), "litecoind")
                settle()
                result.large.append(ltc_block(nodes, miner))
        if flow_fanouts and opts.flow_seconds > 0:
            t0 = time.perf_counter()
            pool = wallet.sign_spends([c for coins in batches[large:] for c in coins])
            print(f"  (litecoind: {len(pool):,} throughput transactions signed in "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
            first = BatchRPC(miner.url, (RPC_USER, RPC_PASSWORD))
            try:
                settle()
                assert last.client is not None
                result.flow = measure_flow(first, last.client, pool, opts.flow_seconds,
                                           drain_timeout=opts.flow_drain)
            finally:
                first.close()
    return result


def ltc_sync(workdir: Path, subnet: str, nblocks: int) -> tuple[float, float, float]:
    """(generate seconds, first->last block connection seconds, launch->last seconds)."""
    source = LitecoinNode(workdir / "ltc-sync-source", f"{subnet}.2", wallet=True)
    fresh: LitecoinNode | None = None
    try:
        source.start()
        t0 = time.perf_counter()
        made = 0
        if nblocks > MWEB_HEIGHT:
            # Litecoin 0.21.2's regtest cannot mine past height 431 unless the first MWEB block
            # carries a peg-in (litecoin-project/litecoin#807): make one from a wallet.
            source.call("createwallet", "bench")
            source.call("generatetoaddress", MWEB_HEIGHT, source.call("getnewaddress"))
            source.call("sendtoaddress", source.call("getnewaddress", "", "mweb"), 1)
            made = MWEB_HEIGHT
        while made < nblocks:
            step = min(1000, nblocks - made)
            source.call("generatetoaddress", step, LTC_ADDRESS)
            made += step
        generate_s = time.perf_counter() - t0
        launched = time.time()
        fresh = LitecoinNode(workdir / "ltc-sync-fresh", f"{subnet}.3", [source.p2p_addr])
        fresh.start()

        def synced() -> bool:
            assert fresh is not None
            fresh.poll_log()
            return nblocks in fresh.heights

        wait_until(synced, 900, f"litecoind sync of {nblocks} blocks", interval=0.05,
                   error=RuntimeError)
        return generate_s, fresh.heights[nblocks] - fresh.heights[1], (
            fresh.heights[nblocks] - launched
        )
    finally:
        source.stop()
        if fresh is not None:
            fresh.stop()


# ----------------------------------------------------------------- the table


@dataclass
class Row:
    name: str
    ours: str
    theirs: str
    ratio: float | None  # None: not measured
    goal: float
    at_most: bool  # the goal is an upper bound (latency) rather than a lower one

    @property
    def met(self) -> bool:
        if self.ratio is None:
            return False
        return self.ratio <= self.goal if self.at_most else self.ratio >= self.goal

    @property
    def verdict(self) -> str:
        if self.ratio is None:
            return "not measured"
        return "met" if self.met else "MISSED"


def latency_row(name: str, ours: Sequence[float], theirs: Sequence[float], goal: float,
                baseline: str = "litecoind") -> Row:
    def p50(xs: Sequence[float]) -> str:
        return f"{percentile(xs, 0.5) * 1e3:.2f} ms" if xs else "-"

    ratio = percentile(ours, 0.5) / percentile(theirs, 0.5) if ours and theirs else None
    return Row(name, p50(ours), f"{p50(theirs)} ({baseline})" if theirs else "-", ratio,
               goal, True)


def rate_row(name: str, ours: float | None, theirs: float | None, goal: float,
             unit: str) -> Row:
    ratio = ours / theirs if ours is not None and theirs else None
    return Row(name, f"{ours:,.1f} {unit}" if ours is not None else "-",
               f"{theirs:,.1f} {unit}" if theirs is not None else "-", ratio, goal, False)


def print_table(rows: Sequence[Row]) -> None:
    print(f"\n{'measurement':<44} {'powlab':>14} {'reference':>26} {'ratio':>7}  goal")
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        sign = "<=" if r.at_most else ">="
        print(f"{r.name:<44} {r.ours:>14} {r.theirs:>26} {ratio:>7}  {sign} {r.goal:g}"
              f"  {r.verdict}")


# ----------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", action="store_true",
                        help="run every part (with the mesh), print the ratio table, exit 1 "
                             "when a goal is missed")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds, 200-tx blocks, a 5 s throughput window, 1000-block sync")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9, help="1-tx blocks measured")
    parser.add_argument("--large-rounds", type=int, default=7, help="large blocks measured")
    parser.add_argument("--txs", type=int, default=1000, help="transactions in a large block")
    parser.add_argument("--flow-seconds", type=float, default=30.0,
                        help="throughput window (0: skip the throughput run)")
    parser.add_argument("--flow-txs", type=int, default=0,
                        help="pre-signed transactions for the throughput run (default: "
                             f"{FLOW_TXS_PER_S:,} per second of window)")
    parser.add_argument("--flow-drain", type=float, default=DRAIN_TIMEOUT_S,
                        help="after the window, follow the last node's mempool at most this "
                             "long (it also stops after 10 s without a new transaction)")
    parser.add_argument("--sync-blocks", type=int, default=5000)
    parser.add_argument("--only", default="",
                        help=f"comma-separated parts of {','.join(PARTS)} (default: all but "
                             "mesh; --compare: all)")
    parser.add_argument("--ltc-default-relay", action="store_true",
                        help="no -whitelist for litecoind: its default transaction trickle")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.large_rounds, args.txs = 3, 3, 200
        args.flow_seconds, args.sync_blocks = 5.0, 1000
    if not args.flow_txs:
        args.flow_txs = int(FLOW_TXS_PER_S * args.flow_seconds)
    parts = set(filter(None, args.only.split(","))) or (
        set(PARTS) if args.compare else set(PARTS) - {"mesh"})
    if parts - set(PARTS):
        parser.error(f"--only: unknown parts {sorted(parts - set(PARTS))}")
    if not 2 <= args.nodes <= 200:
        parser.error("--nodes: 2 to 200")
    args.parts = parts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: every node is stopped
    opts = Options(args.nodes, args.rounds, args.large_rounds, args.txs, args.flow_seconds,
                   args.flow_txs, args.sync_blocks, args.flow_drain)
    parts: set[str] = args.parts
    subnet = pick_subnet(args.nodes)
    bench_p2p.SUBNET = subnet  # bench_p2p's networks bind the same range
    have_ltc = shutil.which(LITECOIND) is not None
    workdir = Path(tempfile.mkdtemp(prefix="bench_ltc_"))
    load = os.getloadavg()
    print(f"bench_litecoind: {args.nodes} nodes in a line on {subnet}.2.., {os.cpu_count()} "
          f"cores, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, parts {','.join(sorted(parts))}, "
          f"work {workdir}")
    if have_ltc:
        out = subprocess.run([LITECOIND, "-version"], capture_output=True, text=True).stdout
        print(f"reference: {out.splitlines()[0] if out else '?'}"
              f"{' (default relay)' if args.ltc_default_relay else ' (-whitelist=noban,relay)'}")
    else:
        print("litecoind is not installed (apt-get install -y litecoind): powlab figures only")
    rows: list[Row] = []
    try:
        rows = run_parts(workdir, subnet, opts, parts, have_ltc, not args.ltc_default_relay)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    load = os.getloadavg()
    print(f"finished {time.strftime('%H:%M:%S UTC', time.gmtime())}, load {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}")
    if args.compare:
        return 0 if rows and all(r.met for r in rows) else 1
    return 0


def run_parts(
    workdir: Path, subnet: str, opts: Options, parts: set[str], have_ltc: bool, noban: bool
) -> list[Row]:
    rows: list[Row] = []
    line_parts = parts & {"blocks", "flow"}
    if line_parts:
        ours = powlab_line(workdir, opts, line_parts)
        theirs = ltc_line(workdir, subnet, opts, line_parts, noban) if have_ltc else LineResult()
        if "blocks" in parts:
            print(f"\n1-tx block, line of {opts.nodes}, miner -> last node:")
            print(f"  powlab    {ms_summary(ours.small)}")
            print(f"  litecoind {ms_summary(theirs.small)}")
            print(f"{opts.txs}-tx block (all in every mempool), line of {opts.nodes}:")
            print(f"  powlab    {ms_summary(ours.large)}")
            print(f"  litecoind {ms_summary(theirs.large)}")
            rows.append(latency_row(f"1-tx block, {opts.nodes}-node line, p50", ours.small,
                                    theirs.small, ONE_TX_GOAL))
            rows.append(latency_row(f"{opts.txs}-tx block, {opts.nodes}-node line, p50",
                                    ours.large, theirs.large, LARGE_GOAL))
        if "flow" in parts:
            print(f"\nthroughput, {opts.flow_seconds:g} s of sendrawtransaction batches at the "
                  f"first node, counted at node {opts.nodes}:")
            for name, r in (("powlab", ours.flow), ("litecoind", theirs.flow)):
                if r is not None:
                    print(f"  {name:<9} {flow_summary(r)}")
            rows.append(rate_row(f"throughput at node {opts.nodes}",
                                 ours.flow.last_rate if ours.flow else None,
                                 theirs.flow.last_rate if theirs.flow else None, FLOW_GOAL,
                                 "tx/s"))
    if "sync" in parts:
        print(f"\nfresh-node sync of {opts.sync_blocks} blocks from one peer:")
        rows.append(sync_row(workdir, subnet, opts.sync_blocks, have_ltc))
    if "mesh" in parts:
        rows.append(mesh_row(workdir, opts))
    return rows


def sync_row(workdir: Path, subnet: str, nblocks: int, have_ltc: bool) -> Row:
    sync = bench_sync(workdir, nblocks)
    print_sync(sync)
    ltc_rate = None
    if have_ltc:
        gen, window, wall = ltc_sync(workdir, subnet, nblocks)
        ltc_rate = (nblocks - 1) / window
        print(f"  litecoind generated {nblocks} blocks in {gen:.1f} s")
        print(f"  litecoind sync  : {ltc_rate:8.1f} blocks/s (first->last UpdateTip "
              f"{window:.2f} s; from launch {wall:.2f} s)")
    return rate_row(f"fresh-node sync, {nblocks} blocks", sync.sync_rate, ltc_rate, SYNC_GOAL,
                    "blk/s")


def mesh_row(workdir: Path, opts: Options) -> Row:
    print(f"\n{opts.txs}-tx block on a {opts.nodes}-node mesh (powlab), compact vs full relay:")
    results = {}
    for relay in ("compact", "full"):
        r = bench_propagation(workdir, opts.nodes, "mesh", relay, opts.large_rounds, opts.txs,
                              burst_chunk=0)
        bench_p2p.print_propagation(r, opts.nodes, opts.txs)
        if any(r.missing_txs):
            raise RuntimeError(f"mesh {relay}: transactions missing from mempools before "
                               f"mining: {r.missing_txs}")
        results[relay] = r.large
    return latency_row(f"{opts.txs}-tx block, {opts.nodes}-node mesh, compact ÷ full",
                       results["compact"], results["full"], MESH_GOAL, baseline="full")


if __name__ == "__main__":
    sys.exit(main())
