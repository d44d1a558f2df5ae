"""Benchmark the proof-of-work engine: `python benchmarks/bench_hashing.py`.

Prints, all measured in this run:
  * the bare hashlib midstate loop (baseline H/s),
  * one miner worker process ÷ baseline (goal >= 0.9),
  * two workers ÷ one worker (goal >= 1.7 on 2 cores),
  * job-switch latency p50/p99 in ms (submit_job until every worker has started the job).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from lab.stats import percentile
from lab.waiting import wait_until
from node.miner.hashing import baseline_midstate_loop, scan_nonces
from node.miner.pool import MinerPool

HEADER76 = bytes(range(76))
IMPOSSIBLE = 0  # never met, so workers hash continuously


def best_rate(fn: Callable[[int], object], count: int, repeats: int) -> float:
    """Best of `repeats` runs: the least disturbed by other load on the machine."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(count)
        best = max(best, count / (time.perf_counter() - t0))
    return best


def pool_rate(processes: int, seconds: float) -> float:
    with MinerPool(processes=processes) as pool:
        pool.submit_job(1, HEADER76, IMPOSSIBLE)
        wait_until(lambda: len(pool.job_switch_latencies()) == 1, 30, "the first job",
                   interval=0.005)
        time.sleep(0.5)  # warm-up: let every worker reach full speed
        t0, c0 = time.monotonic(), pool.total_hashes()
        time.sleep(seconds)
        return (pool.total_hashes() - c0) / (time.monotonic() - t0)


def switch_latencies(processes: int, jobs: int, hashrate: float | None) -> list[float]:
    with MinerPool(processes=processes, hashrate=hashrate) as pool:
        for job_id in range(jobs):
            pool.submit_job(job_id, HEADER76, IMPOSSIBLE)
            wait_until(lambda n=job_id + 1: len(pool.job_switch_latencies()) >= n, 30,
                       f"job switch {job_id + 1}", interval=0.005)
            # Let the workers settle into hashing (or pacing sleeps) before the next switch.
            time.sleep(0.01)
        return pool.job_switch_latencies()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measurement per pool size")
    parser.add_argument("--count", type=int, default=1_500_000, help="hashes per baseline run")
    parser.add_argument("--jobs", type=int, default=200, help="job switches to time")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}")
    baseline = best_rate(lambda n: baseline_midstate_loop(HEADER76, n), args.count, 3)
    scan = best_rate(lambda n: scan_nonces(HEADER76, IMPOSSIBLE, 0, n), args.count, 3)
    print(f"baseline midstate loop (1 core):  {baseline:>12,.0f} H/s")
    print(f"scan_nonces in-process (1 core):  {scan:>12,.0f} H/s  ({scan / baseline:.3f}x)")

    one = pool_rate(1, args.seconds)
    two = pool_rate(2, args.seconds)
    print(f"1 worker process:                 {one:>12,.0f} H/s")
    print(f"2 worker processes:               {two:>12,.0f} H/s")
    print(f"1 worker / baseline:              {one / baseline:12.3f}   (goal >= 0.9)")
    print(f"2 workers / 1 worker:             {two / one:12.3f}   (goal >= 1.7)")

    for label, rate in (("unthrottled", None), ("capped 1000 H/s", 1000.0)):
        lat = switch_latencies(2, args.jobs, rate)
        print(
            f"job-switch latency, 2 workers, {label:<16} n={len(lat)}: "
            f"p50 {percentile(lat, 0.5) * 1e3:.2f} ms  p99 {percentile(lat, 0.99) * 1e3:.2f} ms  "
            f"max {max(lat) * 1e3:.2f} ms  mean {statistics.fmean(lat) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
