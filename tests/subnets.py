"""This test run's own loopback address ranges (127.A.B.0/24), so the suite can run next to a
testnet of yours (which sits on 127.0.0.x by default) and next to another run of the suite.

`subnet(k)` is the k-th range of this run: chosen at random (seeded per run; the seed and the
ranges are in pytest's header and, after a failure, in its summary) among those where nothing
listens on the testnet's ports, by binding them. Tests that run nodes on fixed addresses use
`host(index, k)`; a testnet gets `--subnet subnet(k)`. Different test modules use different k,
so a module's leftovers never meet the next module's nodes.

POWLAB_TEST_SUBNET=A.B.C forces the first range; POWLAB_TEST_SEED replays a run's choices.
"""

from __future__ import annotations

import os
import random
import socket
import time

from lab.testnet.manifest import DEFAULT_P2P_PORT, DEFAULT_RPC_PORT, check_subnet

SEED = int(os.environ.get("POWLAB_TEST_SEED") or (os.getpid() * 1_000_003 + time.time_ns()) % 2**32)
_rng = random.Random(SEED)
_chosen: list[str] = []

# Which range each user takes (one per module that starts nodes, so none share one).
P2P_TESTS = 0
TESTNET_TESTS = 1
ATTACK_TESTS = 2
SIM_VS_LIVE = 3
SIDE_BY_SIDE = 4  # and 5
SCENARIOS = 6
ECLIPSE = 7
TIMEWARP = 8
BALANCE = 9
DASHBOARD = 10  # tests/test_dashboard.py
DASHBOARD_BROWSER = 11  # tests/test_dashboard_browser.py
DASHBOARD_20 = 12  # and its 20-node testnet
DASHBOARD_RUN = 13  # scripts/run with the dashboard (tests/test_dashboard.py)
DASHBOARD_10K = 14  # a real 10,000-block chain (tests/test_dashboard_browser.py)
SCALE = 15  # tests/test_scale.py: a forked testnet on a random graph
MULTISIG = 16  # tests/test_multisig_daemons.py
WALLET_DISK_FULL = 17  # tests/test_wallet_disk_full.py
ADDRESS_TESTNET = 18  # tests/test_addressindex_testnet.py
RACE_REPLACEMENT = 21  # tests/test_race_replacement.py
BENCH_LITECOIND = 19  # tests/test_bench_litecoind.py: both daemons side by side


def _is_free(subnet: str, hosts: int = 8) -> bool:
    """Nothing bound on SUBNET.2 … SUBNET.(hosts+1) at the testnet's ports (TCP, and UDP for
    P2P, which the node binds as well)."""
    for last in range(2, hosts + 2):
        for port, kind in ((DEFAULT_RPC_PORT, socket.SOCK_STREAM),
                           (DEFAULT_P2P_PORT, socket.SOCK_STREAM),
                           (DEFAULT_P2P_PORT, socket.SOCK_DGRAM)):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((f"{subnet}.{last}", port))
                except OSError:
                    return False
    return True


def subnet(k: int = 0) -> str:
    """The k-th free loopback range of this run, e.g. `127.143.7`."""
    forced = os.environ.get("POWLAB_TEST_SUBNET")
    if forced and not _chosen:
        _chosen.append(check_subnet(forced))
    tries = 0
    while len(_chosen) <= k:
        candidate = f"127.{_rng.randint(100, 254)}.{_rng.randint(1, 254)}"
        tries += 1
        if candidate not in _chosen and _is_free(candidate):
            _chosen.append(candidate)
        elif tries > 200:
            raise AssertionError(f"no free 127.A.B range found ({describe()})")
    return _chosen[k]


def host(index: int, k: int = 0) -> str:
    """Node `index`'s address in range k: A.B.C.(index + 2), as a testnet would number it."""
    return f"{subnet(k)}.{index + 2}"


def describe() -> str:
    ranges = ", ".join(f"{c}.0/24" for c in _chosen) or "none yet"
    return f"loopback ranges {ranges} (POWLAB_TEST_SEED={SEED})"
