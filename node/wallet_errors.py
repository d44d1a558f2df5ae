"""The wallet's exceptions, in a module of their own so the wallet's parts can share them."""

from __future__ import annotations


class WalletError(Exception):
    """Not enough funds, an unknown address, a corrupt wallet file, ..."""


class InsufficientFunds(WalletError):
    pass


class WalletWriteError(WalletError):
    """wallet.dat could not be written (a full disk): what was being recorded did not
    happen."""
