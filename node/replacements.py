"""What replaced what in our mempool, for `gettransaction`'s `replaced_by_txid`, the `replaced`
status and the wallet.

A replacement can itself be replaced (A by B, B by C): A stays replaced while any transaction
down that line holds the slot, in the mempool or confirmed. Once none does (the replacement was
evicted, or lost to a conflicting block transaction, which makes A conflicted instead), A is no
longer `replaced`; a payment of ours may then go back to the mempool when the wallet resubmits it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

# The most steps a status takes down a line of replacements to find the one holding the slot.
# Every status pass walks each watched replaced transaction: unbounded, a peer cycling one coin
# through N replacements made each pass cost N²/2 steps. A transaction replaced longer ago than
# that is no longer `replaced` (it shows conflicted by the live one, as after a restart).
MAX_REPLACEMENT_LINE = 25


class ReplacementLog:
    """Replaced txid -> the txid that replaced it, the most recent `capacity` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by)

    def note(self, replaced: dict[bytes, bytes]) -> None:
        for txid, by in replaced.items():
            self._by[txid] = by
            self._by.move_to_end(txid)
        while len(self._by) > self.capacity:
            self._by.popitem(last=False)

    def replaced_by(self, txid: bytes) -> bytes | None:
        """The transaction that replaced `txid` directly, live or not."""
        return self._by.get(txid)

    def holder(self, txid: bytes, holds: Callable[[bytes], bool]) -> bytes | None:
        """The first transaction down `txid`'s line of replacements that `holds` (is in the
        mempool or confirmed), within MAX_REPLACEMENT_LINE steps, or None."""
        seen = {txid}
        current = self._by.get(txid)
        while current is not None and current not in seen and len(seen) <= MAX_REPLACEMENT_LINE:
            if holds(current):
                return current
            seen.add(current)
            current = self._by.get(current)
        return None
