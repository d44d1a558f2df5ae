"""Figures of a running swarm testnet (`powlab testnet up --swarm --dir D`), for docs/scaling.md.

    python benchmarks/swarm_figures.py --dir D [--idle 10] [--json]

* memory per node: USS and PSS (from /proc/PID/smaps_rollup) summed over each container's
  processes (init, the node, its miner process), for the containers on this engine;
* idle CPU per node: CPU time of its container's cgroup over ``--idle`` seconds, as % of a
  core (the miners keep mining: regtest's rates are a fraction of a hash per second);
* propagation: one 1-tx block mined on the first miner, the time each other node logged
  ``block_connected`` for it, from just before the ``generatetoaddress`` call (p50, p90, max
  in ms; an upper bound: it includes the call and mining the block). All
  engines of a swarm on one machine share its clock; across machines the figures are only as
  good as their clock sync.

Reads /proc of the host, so it needs to run as a user that may read the containers' processes
(root on these machines).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import waiting
from lab.testnet.cli import compose_testnet
from lab.testnet.figures import mean_max, memory_kb, parse_iso, spread


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def _pids(container: str) -> list[int]:
    out = _docker("top", container, "-eo", "pid")
    return [int(x) for x in out.split()[1:] if x.isdigit()]


def _cpu_seconds(container_id: str) -> float:
    """CPU time of the container's cgroup (v1 cpuacct, else v2 cpu.stat), in seconds."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
               Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat")):
        if v2.exists():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    raise OSError(f"no cgroup CPU accounting found for {container_id}")


def _log_time(stack: str, node: str, block_hash: str) -> float | None:
    done = subprocess.run(["docker", "service", "logs", "--raw", f"{stack}_{node}"],
                          capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr  # the node logs to stderr
    for line in out.splitlines():
        if "block_connected" in line and block_hash in line:
            return parse_iso(line.split()[0])
    return None


def measure(directory: Path, idle: float) -> dict[str, Any]:
    net = compose_testnet(directory)
    nodes = [c for c in net.containers() if c.running]
    local = [c for c in nodes if c.local]
    pids = {c.node: _pids(c.id) for c in local}
    memory = {n: [memory_kb(p) for p in ps] for n, ps in pids.items()}
    uss = [sum(u for u, _ in m) / 1024 for m in memory.values()]
    pss = [sum(p for _, p in m) / 1024 for m in memory.values()]
    before = {c.id: _cpu_seconds(c.id) for c in local}
    time.sleep(idle)
    cpu = [100.0 * (_cpu_seconds(c.id) - before[c.id]) / idle for c in local]

    miner = next(c for c in nodes if c.role == "miner")
    payee = net.rpc(nodes[-1].node, "getnewaddress")
    net.rpc(miner.node, "sendtoaddress", payee, 100000)
    address = net.rpc(miner.node, "getnewaddress")
    # The origin is this machine's clock just before the call (the containers share it): the
    # delays include the RPC and mining the block (a few hashes on regtest), an upper bound.
    # The miner's own block_connected line is no origin: it may be written after the relay.
    origin: float | None = time.time()
    block = net.rpc(miner.node, "generatetoaddress", 1, address)[0]
    net.wait_converged(60)

    def logged() -> dict[str, float | None] | None:
        # The engine collects service logs a little after they are written.
        times = {c.node: _log_time(net.stack, c.node, block) for c in nodes}
        return times if all(t is not None for t in times.values()) else None

    try:
        seen_at = waiting.wait_until(logged, 30, "every node's block_connected line", 1.0)
    except TimeoutError:  # reported as missing
        seen_at = {c.node: _log_time(net.stack, c.node, block) for c in nodes}
    known = [t for t in seen_at.values() if t is not None]
    first = min(known) if known else None
    delays, spreads = [], []
    for c in nodes:
        seen = seen_at[c.node]
        if c.node == miner.node or origin is None or seen is None:
            continue
        delays.append(1000.0 * (seen - origin))
        spreads.append(1000.0 * (seen - (first or seen)))
    return {
        "nodes": len(nodes), "measured_locally": len(local),
        "uss_mb": mean_max(uss),
        "pss_mb": mean_max(pss),
        "idle_cpu_pct_of_core": mean_max(cpu, 3),
        "propagation_ms": spread(delays),
        # From the first node (any, the miner included) that logged the block: a lower bound.
        "spread_ms": spread(spreads),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.dir, args.idle), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
