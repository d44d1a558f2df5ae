"""The options every built-in attack takes besides the runner's (where the network is,
roles, seed, output): the payment, the confirmations, the attacker's share, the step timeout."""

from __future__ import annotations

import argparse

DEFAULT_AMOUNT = 10 * 100_000_000


def add_attack_arguments(parser: argparse.ArgumentParser, confirmations_help: str,
                         timeout: float = 60.0) -> None:
    parser.add_argument("--amount", type=int, default=DEFAULT_AMOUNT,
                        help=f"payment to the victim in smallest units (default {DEFAULT_AMOUNT})")
    parser.add_argument("--confirmations", type=int, default=None, metavar="Z",
                        help=confirmations_help)
    parser.add_argument("--hashrate-share", type=float, default=None, metavar="Q",
                        help="the attacker's share of the total hash rate (split: the share of "
                             "the half without the victim)")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help="seconds to wait for any one step (blocks reaching nodes, …; "
                             f"default {timeout:g})")
