"""Sliding-window anti-replay filter for 64-bit message counters.

Follows the scheme of RFC 6479 ("IPsec Anti-Replay Algorithm without Bit
Shifting") as used by WireGuard (whitepaper section 5.4.6): remember the
highest counter accepted so far plus a bitmap of which of the ``size``
counters ending at it have been seen. A counter is acceptable if it is new
and not older than the window. RFC 6479 avoids shifting by using a ring of
machine words; in Python a single int used as a bitmask and shifted is both
simpler and faster, and with a fixed window size each shift touches a fixed
number of machine words, so every call is O(1).

Sans-IO: no clock, no sockets. The caller checks a counter before the
(comparatively expensive) AEAD decryption and marks it only after the
message authenticated, so forged packets cannot advance the window.
"""

from __future__ import annotations

__all__ = ["MAX_COUNTER", "REPLAY_WINDOW", "ReplayWindow"]

REPLAY_WINDOW = 2048  # positions remembered behind the highest counter (WireGuard uses 2048)
MAX_COUNTER = 2**64 - 1  # counters are unsigned 64-bit integers


class ReplayWindow:
    """Anti-replay bitmap window with the acceptance rule of RFC 6479.

    Bit ``i`` of the bitmap stands for counter ``highest - i``. A counter is
    accepted iff it lies in ``0..MAX_COUNTER``, is greater than
    ``highest - size``, and has not been marked before.
    """

    __slots__ = ("_bitmap", "_mask", "highest", "size")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self.highest = -1  # nothing seen yet
        self._bitmap = 0
        self._mask = (1 << size) - 1

    def check(self, counter: int) -> bool:
        """True if ``counter`` would be accepted now. Records nothing."""
        if counter > self.highest:
            # Ahead of everything seen: new by definition (bounded by u64).
            return counter <= MAX_COUNTER
        offset = self.highest - counter
        if offset >= self.size or counter < 0:
            return False  # too old to tell apart from a replay, or not a u64
        return not (self._bitmap >> offset) & 1

    def mark(self, counter: int) -> None:
        """Record ``counter`` as seen; call only after its message authenticated.

        Marking a counter that is already recorded, or too old for the window,
        is a harmless no-op (it would be refused by :meth:`check` anyway).
        """
        if not 0 <= counter <= MAX_COUNTER:
            raise ValueError("counter must be an unsigned 64-bit integer")
        shift = counter - self.highest
        if shift > 0:
            # Slide the window forward; a jump of a whole window or more
            # forgets everything, since all older counters are now too old.
            if shift >= self.size:
                self._bitmap = 1
            else:
                self._bitmap = ((self._bitmap << shift) | 1) & self._mask
            self.highest = counter
            return
        offset = -shift
        if offset < self.size:
            self._bitmap |= 1 << offset

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, highest={self.highest})"
