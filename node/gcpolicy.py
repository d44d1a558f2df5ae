"""Keep the cyclic garbage collector off what a node process has loaded at start-up.

A full collection visits every tracked object: the block index, the wallet, the mempool read back
from disk, the modules. On a node that has loaded a chain that takes tens of milliseconds, paid by
whichever block happens to trigger it (benchmarks/bench_hop.py saw 37–44 ms collections inside
hops whose median is about 5 ms). What a node process loads at start-up lives as long as the
process, so once the node has started it is collected one last time and moved out of the
collector's reach with `gc.freeze()`; objects made later are collected as before.

Frozen objects are still freed by reference counting; only garbage that forms a reference cycle
among them stays until the process exits. That is why `run_node` (one node per process) calls
this and `Node.start` does not: a test that starts and drops many nodes in one process would keep
each of them (a node and its miner refer to each other).
"""

from __future__ import annotations

import gc


def freeze_loaded_state() -> int:
    """Collect, then freeze everything alive; returns how many objects are now frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
