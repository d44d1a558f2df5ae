"""The node's wallet: Ed25519 keys in the data directory, coin selection, signing.

Balances are read from the chain state's UTXO set and the mempool (no separate wallet database
to drift out of step across reorgs); the wallet file holds the keys and the transactions the
wallet sent, so their status can be reported even after they are conflicted away.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from consensus.chainstate import ChainState
from consensus.coins import Coin
from consensus.keys import AddressError, PrivateKey, decode_address, pubkey_hash
from consensus.multisig import MultisigScript, decode_multisig_script
from consensus.params import ADDRESS_PREFIXES, ChainParams
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, sign_transaction
from storage.files import write_atomic

WALLET_FILE = "wallet.dat"
WALLET_VERSION = 1
DEFAULT_WALLET_FEE_RATE = 2  # smallest units per byte: above the default relay minimum
MAX_WALLET_TXS = 10_000


class WalletError(Exception):
    """Not enough funds, an unknown address, a corrupt wallet file, ..."""


class InsufficientFunds(WalletError):
    pass


@dataclass(frozen=True)
class WalletCoin:
    outpoint: OutPoint
    coin: Coin
    confirmations: int  # 0 for an output of a mempool transaction
    spendable: bool  # mature and not already spent by a mempool transaction


class Wallet:
    def __init__(self, path: Path, params: ChainParams) -> None:
        self.path = path
        self.params = params
        self.keys: dict[bytes, PrivateKey] = {}  # pkh -> key
        self.txs: dict[bytes, tuple[bytes, int]] = {}  # txid -> (encoded tx, time)
        # Watched m-of-n scripts by script hash (node.wallet_multisig; addmultisigaddress).
        self.multisig: dict[bytes, MultisigScript] = {}
        self.fee_rate = DEFAULT_WALLET_FEE_RATE

    @classmethod
    def open(cls, datadir: Path, params: ChainParams) -> Wallet:
        wallet = cls(datadir / WALLET_FILE, params)
        if wallet.path.exists():
            wallet._load()
        return wallet

    def _load(self) -> None:
        try:
            data = msgpack.unpackb(self.path.read_bytes())
            if data.get("version") != WALLET_VERSION or data.get("network") != self.params.name:
                raise WalletError(
                    f"wallet {self.path} is for network {data.get('network')!r} "
                    f"(version {data.get('version')}), not {self.params.name!r}"
                )
            for seed in data["keys"]:
                key = PrivateKey(seed)
                self.keys[pubkey_hash(key.public_key)] = key
            self.txs = {txid: (raw, t) for txid, (raw, t) in data.get("txs", {}).items()}
            # Absent from wallets written before multisig existed.
            for raw_script in data.get("multisig", []):
                script = decode_multisig_script(raw_script)
                self.multisig[script.script_hash] = script
        except WalletError:
            raise
        except Exception as exc:
            raise WalletError(
                f"wallet file {self.path} is unreadable ({exc}); it was left as it is"
            ) from None

    def save(self) -> None:
        data = {
            "version": WALLET_VERSION,
            "network": self.params.name,
            "keys": [k.seed for k in self.keys.values()],
            "txs": {txid: [raw, t] for txid, (raw, t) in self.txs.items()},
            "multisig": [script.encode() for script in self.multisig.values()],
        }
        write_atomic(self.path, msgpack.packb(data, use_bin_type=True), 0o600)

    # ----------------------------------------------------------------- keys and addresses

    def new_address(self) -> str:
        key = PrivateKey(os.urandom(32))
        self.keys[pubkey_hash(key.public_key)] = key
        self.save()
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
        for outpoint, coin in chain.iter_utxos():
            if coin.pkh not in self.keys:
                continue
            mature = not coin.is_coinbase or tip_height + 1 - coin.height >= maturity
            unspent = mempool.spender_of(outpoint) is None
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
    ) -> Transaction:
        """A signed payment with change back to us; largest coins first."""
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
            tx = self._build(chosen, payee_pkh, amount, change_pkh, total, fee_rate)
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
    ) -> Transaction | None:
        keys = [self.keys[c.coin.pkh] for c in chosen]
        inputs = [TxIn(c.outpoint.txid, c.outpoint.index, b"", b"") for c in chosen]
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

    def remember(self, tx: Transaction, now: int) -> None:
        self.txs[tx.txid] = (tx.encode(), now)
        while len(self.txs) > MAX_WALLET_TXS:
            del self.txs[next(iter(self.txs))]
        self.save()

    def known_tx(self, txid: bytes) -> bytes | None:
        entry = self.txs.get(txid)
        return entry[0] if entry else None
