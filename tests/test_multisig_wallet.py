"""Multisig through the wallet and its RPCs, in process: three wallets (each behind its own RPC
registry) share one chain and mempool, as three nodes of one network would. A 2-of-3 coin is
signed in turn and in parallel (combinerawtransaction), and every bad input gets a clear error.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.coins import Coin
from consensus.keys import PrivateKey, pubkey_hash
from consensus.mempool import Mempool
from consensus.multisig import MAX_MULTISIG_KEYS, MultisigScript
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, decode_transaction
from consensus.validation import check_transaction, check_tx_signatures
from node import wallet_multisig
from node.config import NodeConfig
from node.rpc.errors import (
    INVALID_PARAMS,
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_ERROR,
    RPCError,
)
from node.rpc.methods import build_registry
from node.wallet import WALLET_FILE, Wallet
from tests.helpers import ChainBuilder, key, regtest

PARAMS = regtest(coinbase_maturity=1)
DETERMINISTIC = settings(
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEE = 100_000
FUNDING = 10 * 10**8


class Net:
    """One chain and mempool; a node (wallet + RPC registry) per name."""

    def __init__(self, tmp_path: Path) -> None:
        self.b = ChainBuilder(PARAMS)
        self.mempool = Mempool(PARAMS)
        self.tmp = tmp_path
        self.nodes: dict[str, Any] = {}
        for name in ("a", "b", "c"):
            self.add(name)

    def add(self, name: str) -> None:
        (self.tmp / name).mkdir(exist_ok=True)
        node = types.SimpleNamespace(
            params=PARAMS,
            config=NodeConfig(datadir=self.tmp / name),
            wallet=Wallet.open(self.tmp / name, PARAMS),
            chain=self.b.chain,
            mempool=self.mempool,
            now=lambda: self.b.now,
            watch=lambda txid: None,
        )
        node.submit_transaction = lambda tx: self.mempool.accept(tx, self.b.chain, self.b.now)
        node.registry = build_registry(node)  # type: ignore[arg-type]
        self.nodes[name] = node

    def rpc(self, name: str, method: str, *params: Any) -> Any:
        return asyncio.run(self.nodes[name].registry.call(method, list(params)))

    def error(self, name: str, method: str, *params: Any) -> RPCError:
        with pytest.raises(RPCError) as info:
            self.rpc(name, method, *params)
        return info.value

    def mine(self, txs: list[Any] | None = None, payout: bytes | None = None) -> None:
        """One block with `txs` (default: the whole mempool), followed by the mempool."""
        if txs is None:
            txs = [self.mempool.get(t).tx for t in self.mempool.txids()]
        block = self.b.block(txs=txs, payout=payout)
        result = self.b.accept(block)
        assert result.status == "connected", result.reason
        self.mempool.update_for_chain(result, self.b.chain, self.b.now)

    def mine_mempool(self) -> None:
        self.mine()
        assert not self.mempool.txids()

    def pubkey(self, name: str) -> str:
        address = self.rpc(name, "getnewaddress")
        info = self.rpc(name, "getaddressinfo", address)
        assert info["ismine"] and not info["iswatchonly"] and not info["isscript"]
        return str(info["pubkey"])

    def fund(self, name: str, address: str, amount: int = FUNDING) -> OutPoint:
        """Mine a coinbase to `name`'s wallet, then pay `amount` from it to `address`."""
        wallet = self.nodes[name].wallet
        for _ in range(2):
            self.mine([], payout=wallet.default_pkh())
        tx = wallet.create_payment(self.b.chain, self.mempool, wallet.decode(address), amount)
        self.mempool.accept(tx, self.b.chain, self.b.now)
        self.mine_mempool()
        return OutPoint(tx.txid, 0)


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path)


def escrow(net: Net) -> tuple[dict[str, Any], list[str]]:
    keys = [net.pubkey(name) for name in ("a", "b", "c")]
    created = net.rpc("a", "createmultisig", 2, keys)
    for name in ("a", "b", "c"):
        assert net.rpc(name, "addmultisigaddress", 2, keys) == created
    return created, keys


def spend_raw(net: Net, coin: OutPoint, to: str = "") -> str:
    to = to or net.rpc("c", "getnewaddress")
    return str(
        net.rpc(
            "a",
            "createrawtransaction",
            [{"txid": coin.txid.hex(), "vout": coin.index}],
            {to: FUNDING - FEE},
        )
    )


def test_two_of_three_escrow_signed_in_turn_and_in_parallel(net: Net) -> None:
    created, keys = escrow(net)
    script = MultisigScript.build(2, [bytes.fromhex(k) for k in keys])
    assert created["redeemScript"] == script.encode().hex()
    assert created["descriptor"] == f"multi(2,{','.join(keys)})"
    address = created["address"]
    info = net.rpc("b", "getaddressinfo", address)
    assert info["isscript"] and info["iswatchonly"] and not info["ismine"]
    assert info["pubkeys"] == keys and info["sigsrequired"] == 2 and info["keysheld"] == 1
    assert net.rpc("b", "validateaddress", address) == {
        "isvalid": True,
        "address": address,
        "ismine": False,
    }
    assert info["hex"] == created["redeemScript"] and info["solvable"]

    coin = net.fund("a", address)
    [listed] = [u for u in net.rpc("b", "listunspent") if u["address"] == address]
    assert listed["amount"] == FUNDING and listed["solvable"] and not listed["spendable"]
    assert listed["redeemScript"] == created["redeemScript"]
    assert net.rpc("b", "getbalance") == 0  # only what the wallet can spend alone

    # In turn: a signs (incomplete, its slot kept in hex), b completes.
    raw = spend_raw(net, coin)
    first = net.rpc("a", "signrawtransactionwithwallet", raw)
    assert first["complete"] is False
    assert "1 of the 2" in first["errors"][0]["error"]
    assert net.rpc("a", "decoderawtransaction", first["hex"])["vin"][0]["signatures"] == 1
    # Signing again with the same wallet adds nothing.
    again = net.rpc("a", "signrawtransactionwithwallet", first["hex"])
    assert again["complete"] is False and again["hex"] == first["hex"]
    error = net.error("a", "sendrawtransaction", first["hex"])
    assert error.code == RPC_VERIFY_REJECTED and "bad-multisig-too-few-signatures" in error.message
    done = net.rpc("b", "signrawtransactionwithwallet", first["hex"])
    assert done["complete"] is True and done["errors"] == []
    # c holds the third key but never adds a third signature: at most m slots.
    assert net.rpc("c", "signrawtransactionwithwallet", done["hex"])["hex"] == done["hex"]
    txid = net.rpc("c", "sendrawtransaction", done["hex"])
    net.mine_mempool()
    assert net.b.chain.coin(OutPoint(bytes.fromhex(txid), 0)) is not None

    # In parallel: a and c sign the same unsigned transaction; combine merges them.
    coin2 = net.fund("b", address)
    raw2 = spend_raw(net, coin2)
    by_a = net.rpc("a", "signrawtransactionwithwallet", raw2)["hex"]
    by_c = net.rpc("c", "signrawtransactionwithwallet", raw2)["hex"]
    assert net.rpc("b", "combinerawtransaction", [by_a, by_a]) == by_a
    merged = net.rpc("b", "combinerawtransaction", [by_a, raw2, by_c])
    tx = decode_transaction(bytes.fromhex(merged), PARAMS.max_block_size)
    assert [bool(s) for s in tx.inputs[0].signature_slots] == [True, False, True]
    assert net.rpc("a", "sendrawtransaction", merged) == tx.txid.hex()
    # b's signature as well: a combine of all three still fills only m = 2 slots.
    by_b = net.rpc("b", "signrawtransactionwithwallet", raw2)["hex"]
    three = net.rpc("b", "combinerawtransaction", [by_c, by_b, by_a])
    slots = decode_transaction(bytes.fromhex(three), PARAMS.max_block_size).inputs[0]
    assert [bool(s) for s in slots.signature_slots] == [True, True, False]


def test_inputs_of_different_owners_sign_in_any_order(net: Net) -> None:
    """One transaction spending a's own coin and the escrow coin: a signs both of its parts,
    then b its slot, and a's earlier signatures stay valid."""
    created, _ = escrow(net)
    coin = net.fund("c", created["address"])
    own = net.fund("a", net.rpc("a", "getnewaddress"))
    raw = net.rpc(
        "b",
        "createrawtransaction",
        [{"txid": coin.txid.hex(), "vout": 0}, {"txid": own.txid.hex(), "vout": 0}],
        {net.rpc("b", "getnewaddress"): 2 * FUNDING - FEE},
    )
    by_b = net.rpc("b", "signrawtransactionwithwallet", raw)
    assert not by_b["complete"] and len(by_b["errors"]) == 2
    by_a = net.rpc("a", "signrawtransactionwithwallet", by_b["hex"])
    assert by_a["complete"], by_a["errors"]
    net.rpc("b", "sendrawtransaction", by_a["hex"])


def test_a_wallet_holding_m_keys_spends_alone_and_its_watch_persists(
    net: Net, tmp_path: Path
) -> None:
    keys = [net.pubkey("a"), net.pubkey("a"), net.pubkey("b")]
    own_address = net.rpc("a", "getnewaddress")
    own_key = net.rpc("a", "getaddressinfo", own_address)["pubkey"]
    # A key may be named by one of the wallet's own addresses.
    created = net.rpc("a", "addmultisigaddress", 2, [keys[0], own_address, keys[2]])
    assert created == net.rpc("b", "createmultisig", 2, [keys[0], own_key, keys[2]])
    info = net.rpc("a", "getaddressinfo", created["address"])
    assert info["ismine"] and not info["iswatchonly"] and info["keysheld"] == 2
    assert net.rpc("a", "validateaddress", created["address"])["ismine"] is True
    coin = net.fund("a", created["address"])
    [listed] = [u for u in net.rpc("a", "listunspent") if u["address"] == created["address"]]
    assert listed["spendable"]
    signed = net.rpc("a", "signrawtransactionwithwallet", spend_raw(net, coin))
    assert signed["complete"]
    net.rpc("a", "sendrawtransaction", signed["hex"])
    # Reopened from disk: still watched.
    reopened = Wallet.open(tmp_path / "a", PARAMS)
    assert set(reopened.multisig) == set(net.nodes["a"].wallet.multisig)
    # b never ran addmultisigaddress for this one: unknown, neither mine nor watched.
    unknown = net.rpc("b", "getaddressinfo", created["address"])
    assert unknown == {
        "address": created["address"],
        "ismine": False,
        "iswatchonly": False,
        "isscript": False,
        "solvable": False,
    }


def test_wallet_files_without_multisig_still_load(tmp_path: Path) -> None:
    wallet = Wallet.open(tmp_path, PARAMS)
    wallet.new_address()
    data = msgpack.unpackb((tmp_path / WALLET_FILE).read_bytes())
    assert data["multisig"] == []
    del data["multisig"]
    (tmp_path / WALLET_FILE).write_bytes(msgpack.packb(data, use_bin_type=True))
    again = Wallet.open(tmp_path, PARAMS)
    assert again.multisig == {} and set(again.keys) == set(wallet.keys)


def test_the_number_of_watched_scripts_is_bounded(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wallet_multisig, "MAX_WATCHED_SCRIPTS", 2)
    keys = [k.public_key.hex() for k in (key(0), key(1), key(2))]
    net.rpc("a", "addmultisigaddress", 1, keys)
    net.rpc("a", "addmultisigaddress", 2, keys)
    net.rpc("a", "addmultisigaddress", 2, keys)  # already watched: no new entry
    error = net.error("a", "addmultisigaddress", 3, keys)
    assert error.code == RPC_WALLET_ERROR and "limit" in error.message
    assert len(net.nodes["a"].wallet.multisig) == 2


# ------------------------------------------------------------------ hostile input

K = [key(n).public_key.hex() for n in range(4)]


@pytest.mark.parametrize("method", ["createmultisig", "addmultisigaddress"])
@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ((3, K[:2]), RPC_INVALID_PARAMETER, "nrequired must be between 1 and"),
        ((0, K[:2]), RPC_INVALID_PARAMETER, "nrequired must be between 1 and"),
        ((-1, K[:2]), RPC_INVALID_PARAMETER, "nrequired"),
        ((2, [K[0], K[1], K[0]]), RPC_INVALID_PARAMETER, "duplicate"),
        ((1, [K[0]] * 17), RPC_INVALID_PARAMETER, "1 to 16 keys"),
        ((1, [K[0]] * 100_000), RPC_INVALID_PARAMETER, "1 to 16 keys"),
        ((1, []), RPC_INVALID_PARAMETER, "1 to 16 keys"),
        ((1, [K[0][:62]]), RPC_INVALID_ADDRESS_OR_KEY, ""),
        ((1, [K[0] + "00"]), RPC_INVALID_ADDRESS_OR_KEY, ""),
        ((1, ["zz" * 32]), RPC_INVALID_ADDRESS_OR_KEY, "not hex"),
        # The identity point (anyone's signature verifies), an order-8 point, and the identity
        # spelled non-canonically (y = p + 1).
        ((1, [K[0], "01" + "00" * 31]), RPC_INVALID_ADDRESS_OR_KEY, "small order"),
        ((1, [K[0], "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"]),
         RPC_INVALID_ADDRESS_OR_KEY, "small order"),
        ((1, [K[0], "ee" + "ff" * 30 + "7f"]), RPC_INVALID_ADDRESS_OR_KEY, "non-canonical"),
        ((1, K[0]), INVALID_PARAMS, "list"),
        ((1, [1, 2]), INVALID_PARAMS, ""),
        (("2", K[:2]), INVALID_PARAMS, ""),
        ((2.5, K[:2]), INVALID_PARAMS, ""),
        ((None, K[:2]), INVALID_PARAMS, ""),
        ((1,), INVALID_PARAMS, ""),
        ((1, K[:1], "extra"), INVALID_PARAMS, ""),
    ],
)
def test_bad_multisig_parameters_get_clear_errors(
    net: Net, method: str, args: tuple[Any, ...], code: int, words: str
) -> None:
    error = net.error("a", method, *args)
    assert error.code == code and words in error.message, error
    assert net.nodes["a"].wallet.multisig == {}


def test_addresses_that_are_not_the_wallets_are_refused(net: Net) -> None:
    stranger = net.rpc("b", "getnewaddress")
    error = net.error("a", "addmultisigaddress", 1, [K[0], stranger])
    assert error.code == RPC_WALLET_ERROR and "not an address of this wallet" in error.message
    error = net.error("a", "addmultisigaddress", 1, [K[0], "rpow1nonsense"])
    assert error.code == RPC_INVALID_ADDRESS_OR_KEY
    for garbage in ("", "x" * 10_000, "tpow1" + "q" * 39, K[0]):
        assert net.error("a", "getaddressinfo", garbage).code == RPC_INVALID_ADDRESS_OR_KEY
    assert net.error("a", "getaddressinfo", 5).code == INVALID_PARAMS
    assert net.error("a", "getaddressinfo").code == INVALID_PARAMS


def test_combine_refuses_other_transactions_and_drops_bad_signatures(net: Net) -> None:
    created, _ = escrow(net)
    coin = net.fund("a", created["address"])
    raw = spend_raw(net, coin)
    other = spend_raw(net, coin)  # another payee: another transaction
    by_a = net.rpc("a", "signrawtransactionwithwallet", raw)["hex"]
    error = net.error("a", "combinerawtransaction", [by_a, other])
    assert error.code == RPC_INVALID_PARAMETER and "not the same transaction" in error.message
    for bad, code in (
        ([], RPC_INVALID_PARAMETER),
        ([by_a] * (wallet_multisig.MAX_COMBINE_TRANSACTIONS + 1), RPC_INVALID_PARAMETER),
        (["nothex"], RPC_DESERIALIZATION_ERROR),
        (["c0ffee"], RPC_DESERIALIZATION_ERROR),
        (by_a, INVALID_PARAMS),
        ([1], INVALID_PARAMS),
    ):
        assert net.error("a", "combinerawtransaction", bad).code == code
    # A signature by a key outside the set, put into b's slot: combine drops it, and a
    # transaction carrying it is refused.
    tx = decode_transaction(bytes.fromhex(by_a), PARAMS.max_block_size)
    digest = tx.sighash(PARAMS.genesis_hash)
    slots = list(tx.inputs[0].signature_slots)
    slots[1] = key(3).sign(digest)
    forged = tx.with_inputs([tx.inputs[0]._replace(signature_slots=tuple(slots))]).encode().hex()
    assert net.rpc("a", "combinerawtransaction", [forged]) == by_a
    error = net.error("a", "sendrawtransaction", forged)
    assert error.code == RPC_VERIFY_REJECTED and "bad-txns-bad-signature" in error.message
    # b's signing wallet drops the forged slot and fills it with b's real signature.
    fixed = net.rpc("b", "signrawtransactionwithwallet", forged)
    assert fixed["complete"]
    net.rpc("b", "sendrawtransaction", fixed["hex"])


def test_signing_reports_inputs_it_cannot_sign(net: Net) -> None:
    created, _ = escrow(net)
    coin = net.fund("a", created["address"])
    raw = spend_raw(net, coin)
    # d watches nothing and holds none of the keys.
    net.add("d")
    result = net.rpc("d", "signrawtransactionwithwallet", raw)
    assert not result["complete"] and result["hex"] == raw
    assert "no key or script" in result["errors"][0]["error"]
    missing = net.rpc(
        "a",
        "createrawtransaction",
        [{"txid": "11" * 32, "vout": 0}],
        {created["address"]: 1_000},
    )
    result = net.rpc("a", "signrawtransactionwithwallet", missing)
    assert result["errors"][0]["error"] == "Input not found or already spent"
    assert net.error("a", "signrawtransactionwithwallet", "zz").code == RPC_DESERIALIZATION_ERROR
    # A fully signed multisig input that d cannot sign is reported complete.
    done = net.rpc(
        "b",
        "signrawtransactionwithwallet",
        net.rpc("a", "signrawtransactionwithwallet", raw)["hex"],
    )["hex"]
    assert net.rpc("d", "signrawtransactionwithwallet", done) == {
        "hex": done,
        "complete": True,
        "errors": [],
    }


@pytest.mark.parametrize(
    ("header", "keys", "slots"),
    [
        ((1, 17), [K[0]] * 17, 17),  # n > 16
        ((3, 2), K[:2], 2),  # m > n
        ((0, 2), K[:2], 2),  # m < 1
        ((1, 2), [K[0], K[0]], 2),  # duplicate keys
        ((1, 3), K[:2], 2),  # declares 3 keys, carries 2
        ((1, 2), K[:2], 3),  # a slot more than keys
    ],
)
def test_raw_transactions_with_bad_multisig_inputs_are_refused(
    net: Net, header: tuple[int, int], keys: list[str], slots: int
) -> None:
    def encode(script: bytes, slots: int) -> str:
        return str(
            msgpack.packb(
                [1, [[b"\x11" * 32, 0, script, [b""] * slots]], [[1_000, b"\x22" * 20]], 0],
                use_bin_type=True,
            ).hex()
        )

    # The same shape with a good script decodes: only the flaw makes the difference.
    good = bytes((1, 2)) + bytes.fromhex(K[0] + K[1])
    assert net.rpc("a", "decoderawtransaction", encode(good, 2))["vin"][0]["signatures"] == 0
    raw = encode(bytes(header) + b"".join(bytes.fromhex(k) for k in keys), slots)
    for method, args in (
        ("sendrawtransaction", [raw]),
        ("decoderawtransaction", [raw]),
        ("signrawtransactionwithwallet", [raw]),
        ("combinerawtransaction", [[raw]]),
    ):
        error = net.error("a", method, *args)
        assert error.code == RPC_DESERIALIZATION_ERROR and "TX decode failed" in error.message


# ------------------------------------------------------------------ signing across wallets

WALLETS = 3
NOBODY = WALLETS  # an owner index for keys no wallet holds
PROP_KEYS = tuple(PrivateKey(bytes([i + 1]) * 32) for i in range(MAX_MULTISIG_KEYS))


@DETERMINISTIC
@given(st.data())
def test_any_split_of_the_keys_across_wallets_signs_to_exactly_m(data: st.DataObject) -> None:
    """n keys spread over three wallets (some held by nobody); signed in turn in a random order,
    or in parallel and combined: the result has min(m, keys held) signatures, never more than
    m, and is complete, and valid by consensus, exactly when the wallets hold m keys between
    them."""
    n = data.draw(st.integers(1, MAX_MULTISIG_KEYS))
    m = data.draw(st.integers(1, n))
    owners = data.draw(st.lists(st.integers(0, NOBODY), min_size=n, max_size=n))
    script = MultisigScript.build(m, [k.public_key for k in PROP_KEYS[:n]])
    wallets = []
    for w in range(WALLETS):
        wallet = Wallet(Path("/nonexistent"), PARAMS)  # never saved: nothing touches the disk
        wallet.keys = {
            pubkey_hash(PROP_KEYS[i].public_key): PROP_KEYS[i] for i in range(n) if owners[i] == w
        }
        wallet.multisig = {script.script_hash: script}
        wallets.append(wallet)
    coin = Coin(10_000, script.script_hash, 1, False)
    prev = OutPoint(b"\x33" * 32, 0)
    unsigned = Transaction([TxIn(prev.txid, 0, b"", b"")], [TxOut(9_000, b"\x44" * 20)])
    held = sum(1 for o in owners if o != NOBODY)
    expected = min(m, held)

    def lookup(outpoint: OutPoint) -> Coin | None:
        return coin if outpoint == prev else None

    def valid(tx: Transaction) -> bool:
        try:
            check_transaction(tx, PARAMS)
            check_tx_signatures(tx, [coin], PARAMS.genesis_hash)
        except Exception:
            return False
        return True

    tx = unsigned
    for w in data.draw(st.permutations(range(WALLETS))):
        result = wallet_multisig.sign_with_wallet(wallets[w], tx, lookup)
        tx = result.tx
    filled = sum(1 for slot in tx.inputs[0].signature_slots if slot)
    assert filled == expected
    assert result.complete == (held >= m) == valid(tx)

    parallel = [wallet_multisig.sign_with_wallet(wallet, unsigned, lookup).tx for wallet in wallets]
    merged = wallet_multisig.combine(parallel, PARAMS.genesis_hash, lookup)
    assert sum(1 for slot in merged.inputs[0].signature_slots if slot) == expected
    assert valid(merged) == (held >= m)
