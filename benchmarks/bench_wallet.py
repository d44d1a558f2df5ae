"""Benchmark the wallet's persistence: `python benchmarks/bench_wallet.py [--dir DIR]`.

Prints, all measured in this run on DIR's file system (default: a temporary directory):
  * one payment appended to wallet.log and fsynced, with 100 and with 10,000 (the bound)
    transactions in the wallet,
  * a rewrite of wallet.dat (what a journal past MAX_JOURNAL_BYTES triggers) at both sizes,
  * loading a wallet of 10,000 transactions, and replaying a full journal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Allow running from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.params import REGTEST
from consensus.tx import Transaction, TxIn, TxOut
from node.wallet import MAX_WALLET_TXS, Wallet
from node.wallet_history import WalletTx
from node.wallet_journal import MAX_JOURNAL_BYTES

REPEATS = 50


def payment(n: int, pkh: bytes) -> WalletTx:
    """A payment of the size the wallet makes: one signed input, payee and change."""
    tx = Transaction(
        [TxIn(n.to_bytes(32, "big"), 0, b"p" * 32, b"s" * 64)],
        [TxOut(1_000 + n, b"\x02" * 20), TxOut(5_000, pkh)],
    )
    return WalletTx(tx, n, sent=True, change_vout=1, fee=300)


def fill(wallet: Wallet, count: int, pkh: bytes) -> None:
    wallet.history.records.clear()
    for n in range(count):
        record = payment(n, pkh)
        wallet.history.restore(record)
    wallet.save()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a file system)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        wallet = Wallet.open(directory, REGTEST)
        wallet.new_address()
        pkh = next(iter(wallet.keys))
        for count in (100, MAX_WALLET_TXS):
            fill(wallet, count, pkh)
            appends = []
            for n in range(REPEATS):
                record = payment(10**6 + n, pkh)
                wallet.history.restore(record)
                start = time.perf_counter()
                wallet._append([{"tx": record.to_record()}])
                appends.append(time.perf_counter() - start)
            rewrites = []
            for _ in range(5):
                start = time.perf_counter()
                wallet.save()
                rewrites.append(time.perf_counter() - start)
            size = wallet.path.stat().st_size / 1024
            print(
                f"{count:>6} transactions: append one payment {median_ms(appends):.2f} ms, "
                f"rewrite wallet.dat ({size:.0f} KiB) {median_ms(rewrites):.1f} ms"
            )
        start = time.perf_counter()
        Wallet.open(directory, REGTEST)
        print(f"load {MAX_WALLET_TXS} transactions: {(time.perf_counter() - start) * 1000:.0f} ms")
        fill(wallet, 0, pkh)
        entries = 0
        while wallet.journal.size < MAX_JOURNAL_BYTES:
            record = payment(2 * 10**6 + entries, pkh)
            wallet.history.restore(record)
            wallet.journal.append([{"tx": record.to_record()}])
            entries += 1
        start = time.perf_counter()
        Wallet.open(directory, REGTEST)
        print(
            f"replay a full journal ({entries} payments, {wallet.journal.size / 1024:.0f} KiB): "
            f"{(time.perf_counter() - start) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
