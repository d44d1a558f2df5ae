"""Replacement on the node, in process: the `replaced` status with `replaced_by_txid`, the
`tx_status` and `double_spend` events, the wallet settling a replaced payment (and taking it back
when the replacement leaves), and the RPC fields (`bip125-replaceable`, `mempoolfullrbf`,
`replacement_policy`), under each policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from consensus.mempool import Mempool
from consensus.params import REGTEST
from consensus.replacement import MAX_BIP125_RBF_SEQUENCE
from consensus.tx import Transaction, TxOut
from node.config import NodeConfig
from node.daemon import Node
from node.events import Subscription
from node.replacements import ReplacementLog
from node.rpc.errors import RPC_INVALID_ADDRESS_OR_KEY, RPC_VERIFY_REJECTED
from node.wallet_multisig import coin_lookup, sign_with_wallet
from tests.helpers import key
from tests.test_wallet_safety import Rpc

MATURITY = REGTEST.coinbase_maturity
PAYEE = key(7).address(REGTEST.address_prefix)


def make_node(datadir: Path, policy: str) -> Node:
    config = NodeConfig(
        datadir=datadir,
        p2p_bind="127.0.0.1:0",
        rpc_bind="127.0.0.1:0",
        mempool_replacement=policy,  # type: ignore[arg-type]
        double_spend_alerts=True,
    )
    return Node(config, REGTEST)


@pytest.fixture
async def started(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    node = make_node(tmp_path / "n", request.param)
    await node.start()
    yield node
    if node.store is not None:
        await node.stop()


async def funded(node: Node) -> Rpc:
    rpc = Rpc(node)
    await rpc("generatetoaddress", MATURITY + 3, await rpc("getnewaddress"))
    return rpc


def respend(node: Node, txid: str, fee: int, sequence: int | None = None) -> Transaction:
    """The wallet's payment `txid` spent again by the wallet, paying `fee` to itself."""
    record = node.wallet.history.get(bytes.fromhex(txid))
    assert record is not None
    inputs = record.tx.inputs
    if sequence is not None:
        inputs = tuple(i._replace(sequence=sequence) for i in inputs)
    spent = sum(c.amount for c in (node.chain.coin(i.outpoint) for i in inputs) if c is not None)
    unsigned = Transaction(inputs, [TxOut(spent - fee, record.tx.outputs[-1].pkh)])
    result = sign_with_wallet(node.wallet, unsigned, coin_lookup(node.chain, node.mempool))
    assert result.complete
    return result.tx


def drain(sub: Subscription) -> list[dict[str, Any]]:
    events = []
    while (event := sub.get_nowait()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_full_rbf_replaced_payment_status_events_alert_and_wallet(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await rpc("sendtoaddress", PAYEE, 10**8)
    fee = node.mempool.get(bytes.fromhex(paid)).fee  # type: ignore[union-attr]
    sub = node.events.subscribe(types=["tx_status", "double_spend"])
    await rpc("gettransaction", paid)  # watched
    replacement = respend(node, paid, fee + 10_000)
    assert await rpc("sendrawtransaction", replacement.encode().hex()) == replacement.txid.hex()

    status = await rpc("gettransaction", paid)
    assert status["status"] == "replaced"
    assert status["replaced_by_txid"] == replacement.txid.hex()
    assert status["conflicts"] == [replacement.txid.hex()]
    assert await rpc("getrawmempool") == [replacement.txid.hex()]
    events = drain(sub)
    assert {
        "type": "tx_status",
        "txid": paid,
        "status": "replaced",
        "confirmations": 0,
        "replaced_by_txid": replacement.txid.hex(),
    } in events
    alerts = [e for e in events if e["type"] == "double_spend"]
    assert alerts and alerts[0]["replaced_under"] == "full"
    assert {alerts[0]["txid"], alerts[0]["conflicting"]} == {paid, replacement.txid.hex()}
    assert replacement.txid in node.double_spends_of(bytes.fromhex(paid))

    # Settled like a conflicted payment: not resubmitted, its inputs not held for it.
    assert node.resubmit_wallet_transactions()["accepted"] == 0
    assert not node.wallet.history.pending(node.wallet.settled_in(node.chain))

    # The replacement leaves the pool (lost, as by a crash): the payment is pending again and
    # the wallet puts it back.
    node.mempool = Mempool(node.params, replacement_policy="full")
    assert (await rpc("gettransaction", paid))["status"] != "replaced"
    assert node.resubmit_wallet_transactions()["accepted"] == 1
    assert paid in await rpc("getrawmempool")
    # Back in the mempool, and flagged: the node holds proof of its double spend.
    assert (await rpc("gettransaction", paid))["status"] == "conflicted"


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_a_confirmed_replacement_makes_the_replaced_conflicted(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await rpc("sendtoaddress", PAYEE, 10**8)
    fee = node.mempool.get(bytes.fromhex(paid)).fee  # type: ignore[union-attr]
    replacement = respend(node, paid, fee + 10_000)
    await rpc("sendrawtransaction", replacement.encode().hex())
    await rpc("generatetoaddress", 1, PAYEE)
    status = await rpc("gettransaction", paid)
    assert status["status"] == "conflicted" and status["confirmations"] == -1
    assert status["replaced_by_txid"] == replacement.txid.hex()


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_a_refused_replacement_says_why(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await rpc("sendtoaddress", PAYEE, 10**8)
    fee = node.mempool.get(bytes.fromhex(paid)).fee  # type: ignore[union-attr]
    cheap = respend(node, paid, fee)
    error = await rpc.error("sendrawtransaction", cheap.encode().hex())
    assert error.code == RPC_VERIFY_REJECTED and "insufficient fee" in error.message
    # Refused, yet still a proven double spend of the payment: the alert machinery fires.
    status = await rpc("gettransaction", paid)
    assert status["seen_double_spends"] == [cheap.txid.hex()]
    assert status["status"] == "conflicted" and status["double_spend_alert"] is True


@pytest.mark.parametrize("started", ["first-seen"], indirect=True)
async def test_first_seen_refuses_the_replacement(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await rpc("sendtoaddress", PAYEE, 10**8)
    replacement = respend(node, paid, 10**6, MAX_BIP125_RBF_SEQUENCE)
    error = await rpc.error("sendrawtransaction", replacement.encode().hex())
    assert error.code == RPC_VERIFY_REJECTED and "txn-mempool-conflict" in error.message
    assert await rpc("getrawmempool") == [paid]
    info = await rpc("getmempoolinfo")
    assert info["mempoolfullrbf"] is False and info["replacement_policy"] == "first-seen"


@pytest.mark.parametrize("started", ["opt-in"], indirect=True)
async def test_opt_in_needs_the_signal_and_getmempoolentry_shows_it(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await rpc("sendtoaddress", PAYEE, 10**8)
    assert (await rpc("getmempoolentry", paid))["bip125-replaceable"] is False
    fee = node.mempool.get(bytes.fromhex(paid)).fee  # type: ignore[union-attr]
    error = await rpc.error("sendrawtransaction", respend(node, paid, fee + 10**4).encode().hex())
    assert "txn-mempool-conflict" in error.message
    # A signalling replacement of a non-signalling one is still refused; once a signalling
    # transaction is in, it can be replaced.
    signalling = respend(node, paid, fee + 10**4, MAX_BIP125_RBF_SEQUENCE)
    error = await rpc.error("sendrawtransaction", signalling.encode().hex())
    assert "txn-mempool-conflict" in error.message
    info = await rpc("getmempoolinfo")
    assert info["mempoolfullrbf"] is False and info["replacement_policy"] == "opt-in"
    verbose = await rpc("getrawmempool", True)
    assert verbose[paid]["bip125-replaceable"] is False
    error = await rpc.error("getmempoolentry", "00" * 32)
    assert error.code == RPC_INVALID_ADDRESS_OR_KEY


@pytest.mark.parametrize("started", ["opt-in"], indirect=True)
async def test_opt_in_replaces_a_signalling_transaction(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await rpc("sendtoaddress", PAYEE, 10**8)
    fee = node.mempool.get(bytes.fromhex(paid)).fee  # type: ignore[union-attr]
    # Take the wallet's payment out and put in a signalling version of it.
    node.mempool = Mempool(node.params, replacement_policy="opt-in")
    first = respend(node, paid, fee + 1_000, MAX_BIP125_RBF_SEQUENCE)
    await rpc("sendrawtransaction", first.encode().hex())
    assert (await rpc("getmempoolentry", first.txid.hex()))["bip125-replaceable"] is True
    second = respend(node, paid, fee + 20_000)
    await rpc("sendrawtransaction", second.encode().hex())
    status = await rpc("gettransaction", first.txid.hex())
    assert status["status"] == "replaced" and status["replaced_by_txid"] == second.txid.hex()
    assert (await rpc("getmempoolinfo"))["mempoolfullrbf"] is False


# ----------------------------------------------------------------------------- the log


def test_the_replacement_log_is_bounded_and_follows_a_line_of_replacements() -> None:
    log = ReplacementLog(capacity=3)
    a, b, c, d, e = (bytes([n]) * 32 for n in range(5))
    log.note({a: b})
    log.note({b: c})
    # a was replaced by b, b by c: while c holds the slot, a and b are replaced by a live one.
    assert log.holder(a, lambda t: t == c) == c and log.replaced_by(a) == b
    assert log.holder(a, lambda t: False) is None
    log.note({c: a})  # a cycle (a back in, replacing c): the walk still ends
    assert log.holder(a, lambda t: False) is None
    log.note({d: e})
    assert len(log) == 3 and log.replaced_by(a) is None  # the oldest went
    assert log.replaced_by(d) == e
