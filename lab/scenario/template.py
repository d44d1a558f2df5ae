"""The file `powlab scenario new NAME` writes."""

TEMPLATE = '''"""NAME: one line saying what this experiment shows (`scenario list` prints it).

Run it against the testnet of `scripts/run`:

    powlab scenario run NAME.py -- --blocks 3
    powlab scenario run NAME.py --json --plot NAME.png -- --blocks 3

The API is in docs/scenarios.md. Everything the run changes (mining, partitions, isolated
nodes, added links, link faults) is undone at the end, even when run() raises.
"""

from __future__ import annotations

import argparse

from lab.scenario import Network


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This file's own options: they go after `--` on the command line."""
    parser.add_argument("--blocks", type=int, default=3, help="blocks to mine (default 3)")
    parser.add_argument("--amount", type=int, default=100_000_000,
                        help="payment in smallest units (default 1 coin)")


def run(net: Network) -> None:
    args = net.args
    payer, payee = list(net.nodes)[0], list(net.nodes)[-1]
    with net.staged():  # every miner pauses; the end of the block gives them back
        net.sync_blocks()
        txid = net.pay(payer, payee, args.amount)
        net.track("tx1", txid)  # the timeline follows it on every node
        net.sync_mempools()
        net.mine(payer, args.blocks)
        net.sync_blocks()
        status = net.tx_status(payee, txid)
        net.timeline.mark(payee, "payment seen", status=status["status"],
                          confirmations=status.get("confirmations"))
    confirmed = (status.get("confirmations") or 0) >= args.blocks
    net.report(
        verdict=f"NAME: {'SUCCESS' if confirmed else 'FAILED'} — the payment has "
                f"{status.get('confirmations')} confirmations on {payee}",
        success=confirmed,
        confirmations=status.get("confirmations"),
    )
'''
