"""The wallet under faults, in process: inputs locked across a lost mempool, resubmission,
abandontransaction, listtransactions, wallet.dat migration, write failures before and after
relay, a failed store write during generatetoaddress, a stop on a full disk, hostile params."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from consensus.errors import ConsensusError
from consensus.mempool import Mempool
from consensus.params import REGTEST
from consensus.tx import Transaction, TxIn, TxOut
from node.config import NodeConfig
from node.daemon import MEMPOOL_FILE, Node, stop_message
from node.rpc.errors import (
    INVALID_PARAMS,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_ERROR,
    RPCError,
)
from node.rpc.methods import build_registry
from node.wallet import WALLET_FILE, WALLET_VERSION, Wallet
from node.wallet_errors import WalletError
from node.wallet_history import TxHistory, WalletTx
from node.wallet_journal import Journal
from node.wallet_multisig import coin_lookup, sign_with_wallet
from tests.async_wait import wait_until_async
from tests.helpers import key

MATURITY = REGTEST.coinbase_maturity
FULL = OSError(errno.ENOSPC, "No space left on device")


class Rpc:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = build_registry(node)

    async def __call__(self, method: str, *params: Any) -> Any:
        return await self.registry.call(method, list(params))

    async def error(self, method: str, *params: Any) -> RPCError:
        with pytest.raises(RPCError) as info:
            await self.registry.call(method, list(params))
        return info.value


def make_node(datadir: Path) -> Node:
    config = NodeConfig(datadir=datadir, p2p_bind="127.0.0.1:0", rpc_bind="127.0.0.1:0")
    return Node(config, REGTEST)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = make_node(tmp_path / "n")
    await n.start()
    yield n
    if n.store is not None:
        await n.stop()


async def funded(node: Node, mature: int = 5) -> Rpc:
    rpc = Rpc(node)
    address = await rpc("getnewaddress")
    await rpc("generatetoaddress", MATURITY + mature, address)
    return rpc


def lose_mempool(node: Node) -> None:
    """What a kill -9 does to the mempool: it is gone (the wallet file is not)."""
    node.mempool = Mempool(node.params)


def inputs_of(node: Node, txid: str) -> set[Any]:
    record = node.wallet.history.get(bytes.fromhex(txid))
    assert record is not None
    return {i.outpoint for i in record.tx.inputs}


# ----------------------------------------------------------------------------- locking


async def test_inputs_stay_locked_when_the_mempool_is_lost_and_resubmission_restores(
    node: Node,
) -> None:
    rpc = await funded(node)
    payee = key(7).address(REGTEST.address_prefix)
    first = await rpc("sendtoaddress", payee, 10**8)
    balance = await rpc("getbalance")
    lose_mempool(node)
    # The lost payment's coin is still held back: the balance does not grow back.
    assert await rpc("getbalance") == balance
    second = await rpc("sendtoaddress", payee, 10**8)
    assert not inputs_of(node, first) & inputs_of(node, second)
    assert node.resubmit_wallet_transactions()["accepted"] == 1
    assert set(await rpc("getrawmempool")) == {first, second}
    await rpc("generatetoaddress", 1, payee)
    for txid in (first, second):
        assert (await rpc("gettransaction", txid))["status"] == "confirmed"
    # Confirmed: nothing pending, nothing locked.
    assert node.wallet.locked_outpoints(node.chain) == set()


async def test_a_conflicting_confirmed_spend_unlocks_and_settles_the_payment(node: Node) -> None:
    rpc = await funded(node)
    payee = key(7).address(REGTEST.address_prefix)
    txid = await rpc("sendtoaddress", payee, 10**8)
    record = node.wallet.history.get(bytes.fromhex(txid))
    assert record is not None
    lose_mempool(node)
    # Someone (the wallet's owner elsewhere) spends the same coin, and it confirms.
    total = sum(o.amount for o in record.tx.outputs)
    conflict = Transaction(record.tx.inputs, [TxOut(total - 1000, record.tx.outputs[0].pkh)])
    result = sign_with_wallet(node.wallet, conflict, coin_lookup(node.chain, node.mempool))
    assert result.complete
    signed = result.tx
    await rpc("generateblock", payee, [signed.encode().hex()])
    assert (await rpc("gettransaction", txid))["status"] == "conflicted"
    assert node.wallet.locked_outpoints(node.chain) == set()
    assert node.resubmit_wallet_transactions() == {"accepted": 0, "announced": 0, "refused": 0}


async def test_resubmitted_at_start_up_when_the_mempool_file_lacks_it(tmp_path: Path) -> None:
    node = make_node(tmp_path / "n")
    await node.start()
    rpc = await funded(node)
    txid = await rpc("sendtoaddress", key(7).address(REGTEST.address_prefix), 5000)
    await node.stop()
    (tmp_path / "n" / MEMPOOL_FILE).unlink()  # as if killed before the periodic save
    node = make_node(tmp_path / "n")
    await node.start()
    try:
        assert await Rpc(node)("getrawmempool") == [txid]
    finally:
        await node.stop()


# ----------------------------------------------------------------------------- abandon


async def test_abandontransaction(node: Node) -> None:
    rpc = await funded(node)
    payee = key(7).address(REGTEST.address_prefix)
    txid = await rpc("sendtoaddress", payee, 10**8)
    err = await rpc.error("abandontransaction", txid)
    assert err.code == RPC_INVALID_PARAMETER and "in the mempool" in err.message
    lose_mempool(node)
    locked = node.wallet.locked_outpoints(node.chain)
    assert locked == inputs_of(node, txid)
    assert await rpc("abandontransaction", txid) is None
    assert node.wallet.locked_outpoints(node.chain) == set()
    status = await rpc("gettransaction", txid)
    assert status["abandoned"] is True and status["status"] in ("unknown", "conflicted")
    err = await rpc.error("abandontransaction", txid)
    assert "abandoned already" in err.message
    # Persisted, and no longer resubmitted.
    reopened = Wallet.open(node.datadir, REGTEST)
    record = reopened.history.get(bytes.fromhex(txid))
    assert record is not None and record.abandoned
    assert node.resubmit_wallet_transactions()["accepted"] == 0
    # Its coin may now be spent again.
    again = await rpc("sendtoaddress", payee, 10**8)
    assert inputs_of(node, again) & locked
    await rpc("generatetoaddress", 1, payee)
    err = await rpc.error("abandontransaction", again)
    assert "confirmed" in err.message
    err = await rpc.error("abandontransaction", "ab" * 32)
    assert err.code == RPC_INVALID_ADDRESS_OR_KEY


def test_abandon_takes_the_wallets_descendants_along() -> None:
    history = TxHistory()
    parent = payment(1)
    child_tx = Transaction([TxIn(parent.tx.txid, 1, b"", b"")], parent.tx.outputs[:1])
    history.add(parent, lambda tx: False)
    history.add(WalletTx(child_tx, 2, sent=True), lambda tx: False)
    assert history.abandon(parent.tx.txid) == [parent.tx.txid, child_tx.txid]
    assert history.pending(lambda tx: False) == []


def payment(n: int) -> WalletTx:
    tx = Transaction(
        [TxIn(bytes([n]) * 32, 0, b"", b"")], [TxOut(100, b"\x02" * 20), TxOut(50, b"\x03" * 20)]
    )
    return WalletTx(tx, n, sent=True, change_vout=1)


def test_the_history_bound_forgets_settled_transactions_never_pending_ones() -> None:
    history = TxHistory(limit=3)
    records = [payment(n) for n in range(1, 6)]
    settled = {records[0].tx.txid}
    is_settled = lambda tx: tx.txid in settled  # noqa: E731
    for record in records[:3]:
        history.add(record, is_settled)
    history.add(records[3], is_settled)  # the settled one goes
    assert records[0].tx.txid not in history and len(history) == 3
    with pytest.raises(WalletError, match="MAX_WALLET_TXS"):
        history.add(records[4], is_settled)
    assert len(history) == 3


# ----------------------------------------------------------------------------- write failures


def fill_disk(monkeypatch: Any) -> None:
    """Every file write of the node fails as on a full disk (SQLite aside)."""

    def full(*_: Any) -> None:
        raise FULL

    monkeypatch.setattr("node.wallet_file.write_atomic", full)
    monkeypatch.setattr("node.daemon.write_atomic", full)
    monkeypatch.setattr(os, "pwrite", full)


async def test_a_wallet_write_failure_sends_nothing(node: Node, monkeypatch: Any) -> None:
    rpc = await funded(node)
    before = node.wallet.path.read_bytes(), node.wallet.journal.path.read_bytes()
    fill_disk(monkeypatch)
    err = await rpc.error("sendtoaddress", key(7).address(REGTEST.address_prefix), 5000)
    assert err.code == RPC_WALLET_ERROR and "nothing was sent" in err.message
    assert "No space left" in err.message
    assert await rpc("getrawmempool") == []
    assert len(node.wallet.history) == 0 or all(
        not r.sent for r in node.wallet.history.records.values()
    )
    assert (node.wallet.path.read_bytes(), node.wallet.journal.path.read_bytes()) == before
    assert node.wallet.locked_outpoints(node.chain) == set()


async def test_a_refused_payment_is_dropped_and_its_inputs_freed(
    node: Node, monkeypatch: Any
) -> None:
    rpc = await funded(node)

    def refuse(tx: Any) -> None:
        raise ConsensusError("test-refusal", "refused on purpose")

    monkeypatch.setattr(node, "submit_transaction", refuse)
    err = await rpc.error("sendtoaddress", key(7).address(REGTEST.address_prefix), 5000)
    assert err.code == RPC_VERIFY_REJECTED and "test-refusal" in err.message
    assert not any(r.sent for r in node.wallet.history.records.values())
    assert not any(r.sent for r in Wallet.open(node.datadir, REGTEST).history.records.values())
    assert node.wallet.locked_outpoints(node.chain) == set()


async def test_a_failure_after_acceptance_still_returns_the_txid(
    node: Node, monkeypatch: Any
) -> None:
    rpc = await funded(node)
    real = node.submit_transaction

    def accept_then_fail(tx: Any) -> Any:
        real(tx)
        raise FULL

    monkeypatch.setattr(node, "submit_transaction", accept_then_fail)
    txid = await rpc("sendtoaddress", key(7).address(REGTEST.address_prefix), 5000)
    assert await rpc("getrawmempool") == [txid]
    assert bytes.fromhex(txid) in node.wallet.history
    warnings = (await rpc("getblockchaininfo"))["warnings"]
    assert txid in warnings and "No space left" in warnings


async def test_a_store_failure_during_generate_reports_the_committed_blocks(
    node: Node, monkeypatch: Any
) -> None:
    rpc = Rpc(node)
    address = await rpc("getnewaddress")
    real_apply = node.store.apply
    calls = {"n": 0}

    def apply_then_fill(update: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise FULL
        real_apply(update)

    monkeypatch.setattr(node.store, "apply", apply_then_fill)
    err = await rpc.error("generatetoaddress", 10, address)
    assert err.code == RPC_MISC_ERROR
    assert err.message.startswith("3 of 10 blocks were committed before a failure")
    committed = err.data["committed"]
    assert len(committed) == 3
    assert [node.chain.at_height(h).hash.hex() for h in (1, 2, 3)] == committed
    assert node.failure is not None and node._stop_event.is_set()


async def test_a_stop_on_a_full_disk_removes_runtime_files_and_says_what_was_lost(
    node: Node, monkeypatch: Any
) -> None:
    datadir = node.datadir
    for name in (".cookie", "rpc.url", "p2p.addr"):
        assert (datadir / name).exists()
    # A block that pays someone else: the wallet's scan marker moves, in memory only.
    await Rpc(node)("generatetoaddress", 1, key(7).address(REGTEST.address_prefix))
    fill_disk(monkeypatch)
    await node.stop()
    for name in (".cookie", "rpc.url", "p2p.addr"):
        assert not (datadir / name).exists()
    assert {u.split(" ")[0] for u in node.unsaved} == {"peers", "mempool", "wallet"}
    message = stop_message(node.failure, node.unsaved)
    assert "\n" not in message and "could not save peers" in message
    assert "mempool (" in message and "No space left" in message


# ----------------------------------------------------------------------------- listtransactions


async def test_listtransactions_categories_order_and_paging(node: Node) -> None:
    rpc = await funded(node, mature=2)
    own = await rpc("getnewaddress")
    other = key(7).address(REGTEST.address_prefix)
    paid = await rpc("sendtoaddress", other, 7000)
    to_self = await rpc("sendtoaddress", own, 3000)
    everything = await rpc("listtransactions", "*", 10_000)
    categories = [e["category"] for e in everything]
    # Spendable (the wallet's rule: confirmations >= maturity) is "generate".
    assert categories.count("generate") == 3 and categories.count("immature") == MATURITY - 1
    send = [e for e in everything if e["txid"] == paid]
    assert [(e["category"], e["amount"], e["address"]) for e in send] == [("send", -7000, other)]
    assert send[0]["fee"] < 0 and send[0]["status"] == "mempool"
    assert send[0]["confirmations"] == 0 and send[0]["abandoned"] is False
    mine = sorted((e["category"], e["amount"]) for e in everything if e["txid"] == to_self)
    assert mine == [("receive", 3000), ("send", -3000)]
    # Newest last, count and skip from the newest end.
    assert [e["txid"] for e in everything[-3:]] == [paid, to_self, to_self]
    last_two = await rpc("listtransactions", "*", 2)
    assert last_two == everything[-2:]
    assert await rpc("listtransactions", "*", 2, 1) == everything[-3:-1]
    assert await rpc("listtransactions", "*", 0) == []
    assert await rpc("listtransactions", "", 1) == everything[-1:]
    assert await rpc("listtransactions", "no-such-label") == []
    assert len(await rpc("listtransactions")) == 10
    # Confirmed: block fields appear; a block reward whose block leaves the chain is orphan.
    tip = await rpc("generatetoaddress", 1, own)
    confirmed = [e for e in await rpc("listtransactions", "*", 10_000) if e["txid"] == paid]
    assert confirmed[0]["blockhash"] == tip[0] and confirmed[0]["confirmations"] == 1
    await rpc("invalidateblock", tip[0])
    reward = [
        e for e in await rpc("listtransactions", "*", 10_000) if e.get("category") == "orphan"
    ]
    assert len(reward) == 1 and reward[0]["confirmations"] <= 0


async def test_received_payments_seen_while_down_are_found_by_the_start_up_rescan(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path / "n")
    await node.start()
    rpc = await funded(node, mature=1)
    # The scan marker as a kill -9 may leave it: far behind the tip.
    node.wallet.scanned = None
    node.wallet.history.records.clear()
    node.wallet.save()
    node.wallet.scanned = (node.chain.height, node.chain.tip.hash)
    node.wallet.flush = lambda: None  # type: ignore[method-assign]  # the kill: nothing more
    await node.stop()
    node = make_node(tmp_path / "n")
    await node.start()
    try:
        rpc = Rpc(node)
        entries = await rpc("listtransactions", "*", 10_000)
        assert len(entries) == MATURITY + 1
        assert node.wallet.scanned == (node.chain.height, node.chain.tip.hash)
    finally:
        await node.stop()


# ----------------------------------------------------------------------------- wallet.dat


async def test_a_version_1_wallet_opens_and_keeps_its_sent_payments(tmp_path: Path) -> None:
    node = make_node(tmp_path / "n")
    await node.start()
    rpc = await funded(node, mature=1)
    payee = key(7).address(REGTEST.address_prefix)
    txid = await rpc("sendtoaddress", payee, 4000)
    await node.stop()
    # The same wallet as version 1 wrote it: keys and sent payments only, no journal.
    wallet = Wallet.open(tmp_path / "n", REGTEST)
    v1 = {
        "version": 1,
        "network": REGTEST.name,
        "keys": [k.seed for k in wallet.keys.values()],
        "txs": {t: [r.raw, r.time] for t, r in wallet.history.records.items() if r.sent},
    }
    path = tmp_path / "n" / WALLET_FILE
    path.write_bytes(msgpack.packb(v1, use_bin_type=True))
    wallet.journal.path.unlink()
    node = make_node(tmp_path / "n")
    await node.start()
    try:
        rpc = Rpc(node)
        record = node.wallet.history.get(bytes.fromhex(txid))
        assert record is not None and record.sent and record.change_vout == 1
        assert node.wallet.locked_outpoints(node.chain) == inputs_of(node, txid)
        entries = await rpc("listtransactions", "*", 10_000)
        assert [e["category"] for e in entries if e["txid"] == txid] == ["send"]
        # The rescan from genesis found the block rewards the old file never listed.
        assert sum(e["category"] in ("generate", "immature") for e in entries) == MATURITY + 1
        node.wallet.save()
        assert msgpack.unpackb(path.read_bytes())["version"] == WALLET_VERSION
    finally:
        await node.stop()


def test_wallet_files_from_the_future_or_another_network_are_refused(tmp_path: Path) -> None:
    path = tmp_path / WALLET_FILE
    for data, why in (
        ({"version": WALLET_VERSION + 1, "network": REGTEST.name, "keys": []}, "unknown wallet"),
        ({"version": WALLET_VERSION, "network": "testnet", "keys": []}, "network"),
    ):
        path.write_bytes(msgpack.packb(data, use_bin_type=True))
        with pytest.raises(WalletError, match=why):
            Wallet.open(tmp_path, REGTEST)


# ----------------------------------------------------------------------------- hostile params


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("listtransactions", ["*", -1], RPC_INVALID_PARAMETER),
        ("listtransactions", ["*", 1, -1], RPC_INVALID_PARAMETER),
        ("listtransactions", ["*", "ten"], INVALID_PARAMS),
        ("listtransactions", [5], INVALID_PARAMS),
        ("listtransactions", ["*", 1, 0, 0, 0], INVALID_PARAMS),
        ("listtransactions", ["*", True], INVALID_PARAMS),
        ("abandontransaction", [], INVALID_PARAMS),
        ("abandontransaction", [123], INVALID_PARAMS),
        ("abandontransaction", ["zz"], RPC_INVALID_PARAMETER),
        ("abandontransaction", ["00" * 31], RPC_INVALID_PARAMETER),
        ("abandontransaction", ["00" * 32], RPC_INVALID_ADDRESS_OR_KEY),
        ("generatetoaddress", [-1, "x"], RPC_INVALID_PARAMETER),
    ],
)
async def test_hostile_params_get_clear_errors(
    node: Node, method: str, params: list[Any], code: int
) -> None:
    err = await Rpc(node).error(method, *params)
    assert err.code == code and err.message
    assert await Rpc(node)("getblockcount") == 0


async def test_a_failed_wallet_save_after_a_block_is_a_warning_until_a_save_succeeds(
    node: Node, monkeypatch: Any
) -> None:
    rpc = Rpc(node)
    address = await rpc("getnewaddress")
    keys = dict(node.wallet.keys)

    def full(*_: Any) -> None:
        raise FULL

    with monkeypatch.context() as patch:
        patch.setattr(node.wallet.journal, "append", full)
        await rpc("generatetoaddress", 1, address)  # a reward of ours: the wallet must save
        assert "could not save the wallet" in (await rpc("getblockchaininfo"))["warnings"]
        err = await rpc.error("getnewaddress")
        assert err.code == RPC_WALLET_ERROR and "no address was made" in err.message
        assert node.wallet.keys == keys
    await rpc("generatetoaddress", 1, address)
    assert (await rpc("getblockchaininfo"))["warnings"] == ""
    assert len(await rpc("listtransactions", "*", 100)) == 2


async def test_the_rebroadcast_task_runs_at_the_configured_interval_and_survives_a_failure(
    tmp_path: Path, monkeypatch: Any
) -> None:
    config = NodeConfig(
        datadir=tmp_path / "n",
        p2p_bind="127.0.0.1:0",
        rpc_bind="127.0.0.1:0",
        wallet_rebroadcast_interval=0.01,
    )
    node = Node(config, REGTEST)
    calls: list[int] = []

    def resubmit() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("one bad round")  # logged; the task goes on

    monkeypatch.setattr(node, "resubmit_wallet_transactions", resubmit)
    await node.start()
    try:
        await wait_until_async(lambda: len(calls) >= 3, 10, "rebroadcast rounds after a failure")
    finally:
        await node.stop()


# ----------------------------------------------------------------------------- wallet.log


def test_the_journal_ignores_a_torn_tail_and_cuts_it_off_before_appending(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "wallet.log")
    journal.append([{"drop": b"a"}, {"drop": b"b"}])
    whole = journal.size
    with open(journal.path, "ab") as fh:
        fh.write(b"\x00\x00\x01\x00torn")  # a frame a crash cut short
    reread = Journal(journal.path)
    assert reread.read() == [{"drop": b"a"}, {"drop": b"b"}] and reread.size == whole
    reread.append([{"drop": b"c"}])
    assert [e["drop"] for e in Journal(journal.path).read()] == [b"a", b"b", b"c"]


def test_a_journal_append_that_fills_the_disk_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: Any
) -> None:
    journal = Journal(tmp_path / "wallet.log")
    journal.append([{"drop": b"a"}])
    before = journal.path.read_bytes()
    real = os.pwrite

    def half_then_full(fd: int, data: bytes, offset: int) -> int:
        if len(data) > 4:
            return real(fd, data[: len(data) // 2], offset)
        raise FULL

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(OSError):
        journal.append([{"drop": b"b" * 100}])
    monkeypatch.undo()
    assert journal.path.read_bytes() == before
    journal.append([{"drop": b"c"}])
    assert [e["drop"] for e in Journal(journal.path).read()] == [b"a", b"c"]


async def test_payments_append_to_the_journal_and_a_large_one_is_folded_into_wallet_dat(
    node: Node, monkeypatch: Any
) -> None:
    rpc = await funded(node)
    snapshot = node.wallet.path.read_bytes()
    payee = key(7).address(REGTEST.address_prefix)
    txid = await rpc("sendtoaddress", payee, 5000)
    # An append, not a rewrite: wallet.dat is untouched, the journal holds the payment.
    assert node.wallet.path.read_bytes() == snapshot
    assert any(
        e.get("tx", {}).get("raw") == node.wallet.known_tx(bytes.fromhex(txid))
        for e in Journal(node.wallet.journal.path).read()
    )
    monkeypatch.setattr("node.wallet.MAX_JOURNAL_BYTES", 0)
    second = await rpc("sendtoaddress", payee, 6000)
    assert node.wallet.journal.path.stat().st_size == 0
    reopened = Wallet.open(node.datadir, REGTEST)
    assert {txid, second} <= {t.hex() for t in reopened.history.records}
    assert reopened.keys.keys() == node.wallet.keys.keys()


async def test_a_crash_between_wallet_dat_and_emptying_the_journal_replays_harmlessly(
    node: Node, monkeypatch: Any
) -> None:
    rpc = await funded(node)
    payee = key(7).address(REGTEST.address_prefix)
    txid = await rpc("sendtoaddress", payee, 5000)
    lose_mempool(node)
    await rpc("abandontransaction", txid)
    monkeypatch.setattr(node.wallet.journal, "clear", lambda: None)
    node.wallet.save()  # wallet.dat has it all; the journal still does too
    reopened = Wallet.open(node.datadir, REGTEST)
    assert reopened.history.records.keys() == node.wallet.history.records.keys()
    record = reopened.history.get(bytes.fromhex(txid))
    assert record is not None and record.abandoned
    assert reopened.scanned == node.wallet.scanned
