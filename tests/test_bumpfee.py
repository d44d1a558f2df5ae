"""bumpfee, `sendtoaddress … replaceable` and `createrawtransaction … replaceable` on an
in-process node: the replacement pays the BIP125 rules out of the change (or added coins), is
journalled before relay, replaces the original (`replaced`, `replaced_by_txid`), and the
wallet locks the right inputs; each refusal says why, with bitcoind's error codes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from consensus.errors import ConsensusError
from consensus.params import REGTEST
from consensus.replacement import MAX_BIP125_RBF_SEQUENCE
from consensus.tx import SEQUENCE_FINAL, Transaction, decode_transaction
from node.daemon import Node
from node.rpc.errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_ERROR,
    RPCError,
)
from node.wallet import Wallet
from node.wallet_bumpfee import MAX_FEE_RATE
from tests.helpers import key
from tests.test_replacement_node import funded, make_node
from tests.test_wallet_safety import Rpc, fill_disk

PAYEE = key(7).address(REGTEST.address_prefix)
AMOUNT = 10**8


@pytest.fixture
async def started(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    node = make_node(tmp_path / "n", request.param)
    await node.start()
    yield node
    if node.store is not None:
        await node.stop()


def tx_of(node: Node, txid: str) -> Transaction:
    entry = node.mempool.get(bytes.fromhex(txid))
    assert entry is not None
    return entry.tx


def entry_of(node: Node, txid: str) -> Any:
    entry = node.mempool.get(bytes.fromhex(txid))
    assert entry is not None
    return entry


async def pay(rpc: Rpc, replaceable: bool, amount: int = AMOUNT) -> str:
    txid: str = await rpc("sendtoaddress", PAYEE, amount, "", "", False, replaceable)
    return txid


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_bumpfee_replaces_the_payment_out_of_its_change(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await pay(rpc, replaceable=False)  # full RBF: no signal needed
    original, old = tx_of(node, paid), entry_of(node, paid)
    await rpc("gettransaction", paid)  # watched

    result = await rpc("bumpfee", paid)
    assert set(result) == {"txid", "origfee", "fee", "errors"} and result["errors"] == []
    new_txid = result["txid"]
    bumped, new = tx_of(node, new_txid), entry_of(node, new_txid)
    assert result["origfee"] == old.fee and result["fee"] == new.fee
    incremental = node.mempool.incremental_fee_rate
    assert new.fee >= old.fee + incremental * new.size  # BIP125 rule 4
    assert new.fee * old.size > old.fee * new.size  # a higher fee rate
    # Same inputs, same payee output; the change pays the difference.
    assert [i.outpoint for i in bumped.inputs] == [i.outpoint for i in original.inputs]
    assert all(i.sequence == MAX_BIP125_RBF_SEQUENCE for i in bumped.inputs)  # default true
    assert bumped.outputs[0] == original.outputs[0]
    assert original.outputs[1].amount - bumped.outputs[1].amount == new.fee - old.fee
    assert bumped.outputs[1].pkh == original.outputs[1].pkh

    assert await rpc("getrawmempool") == [new_txid]
    status = await rpc("gettransaction", paid)
    assert status["status"] == "replaced" and status["replaced_by_txid"] == new_txid
    assert (await rpc("gettransaction", new_txid))["status"] != "replaced"

    # The wallet: the bump is a pending payment whose inputs are locked (the original's,
    # settled as replaced, hold nothing more), journalled so a restart knows it.
    wallet = node.wallet
    pending = wallet.history.pending(wallet.settled_in(node.chain))
    assert [r.tx.txid.hex() for r in pending] == [new_txid]
    assert wallet.locked_outpoints(node.chain) == {i.outpoint for i in bumped.inputs}
    reopened = Wallet.open(node.config.datadir, node.params)
    record = reopened.history.get(bytes.fromhex(new_txid))
    assert record is not None and record.sent and record.fee == new.fee
    # A later payment spends other coins.
    later = await pay(rpc, replaceable=False)
    taken = {i.outpoint for i in tx_of(node, later).inputs}
    assert not taken & {i.outpoint for i in bumped.inputs}

    # Bumping the replaced one again is refused; bumping the bump works.
    err = await rpc.error("bumpfee", paid)
    assert err.code == RPC_WALLET_ERROR and "already replaced" in err.message
    again = await rpc("bumpfee", new_txid, {"fee_rate": 50})
    assert again["fee"] >= 50 * entry_of(node, again["txid"]).size
    assert (await rpc("gettransaction", new_txid))["replaced_by_txid"] == again["txid"]
    # The line of replacements leads from the first to the one holding the slot.
    assert (await rpc("gettransaction", paid))["replaced_by_txid"] in (new_txid, again["txid"])

    # Mined: nothing left to bump.
    await rpc("generatetoaddress", 1, PAYEE)
    err = await rpc.error("bumpfee", again["txid"])
    assert err.code == RPC_WALLET_ERROR and "mined" in err.message


@pytest.mark.parametrize("started", ["opt-in"], indirect=True)
async def test_opt_in_bumps_only_a_replaceable_payment(started: Node) -> None:
    node = started
    rpc = await funded(node)
    final = await pay(rpc, replaceable=False)
    assert all(i.sequence == SEQUENCE_FINAL for i in tx_of(node, final).inputs)
    assert (await rpc("getmempoolentry", final))["bip125-replaceable"] is False
    err = await rpc.error("bumpfee", final)
    assert err.code == RPC_WALLET_ERROR
    assert "not BIP 125 replaceable" in err.message and "opt-in" in err.message
    assert final in await rpc("getrawmempool")

    signalling = await pay(rpc, replaceable=True)
    assert all(i.sequence == MAX_BIP125_RBF_SEQUENCE for i in tx_of(node, signalling).inputs)
    assert (await rpc("getmempoolentry", signalling))["bip125-replaceable"] is True
    result = await rpc("bumpfee", signalling, {"replaceable": False})
    assert (await rpc("gettransaction", signalling))["status"] == "replaced"
    assert all(i.sequence == SEQUENCE_FINAL for i in tx_of(node, result["txid"]).inputs)
    # The bump opted out, so opt-in will not replace it in turn.
    err = await rpc.error("bumpfee", result["txid"])
    assert err.code == RPC_WALLET_ERROR and "not BIP 125 replaceable" in err.message


@pytest.mark.parametrize("started", ["first-seen"], indirect=True)
async def test_first_seen_refuses_every_bump(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await pay(rpc, replaceable=True)
    err = await rpc.error("bumpfee", paid)
    assert err.code == RPC_WALLET_ERROR and "first-seen" in err.message
    assert await rpc("getrawmempool") == [paid]
    assert len(node.wallet.history.pending(node.wallet.settled_in(node.chain))) == 1


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_bumpfee_adds_a_coin_when_the_change_cannot_pay(started: Node) -> None:
    node = started
    rpc = await funded(node)
    biggest = max(u["amount"] for u in await rpc("listunspent") if u["spendable"])
    paid = await pay(rpc, replaceable=True, amount=biggest - 2_000)  # a change of ~1,600
    original = tx_of(node, paid)
    assert len(original.inputs) == 1 and len(original.outputs) == 2
    result = await rpc("bumpfee", paid, {"fee_rate": 100})
    bumped = tx_of(node, result["txid"])
    assert len(bumped.inputs) == 2 and bumped.inputs[0].outpoint == original.inputs[0].outpoint
    assert bumped.outputs[0] == original.outputs[0]
    assert result["fee"] >= 100 * entry_of(node, result["txid"]).size
    assert node.wallet.locked_outpoints(node.chain) == {i.outpoint for i in bumped.inputs}


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_a_payment_without_change_gets_a_coin_and_a_change_output(started: Node) -> None:
    node = started
    rpc = await funded(node)
    coin = max((u for u in await rpc("listunspent") if u["spendable"]), key=lambda u: u["amount"])
    raw = await rpc(
        "createrawtransaction",
        [{"txid": coin["txid"], "vout": coin["vout"]}],
        {PAYEE: coin["amount"] - 1_000},
        0,
        True,
    )
    signed = (await rpc("signrawtransactionwithwallet", raw))["hex"]
    tx = decode_transaction(bytes.fromhex(signed), REGTEST.max_block_size)
    # Recorded as the wallet's own payment (sendtoaddress's path), with no change output.
    node.wallet.record_payment(tx, node.now(), node.chain)
    paid = await rpc("sendrawtransaction", tx.encode().hex())
    result = await rpc("bumpfee", paid)
    bumped = tx_of(node, result["txid"])
    assert len(bumped.inputs) == 2 and bumped.outputs[0] == tx.outputs[0]
    assert len(bumped.outputs) == 2 and node.wallet.is_mine(bumped.outputs[1].pkh)
    assert result["fee"] == entry_of(node, result["txid"]).fee
    assert result["origfee"] == 1_000
    record = node.wallet.history.get(bumped.txid)
    assert record is not None and record.change_vout == 1


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_bumpfee_stops_at_the_added_input_bound_and_at_the_wallet_s_funds(
    started: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = started
    rpc = await funded(node)
    coins = [u["amount"] for u in await rpc("listunspent") if u["spendable"]]
    assert len(coins) >= 2
    small_change = await pay(rpc, replaceable=True, amount=max(coins) - 2_000)
    with monkeypatch.context() as patch:
        patch.setattr("node.wallet_bumpfee.MAX_ADDED_INPUTS", 0)
        err = await rpc.error("bumpfee", small_change, {"fee_rate": 100})
    assert err.code == RPC_WALLET_ERROR and "MAX_ADDED_INPUTS" in err.message
    assert await rpc("getrawmempool") == [small_change]

    # Everything else spent too: no coin is left to add.
    rest = sum(u["amount"] for u in await rpc("listunspent") if u["spendable"])
    everything = await pay(rpc, replaceable=True, amount=rest - 5_000)
    assert not [u for u in await rpc("listunspent") if u["spendable"] and u["confirmations"]]
    err = await rpc.error("bumpfee", everything, {"fee_rate": 1_000})
    assert err.code == RPC_WALLET_ERROR and "Insufficient funds" in err.message
    assert set(await rpc("getrawmempool")) == {small_change, everything}


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_bumpfee_refusals_and_hostile_params(started: Node) -> None:
    node = started
    rpc = await funded(node)
    paid = await pay(rpc, replaceable=True)

    async def refused(*params: Any) -> RPCError:
        err = await rpc.error("bumpfee", *params)
        assert await rpc("getrawmempool") == [paid]  # nothing changed
        return err

    assert (await refused("00" * 32)).code == RPC_INVALID_ADDRESS_OR_KEY
    for bad_txid in ("zz", "", "00" * 33, 5, None, ["x"]):
        await refused(bad_txid)
    err = await refused(paid, {"fee_rate": 1})
    assert err.code == RPC_INVALID_PARAMETER and "Insufficient total fee" in err.message
    for bad_rate in (0, -5, MAX_FEE_RATE + 1, "10", 2.5, True, [1], {"a": 1}):
        err = await refused(paid, {"fee_rate": bad_rate})
        assert err.code == RPC_INVALID_PARAMETER, bad_rate
    for bad_flag in ("yes", 1, [True]):
        assert (await refused(paid, {"replaceable": bad_flag})).code == RPC_INVALID_PARAMETER
    err = await refused(paid, {"conf_target": 3})
    assert err.code == RPC_INVALID_PARAMETER and "Unexpected key conf_target" in err.message
    for bad_options in ("fast", 5, [1], True):
        await refused(paid, bad_options)
    await refused(paid, {}, "extra")

    # A payment with a descendant in the mempool: its change spent by a raw transaction,
    # which the wallet notes but did not send (sendtoaddress) itself.
    change = tx_of(node, paid).outputs[1]
    raw = await rpc(
        "createrawtransaction", [{"txid": paid, "vout": 1}], {PAYEE: change.amount - 1_000}
    )
    signed = await rpc("signrawtransactionwithwallet", raw)
    child = await rpc("sendrawtransaction", signed["hex"])
    assert await rpc("getrawmempool") == [paid, child]
    err = await rpc.error("bumpfee", paid)
    assert err.code == RPC_WALLET_ERROR and "descendants in the mempool" in err.message
    err = await rpc.error("bumpfee", child)
    assert err.code == RPC_WALLET_ERROR and "not sent by this wallet" in err.message
    assert await rpc("getrawmempool") == [paid, child]


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_a_bump_is_journalled_before_relay_and_forgotten_if_refused(
    started: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = started
    rpc = await funded(node)
    paid = await pay(rpc, replaceable=True)
    locked = node.wallet.locked_outpoints(node.chain)

    with monkeypatch.context() as patch:
        fill_disk(patch)
        err = await rpc.error("bumpfee", paid)
    assert err.code == RPC_WALLET_ERROR and "nothing was sent" in err.message
    assert await rpc("getrawmempool") == [paid]
    assert node.wallet.locked_outpoints(node.chain) == locked

    def refuse(tx: Transaction) -> Any:
        raise ConsensusError("insufficient fee", "refused for the test")

    with monkeypatch.context() as patch:
        patch.setattr(node, "submit_transaction", refuse)
        err = await rpc.error("bumpfee", paid)
    assert err.code == RPC_VERIFY_REJECTED and "insufficient fee" in err.message
    assert await rpc("getrawmempool") == [paid]
    pending = node.wallet.history.pending(node.wallet.settled_in(node.chain))
    assert [r.tx.txid.hex() for r in pending] == [paid]
    assert node.wallet.locked_outpoints(node.chain) == locked


@pytest.mark.parametrize("started", ["first-seen"], indirect=True)
async def test_createrawtransaction_and_sendtoaddress_replaceable(started: Node) -> None:
    node = started
    rpc = await funded(node)
    coin = next(u for u in await rpc("listunspent") if u["spendable"])
    spend = [{"txid": coin["txid"], "vout": coin["vout"]}]
    outputs = {PAYEE: 1000}

    async def sequences(*params: Any) -> list[int]:
        raw = await rpc("createrawtransaction", *params)
        return [i["sequence"] for i in (await rpc("decoderawtransaction", raw))["vin"]]

    assert await sequences(spend, outputs) == [SEQUENCE_FINAL]
    assert await sequences(spend, outputs, 0, True) == [MAX_BIP125_RBF_SEQUENCE]
    assert await sequences(spend, outputs, 100, False) == [SEQUENCE_FINAL - 1]
    assert await sequences(spend, outputs, 100, True) == [MAX_BIP125_RBF_SEQUENCE]
    explicit = [{**spend[0], "sequence": 7}]
    assert await sequences(explicit, outputs, 0, True) == [7]  # an explicit sequence wins
    for bad in ("yes", 1, [True]):  # null is the default, as for every positional
        await rpc.error("createrawtransaction", spend, outputs, 0, bad)

    # sendtoaddress keeps its two-argument form; the bitcoind positions before `replaceable`
    # take only values powlab can honour.
    two = await rpc("sendtoaddress", PAYEE, 5000)
    assert all(i.sequence == SEQUENCE_FINAL for i in tx_of(node, two).inputs)
    for params, code in (
        (("note", "", False, True), RPC_INVALID_PARAMETER),
        (("", "to", False, True), RPC_INVALID_PARAMETER),
        (("", "", True, True), RPC_INVALID_PARAMETER),
    ):
        err = await rpc.error("sendtoaddress", PAYEE, 5000, *params)
        assert err.code == code
    for bad in ("yes", 1, [True], {"a": 1}):
        await rpc.error("sendtoaddress", PAYEE, 5000, "", "", False, bad)
    assert await rpc("getrawmempool") == [two]


@pytest.mark.parametrize("started", ["full"], indirect=True)
async def test_after_a_restart_the_bump_holds_the_slot(started: Node, tmp_path: Path) -> None:
    node = started
    rpc = await funded(node)
    paid = await pay(rpc, replaceable=False)
    bump = (await rpc("bumpfee", paid))["txid"]
    await node.stop()

    # The replacement log is in memory only: the restarted wallet sees the original as a
    # pending payment again, offers it, and the mempool (which kept the bump) refuses it.
    again = make_node(tmp_path / "n", "full")
    await again.start()
    try:
        rpc = Rpc(again)
        assert await rpc("getrawmempool") == [bump]
        err = await rpc.error("bumpfee", paid)
        assert err.code == RPC_WALLET_ERROR and "not in the mempool" in err.message
        bumped = tx_of(again, bump)
        assert again.wallet.locked_outpoints(again.chain) == {i.outpoint for i in bumped.inputs}
        await rpc("generatetoaddress", 1, PAYEE)
        assert (await rpc("gettransaction", paid))["status"] == "conflicted"
        assert (await rpc("gettransaction", bump))["confirmations"] == 1
        assert again.wallet.locked_outpoints(again.chain) == set()
    finally:
        await again.stop()


@pytest.mark.parametrize("started", ["opt-in"], indirect=True)
async def test_wallet_rbf_sets_the_default_of_sendtoaddress(started: Node) -> None:
    node = started
    rpc = await funded(node)
    node.config = dataclasses.replace(node.config, wallet_rbf=True)
    signalling = await rpc("sendtoaddress", PAYEE, 5000)
    assert (await rpc("getmempoolentry", signalling))["bip125-replaceable"] is True
    final = await rpc("sendtoaddress", PAYEE, 5000, "", "", False, False)
    assert (await rpc("getmempoolentry", final))["bip125-replaceable"] is False
    assert (await rpc("bumpfee", signalling))["fee"] > 0
