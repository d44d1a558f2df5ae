"""The one exception type of the consensus layer.

Every rejection carries a short machine-readable `reason` code (the strings bitcoind users know,
like ``bad-txns-inputs-missingorspent``); that code is what users see in logs and RPC replies.
"""

from __future__ import annotations


class ConsensusError(Exception):
    """A block, header or transaction broke a rule; `reason` names the rule."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DecodeError(ConsensusError):
    """Bytes that are not the one canonical encoding of an object (truncated, oversized, ...)."""

    def __init__(self, detail: str, reason: str = "bad-encoding") -> None:
        super().__init__(reason, detail)
