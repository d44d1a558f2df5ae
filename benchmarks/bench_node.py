"""Benchmark the running daemon: `python benchmarks/bench_node.py` (about a minute).

Measures, all in this run on this machine:
  (a) JSON-RPC `getblockchaininfo` round trip p50/p99 against a real `powlab node` subprocess,
      with mining off (the baseline) and while it mines unthrottled on all cores
      (`setmining true`); goal p99 < 50 ms while mining. Two mining loads are measured:
      regtest's minimum difficulty (a block every few hashes, so the daemon is busy connecting
      blocks as fast as it can) and a `[params] pow_limit_bits` override that makes blocks rare
      (so the load is the hashing itself);
  (b) job-switch latency of `node.miner.pool.MinerPool`, driven in-process: the time from a new
      job (a new tip) being submitted until every worker is hashing it, p50/p99;
  (c) the hashing figures of `benchmarks/bench_hashing.py` (shortened; run that script for
      the full measurement).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
# Allow running from a checkout without installing the package (and reach tests/, benchmarks/).
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import structlog  # noqa: E402

from lab.stats import percentile  # noqa: E402
from lab.testnet.processes import NodeProcess  # noqa: E402
from lab.waiting import wait_until  # noqa: E402
from node.miner.pool import MinerPool, default_processes  # noqa: E402

HEADER76 = bytes(range(76))
IMPOSSIBLE = 0  # a target no hash meets, so workers hash until the next job
# About 2**32 hashes per block: far more than a laptop does in a benchmark, so mining under
# this override is pure hashing load with (almost) no blocks to connect.
RARE_BLOCKS_BITS = 0x1D00FFFF
RPC_GOAL_P99_MS = 50.0


def summary_ms(seconds: list[float]) -> str:
    ms = [s * 1e3 for s in seconds]
    return (
        f"n={len(ms):<4} p50 {percentile(ms, 0.5):7.2f} ms  p99 {percentile(ms, 0.99):7.2f} ms  "
        f"max {max(ms):7.2f} ms  mean {statistics.fmean(ms):6.2f} ms"
    )


class KeepAliveRPC:
    """A minimal JSON-RPC client on one persistent HTTP connection.

    `rpc_call_sync` opens a new event loop and TCP connection per call, which would dominate
    what is being measured here: the node's own response time.
    """

    def __init__(self, url: str, auth: tuple[str, str] | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.headers = {"Content-Type": "application/json"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self._id = 0

    def call(self, method: str, *params: Any) -> Any:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method,
                           "params": list(params)})
        self.conn.request("POST", self.path, body, self.headers)
        reply = json.loads(self.conn.getresponse().read())
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        self.conn.close()


def time_calls(client: KeepAliveRPC, method: str, calls: int, interval: float) -> list[float]:
    """Round trips of `calls` calls spaced `interval` apart.

    The spacing spreads the sample over seconds of mining rather than a quarter of a second
    of back-to-back calls, so block arrivals and template refreshes land in it.
    """
    for _ in range(min(20, calls)):  # warm-up: connection, caches, allocator
        client.call(method)
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.call(method)
        samples.append(time.perf_counter() - t0)
        time.sleep(interval)
    return samples


@contextmanager
def running_node(workdir: Path, name: str, config_text: str | None) -> Iterator[NodeProcess]:
    args: list[str] = []
    if config_text is not None:
        config = workdir / f"{name}.toml"
        config.write_text(config_text)
        args = ["--config", str(config)]
    node = NodeProcess(workdir / name, args=args)
    try:
        node.start()
        yield node
        node.stop()
    finally:
        node.ensure_dead()


def bench_rpc(
    workdir: Path, name: str, config_text: str | None, calls: int, interval: float
) -> dict[str, Any]:
    """RPC latency with mining off, then while mining unthrottled on every core."""
    with running_node(workdir, name, config_text) as node:
        client = KeepAliveRPC(node.url, node.auth)
        try:
            idle = time_calls(client, "getblockchaininfo", calls, interval)
            client.call("setmining", True)
            # Let the workers spawn and reach full speed before measuring.
            wait_until(lambda: client.call("getmininginfo")["hashrate"] > 0, 30, "hashing",
                       first=0.02)
            time.sleep(1.0)
            height0 = client.call("getblockcount")
            t0 = time.monotonic()
            mining = time_calls(client, "getblockchaininfo", calls, interval)
            elapsed = time.monotonic() - t0
            info = client.call("getmininginfo")
            blocks = client.call("getblockcount") - height0
            client.call("setmining", False)
        finally:
            client.close()
    return {
        "idle": idle,
        "mining": mining,
        "hashrate": info["hashrate"],
        "processes": info.get("processes"),
        "blocks": blocks,
        "blocks_per_s": blocks / max(elapsed, 1e-9),
    }


def switch_latencies(processes: int, jobs: int, hashrate: float | None) -> list[float]:
    """Seconds from submit_job until every worker hashes the new job, workers busy before."""
    with MinerPool(processes=processes, hashrate=hashrate) as pool:
        for job_id in range(jobs):
            pool.submit_job(job_id, HEADER76, IMPOSSIBLE)
            deadline = time.monotonic() + 30
            while len(pool.job_switch_latencies()) < job_id + 1:
                if time.monotonic() > deadline:
                    raise TimeoutError("miner workers did not start a job within 30 s")
                time.sleep(0.0005)
            # A new tip finds workers in the middle of hashing (or of a pacing sleep).
            time.sleep(0.02)
        return pool.job_switch_latencies()


def hashing_figures(seconds: float) -> list[str] | None:
    """bench_hashing.py's measurements, shortened; None if that module cannot be imported."""
    try:
        import bench_hashing

        from node.miner.hashing import baseline_midstate_loop
    except ImportError:
        return None
    count = 500_000
    baseline = bench_hashing.best_rate(lambda n: baseline_midstate_loop(HEADER76, n), count, 3)
    one = bench_hashing.pool_rate(1, seconds)
    lines = [
        f"baseline midstate loop (1 core):  {baseline:>12,.0f} H/s",
        f"1 worker process:                 {one:>12,.0f} H/s  ({one / baseline:.3f}x baseline, "
        "goal >= 0.9)",
    ]
    cores = default_processes()
    if cores >= 2:
        two = bench_hashing.pool_rate(2, seconds)
        lines.append(f"2 worker processes:               {two:>12,.0f} H/s  ({two / one:.3f}x one "
                     "worker, goal >= 1.7)")
    return lines


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="RPC calls per measurement")
    parser.add_argument("--interval", type=float, default=0.005,
                        help="seconds between RPC calls")
    parser.add_argument("--jobs", type=int, default=300, help="job switches to time")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="hash-rate measurement per pool size")
    parser.add_argument("--skip-hashing", action="store_true", help="skip part (c)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    cores = default_processes()
    print(f"cpus: {os.cpu_count()} (usable {cores})  python: {sys.version.split()[0]}")
    ok = True

    section(f"(a) RPC getblockchaininfo round trip: {args.calls} calls "
            f"{args.interval * 1e3:g} ms apart on one keep-alive connection")
    scenarios: list[tuple[str, str, str | None]] = [
        ("regtest", "regtest (block every ~2 hashes)", None),
        ("rare", f"pow_limit_bits {RARE_BLOCKS_BITS:#x} (hashing only)",
         f"[params]\npow_limit_bits = {RARE_BLOCKS_BITS:#x}\n"),
    ]
    with tempfile.TemporaryDirectory(prefix="powlab-bench-") as tmp:
        for name, label, config_text in scenarios:
            r = bench_rpc(Path(tmp), name, config_text, args.calls, args.interval)
            p99_ms = percentile(r["mining"], 0.99) * 1e3
            verdict = "OK" if p99_ms < RPC_GOAL_P99_MS else "MISSED"
            ok = ok and p99_ms < RPC_GOAL_P99_MS
            print(f"{label}")
            print(f"  mining off:           {summary_ms(r['idle'])}")
            print(f"  mining, all cores:    {summary_ms(r['mining'])}   "
                  f"goal p99 < {RPC_GOAL_P99_MS:.0f} ms: {verdict}")
            print(f"  while mining: {r['processes']} worker processes, "
                  f"{r['hashrate']:,.0f} H/s measured, {r['blocks']} blocks connected "
                  f"during the calls ({r['blocks_per_s']:.1f}/s)")

    section(f"(b) miner job switch (new tip -> every worker hashing it), {args.jobs} switches")
    for label, rate in (("unthrottled", None), ("capped at 0.2 H/s (scripts/run)", 0.2)):
        lat = switch_latencies(cores, args.jobs, rate)
        print(f"{cores} workers, {label:<32} {summary_ms(lat)}")

    section("(c) hashing (shortened benchmarks/bench_hashing.py)")
    if args.skip_hashing:
        print("skipped; run: .venv/bin/python benchmarks/bench_hashing.py")
    else:
        lines = hashing_figures(args.seconds)
        if lines is None:
            print("benchmarks/bench_hashing.py not importable; run it directly:")
            print("  .venv/bin/python benchmarks/bench_hashing.py")
        else:
            print("\n".join(lines))
            print("(full figures and switch latencies: .venv/bin/python "
                  "benchmarks/bench_hashing.py)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
