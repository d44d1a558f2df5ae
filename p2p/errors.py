"""The one exception type of the p2p codec.

Every decoding failure carries a short machine-readable `reason` code. The node turns these codes
into named peer penalties, so the set is small and closed: a new failure mode must map onto one
of `REASONS`, never invent a free-form string.
"""

from __future__ import annotations

BAD_MAGIC = "bad-magic"  # envelope from another network (or not our protocol at all)
BAD_CHECKSUM = "bad-checksum"  # payload corrupted in transit or deliberately mangled
OVERSIZE = "oversize"  # longer than the transport allows; rejected before any parsing
TRUNCATED = "truncated"  # msgpack ran out of bytes mid-object
MALFORMED = "malformed"  # not msgpack, wrong envelope shape, trailing or non-canonical bytes
UNKNOWN_TYPE = "unknown-type"  # message type number not in the fixed table
BAD_FIELD = "bad-field"  # payload decodes but a field has the wrong type, size or range
AUTH_FAILED = "auth-failed"  # a stream frame that does not verify under the session's keys

REASONS: frozenset[str] = frozenset(
    {
        BAD_MAGIC, BAD_CHECKSUM, OVERSIZE, TRUNCATED, MALFORMED, UNKNOWN_TYPE, BAD_FIELD,
        AUTH_FAILED,
    }
)


class ProtocolError(Exception):
    """Bytes from a peer that are not a valid message; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            # A typo here would silently escape the penalty table, so fail loudly in our own code.
            raise ValueError(f"unknown protocol error reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
