"""powlab against Debian's `litecoind` (regtest), side by side in the same run.

Usage: python benchmarks/bench_litecoind.py [--quick] [--nodes 8] [--rounds 9]
                                            [--sync-blocks 5000] [--only propagation|sync]

Install the reference with `apt-get install -y litecoind`; without it the script says so, runs
our half only and exits 0.

Measures, for both implementations, on loopback addresses 127.0.0.2, 127.0.0.3, ...
(POWLAB_BENCH_SUBNET=127.B.C moves them):
  (a) block propagation along a LINE of N nodes (node i connects to node i-1 only) of a
      1-transaction block (coinbase only, `generatetoaddress 1` on the end node with an empty
      mempool): the time from the miner's block connection to the LAST node's, p50/p90 over
      several blocks. powlab: `block_connected` in the JSON logs; litecoind: `UpdateTip: new
      best=` in debug.log with `-logtimemicros`. A few warm-up blocks are mined first and not
      counted (litecoind switches its peers to high-bandwidth compact-block relay after the
      first blocks; powlab always pushes compact blocks).
      Goal: our p50 no worse than litecoind's.
  (b) fresh-node sync of 5,000 (coinbase-only) blocks from one peer: blocks/s over the fresh
      node's first to last block connection (each implementation's own log).
      Goal: ours >= 5x litecoind's. litecoind's chain carries one MWEB peg-in transaction at
      height 432 (regtest cannot mine past 431 without one, litecoin-project/litecoin#807);
      every other block is coinbase-only, like ours.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_p2p import (
    SUBNET,
    KeepAliveRPC,
    bench_propagation,
    bench_sync,
    ms_summary,
    parse_iso,
    print_sync,
    settle,
)

from lab.stats import percentile
from lab.waiting import wait_until

LITECOIND = "litecoind"
RPC_USER, RPC_PASSWORD = "bench", "bench"
# A regtest P2PKH address (version byte 111, shared with Bitcoin's testnet); nobody spends it.
LTC_ADDRESS = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"
UPDATE_TIP = re.compile(rb"^(\S+) UpdateTip: new best=([0-9a-f]{64}) height=(\d+)")
SYNC_GOAL = 5.0
MWEB_HEIGHT = 431  # the last regtest block before MWEB activation


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LitecoinNode:
    datadir: Path
    host: str
    connect: list[str] = field(default_factory=list)
    wallet: bool = False
    port: int = 0
    onion_port: int = 0
    rpc_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    client: KeepAliveRPC | None = None
    connected: dict[str, float] = field(default_factory=dict)
    heights: dict[int, float] = field(default_factory=dict)
    _offset: int = 0
    _partial: bytes = b""

    @property
    def p2p_addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.datadir / "regtest" / "debug.log"

    def start(self) -> LitecoinNode:
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self.onion_port = free_port(self.host)
        self.rpc_port = free_port("127.0.0.1")
        cmd = [
            LITECOIND, "-regtest", f"-datadir={self.datadir}",
            f"-bind={self.host}:{self.port}",
            # Without an explicit onion bind every node would take 127.0.0.1:<default port>.
            f"-bind={self.host}:{self.onion_port}=onion",
            "-listen=1", "-listenonion=0", "-dnsseed=0", "-discover=0", "-upnp=0",
            "-server=1", f"-rpcbind=127.0.0.1:{self.rpc_port}", f"-rpcport={self.rpc_port}",
            "-rpcallowip=127.0.0.1", f"-rpcuser={RPC_USER}", f"-rpcpassword={RPC_PASSWORD}",
            *(["-fallbackfee=0.0001"] if self.wallet else ["-disablewallet"]),
            "-logtimemicros", "-printtoconsole=0",
            *(f"-connect={c}" for c in self.connect),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        url = f"http://127.0.0.1:{self.rpc_port}/"

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"litecoind exited with {self.proc.returncode}: {err}")
            client = KeepAliveRPC(url, (RPC_USER, RPC_PASSWORD))
            try:
                client.call("getblockcount")
            except (OSError, RuntimeError, ValueError):
                client.close()
                return False
            self.client = client
            return True

        wait_until(ready, timeout, "litecoind's RPC", interval=0.1, error=RuntimeError)

    def call(self, method: str, *params: object) -> Any:
        assert self.client is not None
        return self.client.call(method, *params)

    def poll_log(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            match = UPDATE_TIP.match(line)
            if match:
                at = parse_iso(match.group(1).decode())
                self.connected[match.group(2).decode()] = at
                self.heights[int(match.group(3))] = at

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.call("stop")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.client is not None:
            self.client.close()


@contextlib.contextmanager
def litecoin_line(workdir: Path, count: int) -> Iterator[list[LitecoinNode]]:
    nodes: list[LitecoinNode] = []
    try:
        for i in range(count):
            connect = [nodes[i - 1].p2p_addr] if i else []
            nodes.append(
                LitecoinNode(workdir / f"ltc-line-{i}", f"{SUBNET}.{2 + i}", connect).start()
            )
        for i, node in enumerate(nodes):
            want = 1 if i in (0, count - 1) else 2
            wait_until(lambda n=node, w=want: n.call("getconnectioncount") >= w, 60,
                       f"litecoind {i} connections", interval=0.02, error=RuntimeError)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def ltc_wait_block(nodes: Sequence[LitecoinNode], block_hash: str, timeout: float) -> None:
    def everywhere() -> bool:
        for node in nodes:
            node.poll_log()
        return all(block_hash in n.connected for n in nodes)

    wait_until(everywhere, timeout, f"block {block_hash[:16]} everywhere", interval=0.02,
               error=RuntimeError)


def ltc_propagation(workdir: Path, count: int, rounds: int, warmup: int = 3) -> list[float]:
    with litecoin_line(workdir, count) as nodes:
        miner = nodes[0]
        for _ in range(warmup):
            block_hash = miner.call("generatetoaddress", 1, LTC_ADDRESS)[0]
            ltc_wait_block(nodes, block_hash, 60)
        samples = []
        for _ in range(rounds):
            settle()
            block_hash = miner.call("generatetoaddress", 1, LTC_ADDRESS)[0]
            ltc_wait_block(nodes, block_hash, 60)
            start = miner.connected[block_hash]
            samples.append(max(n.connected[block_hash] for n in nodes) - start)
        return samples


def ltc_sync(workdir: Path, nblocks: int) -> tuple[float, float, float]:
    """(generate seconds, first->last block connection seconds, launch->last seconds)."""
    source = LitecoinNode(workdir / "ltc-sync-source", f"{SUBNET}.2", wallet=True).start()
    fresh: LitecoinNode | None = None
    try:
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
        fresh = LitecoinNode(workdir / "ltc-sync-fresh", f"{SUBNET}.3", [source.p2p_addr])
        fresh.start()
        deadline = time.monotonic() + 900
        while nblocks not in fresh.heights:
            if time.monotonic() > deadline:
                raise RuntimeError("litecoind did not sync in 900 s")
            time.sleep(0.05)
            fresh.poll_log()
        return generate_s, fresh.heights[nblocks] - fresh.heights[1], (
            fresh.heights[nblocks] - launched
        )
    finally:
        source.stop()
        if fresh is not None:
            fresh.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1000-block sync")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sync-blocks", type=int, default=5000)
    parser.add_argument("--only", choices=("propagation", "sync"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.sync_blocks = 3, 1000

    have_ltc = shutil.which(LITECOIND) is not None
    version = ""
    if have_ltc:
        out = subprocess.run([LITECOIND, "-version"], capture_output=True, text=True).stdout
        version = out.splitlines()[0] if out else "?"
    workdir = Path(tempfile.mkdtemp(prefix="bench_ltc_"))
    print(f"bench_litecoind: {args.nodes} nodes in a line on {SUBNET}.2.., {os.cpu_count()} cores,"
          f" {time.strftime('%Y-%m-%d %H:%M')}, work {workdir}")
    if have_ltc:
        print(f"reference: {version}")
    else:
        print("litecoind is not installed (apt-get install -y litecoind): powlab figures only")
    try:
        if args.only in (None, "propagation"):
            print(f"\n1-transaction block, line of {args.nodes}, miner -> last node, "
                  f"{args.rounds} blocks:")
            ours = bench_propagation(workdir, args.nodes, "line", "compact", args.rounds, 0,
                                     small_only=True).small
            print(f"  powlab    {ms_summary(ours)}")
            if have_ltc:
                theirs = ltc_propagation(workdir, args.nodes, args.rounds)
                print(f"  litecoind {ms_summary(theirs)}")
                ratio = percentile(ours, 0.5) / percentile(theirs, 0.5)
                verdict = "OK" if ratio <= 1.0 else "MISSED"
                print(f"  powlab p50 / litecoind p50 = {ratio:.2f} (goal <= 1) {verdict}")
        if args.only in (None, "sync"):
            print(f"\nfresh-node sync of {args.sync_blocks} blocks from one peer:")
            sync = bench_sync(workdir, args.sync_blocks)
            print_sync(sync)
            if have_ltc:
                gen, window, wall = ltc_sync(workdir, args.sync_blocks)
                ltc_rate = (args.sync_blocks - 1) / window
                print(f"  litecoind generated {args.sync_blocks} blocks in {gen:.1f} s")
                print(f"  litecoind sync  : {ltc_rate:8.1f} blocks/s (first->last UpdateTip "
                      f"{window:.2f} s; from launch {wall:.2f} s)")
                ratio = sync.sync_rate / ltc_rate
                verdict = "OK" if ratio >= SYNC_GOAL else "MISSED"
                print(f"  powlab / litecoind sync rate = {ratio:.2f} (goal >= {SYNC_GOAL}) "
                      f"{verdict}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
