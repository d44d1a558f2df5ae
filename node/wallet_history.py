"""The wallet's transactions: what it sent and what it received, with the rules that keep a
crash from double-spending its own coins.

A payment the wallet created stays *pending* until a block confirms it or the user abandons
it, whether or not it is still in the mempool (a kill -9 loses the mempool, never the wallet
file): its inputs are locked against coin selection, and it is resubmitted at start-up and
rebroadcast. A conflicting spend that confirms takes the inputs off the UTXO set, which frees
them for good.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from consensus.tx import OutPoint, Transaction, decode_transaction
from node.wallet_errors import WalletError

# Bound on the transactions the wallet remembers (sent and received). The oldest settled ones
# are forgotten first; pending payments never are, since forgetting one would unlock inputs
# that a peer may still hold a spend of.
MAX_WALLET_TXS = 10_000

# Whether a payment is settled: confirmed, or conflicted by a confirmed spend of one of its
# inputs. Either way its inputs need no lock.
Settled = Callable[[Transaction], bool]


@dataclass
class WalletTx:
    """One transaction that concerns the wallet. `sent`: created by this wallet's
    sendtoaddress (its inputs are ours and locked while it is pending); `change_vout` is the
    output that returned change to us; `fee` is known for what we created or whose inputs we
    remember."""

    tx: Transaction
    time: int
    sent: bool = False
    change_vout: int | None = None
    fee: int | None = None
    abandoned: bool = False
    raw: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            self.raw = self.tx.encode()

    def to_record(self) -> dict[str, object]:
        return {
            "raw": self.raw,
            "time": self.time,
            "sent": self.sent,
            "change": self.change_vout,
            "fee": self.fee,
            "abandoned": self.abandoned,
        }

    @classmethod
    def from_record(cls, record: dict[str, object], max_size: int) -> WalletTx:
        raw = record["raw"]
        if not isinstance(raw, bytes):
            raise ValueError("a wallet transaction record has no raw bytes")
        change, fee, time = record.get("change"), record.get("fee"), record["time"]
        if not isinstance(time, int) or not (change is None or isinstance(change, int)):
            raise ValueError("a wallet transaction record has a malformed field")
        return cls(
            tx=decode_transaction(raw, max_size),
            time=time,
            sent=bool(record.get("sent", False)),
            change_vout=change,
            fee=fee if isinstance(fee, int) else None,
            abandoned=bool(record.get("abandoned", False)),
            raw=raw,
        )


class TxHistory:
    """The wallet's transactions in the order it learnt of them (oldest first)."""

    def __init__(self, limit: int = MAX_WALLET_TXS) -> None:
        self.limit = limit
        self.records: dict[bytes, WalletTx] = {}

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, txid: bytes) -> WalletTx | None:
        return self.records.get(txid)

    def newest_first(self) -> Iterator[WalletTx]:
        return reversed(list(self.records.values()))

    # ----------------------------------------------------------------- pending and locked

    def is_pending(self, record: WalletTx, settled: Settled) -> bool:
        return record.sent and not record.abandoned and not settled(record.tx)

    def pending(self, settled: Settled) -> list[WalletTx]:
        """Our payments neither settled nor abandoned, oldest first (parents first)."""
        return [r for r in self.records.values() if self.is_pending(r, settled)]

    def locked_outpoints(self, settled: Settled) -> set[OutPoint]:
        return {i.outpoint for r in self.pending(settled) for i in r.tx.inputs}

    # ----------------------------------------------------------------- changes

    def add(self, record: WalletTx, settled: Settled) -> None:
        """Remember `record`, forgetting the oldest settled transactions beyond the bound;
        refuses (WalletError) when every remembered transaction is a pending payment."""
        txid = record.tx.txid
        if txid in self.records:
            return
        if len(self.records) >= self.limit:
            self._evict(len(self.records) - self.limit + 1, settled)
        self.records[txid] = record

    def _evict(self, count: int, settled: Settled) -> None:
        victims = []
        for txid, record in self.records.items():
            if len(victims) == count:
                break
            if not self.is_pending(record, settled):
                victims.append(txid)
        if len(victims) < count:
            raise WalletError(
                f"the wallet holds {len(self.records)} transactions (its bound, "
                f"MAX_WALLET_TXS) and they are all unconfirmed payments: mine or abandon "
                "some first"
            )
        for txid in victims:
            del self.records[txid]

    def restore(self, record: WalletTx) -> None:
        """Put back a record from the wallet's files as it was, bound or not: which settled
        ones to forget was decided when it was first added, against the chain of the time."""
        self.records.setdefault(record.tx.txid, record)

    def drop(self, txid: bytes) -> WalletTx | None:
        return self.records.pop(txid, None)

    def abandon(self, txid: bytes) -> list[bytes]:
        """Mark `txid` and the wallet's transactions spending its outputs abandoned
        (bitcoind's AbandonTransaction); returns the txids newly marked."""
        marked = []
        todo = [txid]
        while todo:
            current = todo.pop()
            record = self.records.get(current)
            if record is None or record.abandoned:
                continue
            record.abandoned = True
            marked.append(current)
            todo.extend(
                child.tx.txid
                for child in self.records.values()
                if any(i.prev_txid == current for i in child.tx.inputs)
            )
        return marked

    # ----------------------------------------------------------------- persistence

    def to_records(self) -> dict[bytes, dict[str, object]]:
        return {txid: r.to_record() for txid, r in self.records.items()}

    def load_records(self, records: dict[bytes, dict[str, object]], max_size: int) -> None:
        for txid, record in records.items():
            entry = WalletTx.from_record(record, max_size)
            if entry.tx.txid != txid:
                raise ValueError(f"wallet record {txid.hex()} holds another transaction")
            self.records[txid] = entry

    def load_v1(self, txs: dict[bytes, list[object]], max_size: int) -> None:
        """Version 1 kept only sent payments, as txid -> [raw, time]: each was built by
        create_payment, whose second output, when there is one, is the change."""
        for txid, (raw, time) in txs.items():
            if not isinstance(raw, bytes) or not isinstance(time, int):
                raise ValueError("a version 1 wallet transaction is malformed")
            tx = decode_transaction(raw, max_size)
            change = 1 if len(tx.outputs) > 1 else None
            self.records[txid] = WalletTx(tx, time, sent=True, change_vout=change, raw=raw)
