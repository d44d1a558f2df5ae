"""The node's wallet: Ed25519 keys in the data directory, coin selection, signing.

Balances are read from the chain state's UTXO set and the mempool (no separate wallet database
to drift out of step across reorgs); the wallet file holds the keys and the transactions that
concern the wallet (node.wallet_history), so their status can be reported even after they are
conflicted away, and the inputs of its unconfirmed payments stay locked across a crash.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from consensus.chainstate import ChainState
from consensus.coins import Coin
from consensus.keys import AddressError, PrivateKey, decode_address, pubkey_hash
from consensus.multisig import MultisigScript, decode_multisig_script
from consensus.params import ADDRESS_PREFIXES, ChainParams
from consensus.tx import SEQUENCE_FINAL, OutPoint, Transaction, TxIn, TxOut, sign_transaction
from node.wallet_errors import InsufficientFunds, WalletError, WalletWriteError
from node.wallet_file import WALLET_FILE, WALLET_VERSION, read_wallet_file, write_wallet_file
from node.wallet_history import MAX_WALLET_TXS, Settled, TxHistory, WalletTx
from node.wallet_journal import JOURNAL_FILE, MAX_JOURNAL_BYTES, Journal

__all__ = [
    "MAX_WALLET_TXS",
    "WALLET_FILE",
    "WALLET_VERSION",
    "InsufficientFunds",
    "Wallet",
    "WalletCoin",
    "WalletError",
    "WalletWriteError",
]

log = structlog.get_logger("powlab.wallet")

DEFAULT_WALLET_FEE_RATE = 2  # smallest units per byte: above the default relay minimum


@dataclass(frozen=True)
class WalletCoin:
    outpoint: OutPoint
    coin: Coin
    confirmations: int  # 0 for an output of a mempool transaction
    spendable: bool  # mature, not spent by a mempool transaction nor by a pending payment


class Wallet:
    def __init__(self, path: Path, params: ChainParams) -> None:
        self.path = path
        self.params = params
        self.keys: dict[bytes, PrivateKey] = {}  # pkh -> key
        self.history = TxHistory()
        # (height, hash) of the last block whose transactions the wallet has looked at: a
        # start-up rescans from there (None: from genesis).
        self.scanned: tuple[int, bytes] | None = None
        # Watched m-of-n scripts by script hash (node.wallet_multisig; addmultisigaddress).
        self.multisig: dict[bytes, MultisigScript] = {}
        self.fee_rate = DEFAULT_WALLET_FEE_RATE
        # Changes since wallet.dat was written (node.wallet_journal); what is noted in memory
        # only (received transactions, the scan marker) goes there at the next flush.
        self.journal = Journal(path.with_name(JOURNAL_FILE))
        self._unflushed: list[bytes] = []
        self._flushed_scan: tuple[int, bytes] | None = None
        # Whether a replacement still holds the mempool slot of this transaction (the daemon
        # sets it: node.replacements): such a payment is settled like a conflicted one.
        self.replaced: Callable[[bytes], bool] = _never_replaced

    @classmethod
    def open(cls, datadir: Path, params: ChainParams) -> Wallet:
        wallet = cls(datadir / WALLET_FILE, params)
        if wallet.path.exists():
            wallet._load()
        elif wallet.journal.path.exists() and wallet.journal.path.stat().st_size > 0:
            # Never left by a crash (wallet.dat is written before any append): the first
            # write of a new wallet would empty it, keys and all.
            raise WalletError(
                f"{wallet.journal.path} holds wallet changes but {wallet.path} is missing;"
                " both were left as they are"
            )
        return wallet

    def _load(self) -> None:
        try:
            data = read_wallet_file(self.path, self.params.name)
            for seed in data["keys"]:
                key = PrivateKey(seed)
                self.keys[pubkey_hash(key.public_key)] = key
            max_size = self.params.max_block_size
            self.history.load_records(data.get("txs", {}), max_size)
            self.history.load_v1(data.get("txs_v1", {}), max_size)
            scanned = data.get("scanned")
            self.scanned = (int(scanned[0]), bytes(scanned[1])) if scanned else None
            # Absent from wallets written before multisig existed.
            for raw_script in data.get("multisig", []):
                script = decode_multisig_script(raw_script)
                self.multisig[script.script_hash] = script
            for entry in self.journal.read():
                self._replay(entry)
            self._flushed_scan = self.scanned
        except Exception as exc:
            raise WalletError(
                f"wallet file {self.path} is unreadable ({exc}); it was left as it is"
            ) from None

    def _replay(self, entry: dict[str, Any]) -> None:
        """One journal entry, as `_append` wrote it. Replaying an entry wallet.dat already
        holds changes nothing (the journal is emptied after wallet.dat is written, but a
        crash can come between)."""
        max_size = self.params.max_block_size
        if "key" in entry:
            key = PrivateKey(entry["key"])
            self.keys[pubkey_hash(key.public_key)] = key
        if "tx" in entry:
            record = WalletTx.from_record(entry["tx"], max_size)
            if record.sent:
                # Journalled each time it is made: the latest entry undoes an earlier abandon.
                self.history.drop(record.tx.txid)
            self.history.restore(record)
        for txid in entry.get("abandon", ()):
            record = self.history.get(txid)
            if record is not None:
                record.abandoned = True
        if "drop" in entry:
            self.history.drop(entry["drop"])
        if "scanned" in entry:
            height, block_hash = entry["scanned"]
            self.scanned = (int(height), bytes(block_hash))

    def _append(self, entries: list[dict[str, Any]]) -> None:
        """Make `entries` durable: appended to the journal and fsynced (the first write of a
        new wallet rewrites wallet.dat instead); past MAX_JOURNAL_BYTES the journal is then
        folded into wallet.dat."""
        if not self.path.exists():
            self.save()
            return
        try:
            self.journal.append(entries)
        except OSError as exc:
            raise WalletWriteError(f"could not write {self.journal.path}: {exc}") from exc
        if self.journal.size > MAX_JOURNAL_BYTES:
            # Folded only once the entries are in the journal too: a crash before the journal
            # is emptied replays it over wallet.dat, and it must end in the state wallet.dat
            # holds (an earlier drop of a payment made again must not win).
            try:
                self.save()
            except WalletWriteError as exc:
                # The entries are durable in the journal; the next write folds again.
                log.warning("wallet_fold_failed", error=str(exc))

    def flush(self) -> None:
        """Make what was noted in memory only (received transactions, the scan marker)
        durable; WalletWriteError when it cannot (it stays noted for the next flush)."""
        entries: list[dict[str, Any]] = []
        for txid in self._unflushed:
            record = self.history.get(txid)
            if record is not None:
                entries.append({"tx": record.to_record()})
        if self.scanned != self._flushed_scan and self.scanned is not None:
            entries.append({"scanned": list(self.scanned)})
        if not entries:
            return
        self._append(entries)
        self._unflushed = []
        self._flushed_scan = self.scanned

    def save(self) -> None:
        """Write and fsync wallet.dat whole, then empty the journal; WalletWriteError (the old
        file intact) when it cannot."""
        content = {
            "network": self.params.name,
            "keys": [k.seed for k in self.keys.values()],
            "txs": self.history.to_records(),
            "scanned": list(self.scanned) if self.scanned else None,
            "multisig": [script.encode() for script in self.multisig.values()],
        }
        try:
            write_wallet_file(self.path, content)
            self.journal.clear()
        except OSError as exc:
            raise WalletWriteError(f"could not write {self.path}: {exc}") from exc
        self._unflushed = []
        self._flushed_scan = self.scanned

    # ----------------------------------------------------------------- keys and addresses

    def new_address(self) -> str:
        key = PrivateKey(os.urandom(32))
        pkh = pubkey_hash(key.public_key)
        self.keys[pkh] = key
        try:
            self._append([{"key": key.seed}])
        except WalletWriteError:
            del self.keys[pkh]  # never hand out an address whose key a restart would lose
            raise
        return key.address(self.params.address_prefix)

    def address_of(self, pkh: bytes) -> str:
        from consensus.keys import encode_address

        return encode_address(self.params.address_prefix, pkh)

    def decode(self, address: str) -> bytes:
        try:
            return decode_address(address, self.params.address_prefix, ADDRESS_PREFIXES)
        except AddressError as exc:
            raise WalletError(str(exc)) from None

    def is_mine(self, pkh: bytes) -> bool:
        return pkh in self.keys

    def default_pkh(self) -> bytes:
        if not self.keys:
            self.new_address()
        return next(iter(self.keys))

    # ----------------------------------------------------------------- coins

    def coins(self, chain: ChainState, mempool: Any) -> list[WalletCoin]:
        """Our coins: confirmed ones from the UTXO set, plus outputs of mempool transactions."""
        result = []
        tip_height = chain.height
        maturity = self.params.coinbase_maturity
        locked = self.locked_outpoints(chain)
        for outpoint, coin in chain.iter_utxos():
            if coin.pkh not in self.keys:
                continue
            mature = not coin.is_coinbase or tip_height + 1 - coin.height >= maturity
            unspent = mempool.spender_of(outpoint) is None and outpoint not in locked
            result.append(
                WalletCoin(outpoint, coin, tip_height - coin.height + 1, mature and unspent)
            )
        for txid in mempool.txids():
            entry = mempool.get(txid)
            for n, out in enumerate(entry.tx.outputs):
                outpoint = OutPoint(txid, n)
                if out.pkh in self.keys:
                    coin = Coin(out.amount, out.pkh, tip_height + 1, False)
                    result.append(
                        WalletCoin(outpoint, coin, 0, mempool.spender_of(outpoint) is None)
                    )
        return result

    def balance(self, chain: ChainState, mempool: Any, minconf: int = 1) -> int:
        return sum(
            c.coin.amount
            for c in self.coins(chain, mempool)
            if c.spendable and c.confirmations >= minconf
        )

    # ----------------------------------------------------------------- spending

    def create_payment(
        self,
        chain: ChainState,
        mempool: Any,
        payee_pkh: bytes,
        amount: int,
        fee_rate: int | None = None,
        sequence: int = SEQUENCE_FINAL,
    ) -> Transaction:
        """A signed payment with change back to us; largest coins first; every input with
        `sequence` (MAX_BIP125_RBF_SEQUENCE signals replaceability)."""
        if amount <= 0:
            raise WalletError("amount must be positive")
        fee_rate = fee_rate or self.fee_rate
        candidates = sorted(
            (c for c in self.coins(chain, mempool) if c.spendable and c.confirmations >= 1),
            key=lambda c: -c.coin.amount,
        )
        change_pkh = self.default_pkh()
        chosen: list[WalletCoin] = []
        total = 0
        for coin in candidates:
            chosen.append(coin)
            total += coin.coin.amount
            tx = self._build(chosen, payee_pkh, amount, change_pkh, total, fee_rate, sequence)
            if tx is not None:
                return tx
        available = sum(c.coin.amount for c in candidates)
        raise InsufficientFunds(
            f"insufficient funds: {amount} plus fee wanted, {available} spendable"
        )

    def _build(
        self,
        chosen: list[WalletCoin],
        payee_pkh: bytes,
        amount: int,
        change_pkh: bytes,
        total: int,
        fee_rate: int,
        sequence: int,
    ) -> Transaction | None:
        keys = [self.keys[c.coin.pkh] for c in chosen]
        inputs = [TxIn(c.outpoint.txid, c.outpoint.index, b"", b"", sequence) for c in chosen]
        fee = 0
        # The size depends on the fee through the change amount's width: iterate to a fixpoint.
        for _ in range(4):
            change = total - amount - fee
            if change < 0:
                return None
            outputs = [TxOut(amount, payee_pkh)]
            if change > 0:
                outputs.append(TxOut(change, change_pkh))
            tx = sign_transaction(Transaction(inputs, outputs), keys, self.params.genesis_hash)
            needed = tx.size * fee_rate
            if fee >= needed:
                return tx
            fee = needed
        return None

    # ----------------------------------------------------------------- transactions

    def settled_in(self, chain: ChainState) -> Settled:
        def conflicted(tx: Transaction) -> bool:
            # A confirmed spend of one of its inputs, or of an input of an unconfirmed
            # ancestor the wallet knows (a payment of a coin whose receipt was double-spent
            # away can never confirm either: bitcoind's MarkConflicted does the same).
            todo, seen = [tx], {tx.txid}
            while todo:
                current = todo.pop()
                for txin in current.inputs:
                    spender = chain.spender(txin.outpoint)
                    if spender is not None and spender != current.txid:
                        return True
                    parent = self.history.get(txin.prev_txid)
                    if (
                        parent is not None
                        and txin.prev_txid not in seen
                        and chain.tx_block(txin.prev_txid) is None
                    ):
                        seen.add(txin.prev_txid)
                        todo.append(parent.tx)
            return False

        def settled(tx: Transaction) -> bool:
            return chain.tx_block(tx.txid) is not None or conflicted(tx) or self.replaced(tx.txid)

        return settled

    def locked_outpoints(self, chain: ChainState) -> set[OutPoint]:
        """Inputs of our payments that are neither confirmed, conflicted nor abandoned, in the
        mempool or not: coin selection never spends them twice."""
        return self.history.locked_outpoints(self.settled_in(chain))

    def record_payment(self, tx: Transaction, now: int, chain: ChainState) -> None:
        """Write the payment we created to the wallet's files and fsync it; it must be on disk
        before it is relayed. On WalletWriteError nothing was recorded."""
        change = 1 if len(tx.outputs) > 1 else None  # _build puts the change second
        coins = [chain.coin(i.outpoint) for i in tx.inputs]  # create_payment spends confirmed
        fee = sum(c.amount for c in coins if c is not None) - tx.total_out()
        record = WalletTx(tx, now, sent=True, change_vout=change, fee=fee)
        # An abandoned payment made again, identical (its inputs were freed, coin selection
        # and signatures are deterministic): it is a pending payment anew, not abandoned.
        previous = self.history.drop(tx.txid)
        try:
            self.history.add(record, self.settled_in(chain))
            self._append([{"tx": record.to_record()}])
        except WalletError:
            self.history.drop(tx.txid)
            if previous is not None:
                self.history.restore(previous)
            raise

    def note_tx(self, tx: Transaction, now: int, chain: ChainState) -> bool:
        """Remember a transaction seen in a block or the mempool when it pays us or spends one
        of our outputs; True when it is new to the wallet (the caller flushes)."""
        if tx.txid in self.history:
            return False
        ours = [out.pkh in self.keys for out in tx.outputs]
        spends: list[int | None] = []
        for txin in tx.inputs:
            prev = self.history.get(txin.prev_txid)
            if prev is None or txin.prev_index >= len(prev.tx.outputs):
                spends.append(None)
                continue
            out = prev.tx.outputs[txin.prev_index]
            spends.append(out.amount if out.pkh in self.keys else None)
        from_me = any(a is not None for a in spends)
        if not any(ours) and not from_me:
            return False
        fee = None
        if from_me and all(a is not None for a in spends) and not tx.is_coinbase:
            fee = sum(a for a in spends if a is not None) - tx.total_out()
        record = WalletTx(tx, now, sent=False, fee=fee)
        try:
            self.history.add(record, self.settled_in(chain))
        except WalletError:
            return False  # full of pending payments: a received one cannot be listed
        self._unflushed.append(tx.txid)
        return True

    def abandon(self, txid: bytes) -> list[bytes]:
        """Mark our transaction (and its wallet descendants) abandoned and save; the caller
        has checked it is neither confirmed nor in the mempool."""
        marked = self.history.abandon(txid)
        try:
            self._append([{"abandon": marked}])
        except WalletWriteError:
            for t in marked:
                record = self.history.get(t)
                if record is not None:
                    record.abandoned = False
            raise
        return marked

    def forget_refused(self, txid: bytes) -> None:
        """A payment the mempool refused: it never went out, its inputs are free again."""
        self.history.drop(txid)
        self._append([{"drop": txid}])

    def known_tx(self, txid: bytes) -> bytes | None:
        record = self.history.get(txid)
        return record.raw if record else None


def _never_replaced(txid: bytes) -> bool:
    return False
