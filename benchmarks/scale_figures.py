"""Figures of a process testnet on this machine (`powlab testnet up`), for docs/scaling.md.

    python benchmarks/scale_figures.py --nodes 1000 --subnet 127.77.0 [--dir D]
        [--topology random --degree 8] [--launcher fork] [--idle 60] [--blocks 3] [--keep]

Starts the testnet with `powlab testnet up` (timed, wall clock, in a subprocess without a
terminal, so its progress comes as lines), then measures, and tears it down again
(`down --purge`) unless `--keep`:

* start-up: `up` from the command to its exit (nodes started, RPC up, connected to their
  neighbours, funded, every node on the same tip, miners started);
* memory per node: USS and PSS (lab/testnet/figures.py: /proc/PID/smaps_rollup) summed over
  the node's process group (the node, and on mining nodes its miner processes), mean and max,
  and the fork server's own;
* idle CPU per node: CPU time of its process group over `--idle` seconds (the two miners
  keep mining at regtest's fraction of a hash per second), % of a core, mean and max;
* propagation: `--blocks` times, n1 pays n2 and mines one block with `generatetoaddress`;
  each node's `block_connected` log line for it, from n1's own line (p50 / p90 / max over
  the other nodes, in ms, lab.stats.percentile). All nodes share this machine's clock.
  Also from the moment `generatetoaddress` was asked for (`propagation_ms_from_rpc_call`):
  an upper bound that does not depend on when n1 writes its own line (n1 sends the block
  before it logs it, so with prefilled compact blocks its neighbours can log theirs first).
* the load average before and after, and the machine's memory in use.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import waiting
from lab.testnet import forkserver
from lab.testnet.control import call, wait_converged
from lab.testnet.figures import (
    block_connected_at,
    group_cpu_seconds,
    group_memory_kb,
    mean_max,
    memory_kb,
    process_groups,
    spread,
)
from lab.testnet.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]


def _powlab(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lab", "testnet", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _mem_used_mb() -> float:
    info = {line.split(":")[0]: int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()}
    return round((info["MemTotal"] - info["MemAvailable"]) / 1024, 1)


def measure(directory: Path, idle: float, blocks: int) -> dict[str, Any]:
    manifest = load_manifest(directory)
    nodes = manifest.nodes
    pids = {e.name: e.pid or 0 for e in nodes}
    groups = process_groups()
    memory = {name: group_memory_kb(pid, groups) for name, pid in pids.items()}
    uss = [u / 1024 for u, _ in memory.values()]
    pss = [p / 1024 for _, p in memory.values()]
    miners = [e.name for e in nodes if e.is_miner]
    server = forkserver.server_pid(directory)
    before = {name: group_cpu_seconds(pid, groups) for name, pid in pids.items()}
    start = time.monotonic()
    time.sleep(idle)
    elapsed = time.monotonic() - start
    groups = process_groups()
    cpu = [100.0 * (group_cpu_seconds(pid, groups) - before[name]) / elapsed
           for name, pid in pids.items()]

    origin, payee = nodes[0], nodes[1 % len(nodes)]
    hashes = []
    asked: dict[str, float] = {}  # block -> wall clock just before `generatetoaddress`
    for _ in range(blocks):
        call(origin, "sendtoaddress", call(payee, "getnewaddress"), 100000)
        address = call(origin, "getnewaddress")
        at = time.time()
        block = call(origin, "generatetoaddress", 1, address)[0]
        asked[block] = at
        hashes.append(block)
        wait_converged(nodes, 300)
    def read_logs() -> dict[str, dict[str, float]] | None:
        with ThreadPoolExecutor(max_workers=16) as pool:
            seen = dict(zip((e.name for e in nodes),
                            pool.map(lambda e: block_connected_at(Path(e.log), hashes), nodes),
                            strict=True))
        return seen if all(len(times) == len(hashes) for times in seen.values()) else None

    # Every node has the blocks (converged); their log lines may trail by a moment.
    try:
        seen = waiting.wait_until(read_logs, 30, "every node's log lines", 1.0)
    except TimeoutError:
        seen = {e.name: block_connected_at(Path(e.log), hashes) for e in nodes}
    per_block = []
    pooled: list[float] = []
    # From the moment `generatetoaddress` was asked for: an upper bound (it includes the RPC,
    # mining and n1's own validation), and immune to n1 logging its block_connected line after
    # it has already sent the block out (its neighbours then log theirs first).
    from_call = [1000.0 * (times[block] - asked[block]) for block in hashes
                 for name, times in seen.items() if name != origin.name and block in times]
    for block in hashes:
        first = seen[origin.name].get(block)
        delays = [1000.0 * (times[block] - first) for name, times in seen.items()
                  if name != origin.name and first is not None and block in times]
        missing = sum(1 for name, times in seen.items() if block not in times)
        per_block.append({"hash": block[:16], "ms": spread(delays), "missing": missing})
        pooled.extend(delays)
    return {
        "nodes": len(nodes), "topology": manifest.topology, "degree": manifest.degree,
        "launcher": manifest.launcher,
        "uss_mb": mean_max(uss), "pss_mb": mean_max(pss),
        "uss_mb_miners": mean_max(u / 1024 for name, (u, _) in memory.items()
                                  if name in miners),
        "uss_mb_non_miners": mean_max(u / 1024 for name, (u, _) in memory.items()
                                      if name not in miners),
        "forkserver_uss_pss_mb": ([round(x / 1024, 1) for x in memory_kb(server)]
                                  if server else None),
        "idle_s": round(elapsed, 1),
        "idle_cpu_pct_of_core": mean_max(cpu, 3),
        "idle_cpu_pct_total": round(sum(cpu), 1),
        "propagation_ms_from_miner_log": spread(pooled),
        "propagation_ms_from_rpc_call": spread(from_call),
        "propagation_per_block": per_block,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--subnet", required=True, help="loopback A.B.C, e.g. 127.77.0")
    parser.add_argument("--dir", type=Path, help="default /tmp/powlab-scale-N")
    parser.add_argument("--topology", default="random")
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--launcher", default="fork", choices=("fork", "exec"))
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="leave the testnet running")
    args = parser.parse_args()
    directory = (args.dir or Path(f"/tmp/powlab-scale-{args.nodes}")).resolve()
    result: dict[str, Any] = {"load_before": _loadavg(), "mem_used_mb_before": _mem_used_mb()}
    up = ["up", "--dir", str(directory), "--nodes", str(args.nodes), "--subnet", args.subnet,
          "--topology", args.topology, "--launcher", args.launcher,
          "--timeout", str(args.timeout), "--no-hints"]
    if args.topology == "random":
        up += ["--degree", str(args.degree), "--seed", str(args.seed)]
    start = time.monotonic()
    done = _powlab(*up)
    result["up_s"] = round(time.monotonic() - start, 1)
    try:
        if done.returncode != 0:
            result["up_error"] = (done.stdout + done.stderr)[-3000:]
        else:
            result["up_progress"] = [line for line in done.stdout.splitlines()
                                     if line.startswith(("starting", "nodes ", "funding"))]
            result.update(measure(directory, args.idle, args.blocks))
            result["load_after"] = _loadavg()
            result["mem_used_mb_after"] = _mem_used_mb()
    finally:
        if not args.keep:
            down = _powlab("down", "--dir", str(directory), "--purge")
            result["down_rc"] = down.returncode
    print(json.dumps(result, indent=2))
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
