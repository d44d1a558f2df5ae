"""kill -9 during bursts of payments, 40 times, on one regtest node and the same datadir:
no payment of the wallet conflicts with a later one of its own, and every txid that
sendtoaddress returned ends up confirmed (issue 16: 281 of 786 were conflicted before)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from consensus.params import REGTEST
from lab.testnet.processes import NodeProcess
from tests.daemon_harness import wait_for
from tests.helpers import key

pytestmark = pytest.mark.slow

KILLS = 40
MAX_BURST = 8  # payments a burst may complete before the kill lands (seeded, 1..MAX_BURST)


class Burst(threading.Thread):
    """Pays one address after another until the node dies under it."""

    def __init__(self, node: NodeProcess, payees: list[str], rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.payees = payees
        self.amounts = [rng.randrange(1_000, 100_000) for _ in range(1_000)]
        self.returned: list[str] = []

    def run(self) -> None:
        for n, amount in enumerate(self.amounts):
            try:
                txid = self.node.rpc(
                    "sendtoaddress", self.payees[n % len(self.payees)], amount, timeout=10
                )
            except Exception:
                return  # killed mid-call (or just before): whatever it did is the wallet's
            self.returned.append(txid)


def test_kill_9_during_payment_bursts(tmp_path: Path) -> None:
    rng = random.Random(16)
    node = NodeProcess(tmp_path / "n")
    other = [key(n).address(REGTEST.address_prefix) for n in (6, 7)]  # another wallet
    returned: list[str] = []
    try:
        node.start()
        miner = node.rpc("getnewaddress")
        own = [node.rpc("getnewaddress") for _ in range(2)]
        node.rpc("generatetoaddress", REGTEST.coinbase_maturity + 40, miner)
        for cycle in range(KILLS):
            if cycle:
                node.start()
                # Resubmitted at start-up: whatever was pending is back in the mempool, and
                # every third cycle a block confirms it (the rest stays pending across kills).
                if cycle % 3 == 0:
                    node.rpc("generatetoaddress", 1, miner)
            burst = Burst(node, [*own, *other], rng)
            target = rng.randint(1, MAX_BURST)
            burst.start()
            wait_for(
                lambda b=burst, t=target: len(b.returned) >= t or not b.is_alive(),
                60,
                "payments before the kill",
            )
            node.kill()
            burst.join(30)
            assert not burst.is_alive()
            returned.extend(burst.returned)
        node.start()
        for _ in range(10):
            if not node.rpc("getrawmempool"):
                break
            node.rpc("generatetoaddress", 1, miner)
        assert node.rpc("getrawmempool") == []
        statuses = {t: node.rpc("gettransaction", t)["status"] for t in returned}
        lost = {t: s for t, s in statuses.items() if s not in ("confirmed", "final")}
        assert not lost, f"{len(lost)} of {len(returned)} returned payments not confirmed"
        # Every payment the wallet made (returned or cut off by the kill) settled one way
        # only: confirmed; none was conflicted by a later payment of its own.
        sends = [e for e in node.rpc("listtransactions", "*", 100_000) if e["category"] == "send"]
        assert {e["status"] for e in sends} <= {"confirmed", "final"}
        assert set(returned) <= {e["txid"] for e in sends}
        assert len(returned) >= KILLS  # every burst completed at least one payment
        assert node.stop() == 0
        print(
            f"{KILLS} kills: {len(returned)} returned payments, {len(sends)} wallet sends, "
            "all confirmed"
        )
    finally:
        node.ensure_dead()
