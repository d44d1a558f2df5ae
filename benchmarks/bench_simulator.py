"""Many-node simulator throughput: 1,000 nodes x 1,000 blocks (goal: under a minute).

Prints wall time, events per second (block deliveries to nodes, plus mining events) and, as
the in-run baseline, the rate of bare `ChainState.accept_block` calls on one node for the same
kind of block, so the ratio says how much the event loop adds on top of the consensus code.

    python benchmarks/bench_simulator.py [--nodes 1000] [--blocks 1000]
"""

from __future__ import annotations

import argparse
import time

from consensus.blockbuild import assemble_block
from consensus.chainstate import ChainState
from consensus.params import REGTEST
from lab.simulate.network import NetworkConfig, _SharedBlocks, simulate_network


def baseline_accepts(count: int) -> float:
    """accept_block calls per second on a single chain (no network, no heap)."""
    shared = _SharedBlocks()
    builder = ChainState(REGTEST, shared, check_pow=False)
    builder.discard_update()
    blocks = []
    now = REGTEST.genesis_timestamp + 10
    for n in range(count):
        block = assemble_block(builder, [], 0, bytes(20), now + n, n)
        shared.blocks[block.hash] = block.encode()
        builder.accept_block(block, now + n)
        builder.discard_update()
        blocks.append(block)
    chain = ChainState(REGTEST, shared, check_pow=False)
    start = time.perf_counter()
    for n, block in enumerate(blocks):
        chain.accept_block(block, now + n)
        chain.discard_update()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    base = baseline_accepts(2000)
    start = time.perf_counter()
    result = simulate_network(NetworkConfig(nodes=args.nodes, blocks=args.blocks,
                                            seed=args.seed))
    wall = time.perf_counter() - start
    rate = result["events"] / wall
    print(f"simulate network --nodes {args.nodes} --blocks {args.blocks} --seed {args.seed}")
    print(f"  wall time            {wall:.1f} s (goal < 60 s: {'met' if wall < 60 else 'MISSED'})")
    print(f"  events               {result['events']:,} ({rate:,.0f} events/s)")
    print(f"  stale rate           {result['stale_rate']:.4f}")
    print(f"  baseline accept_block on one chain: {base:,.0f}/s; simulator / baseline = "
          f"{rate / base:.2f}")


if __name__ == "__main__":
    main()
