"""Sustained transaction throughput across a line of nodes, measured the same way for any
daemon with bitcoind's `sendrawtransaction` and `getmempoolinfo`.

Pre-signed raw transactions go to the first node in JSON-RPC batches, one batch after the
other, as fast as it answers, for a fixed window. The figure is how many of them reached the
LAST node's mempool within that window (its `getmempoolinfo.size`, read at the end of the
window, minus its size at the start) ÷ the window. The last node is also sampled about once a
second from the submitting loop, which gives the rate over the second half of the window
(the steady state, without the time the first transactions take to cross the line), and after
the window it is followed until it holds every accepted transaction or stops gaining.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench_p2p import KeepAliveRPC

SAMPLE_EVERY_S = 1.0
# After the window: stop following the last node once it has gained nothing for this long.
DRAIN_STALL_S = 10.0
DRAIN_TIMEOUT_S = 120.0  # the default; measure_flow's `drain_timeout`


class BatchRPC(KeepAliveRPC):
    """A `KeepAliveRPC` whose batches return every reply, errors included."""

    def batch_replies(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
        payload = [
            {"jsonrpc": "2.0", "id": n, "method": m, "params": list(p)}
            for n, (m, p) in enumerate(calls)
        ]
        replies = self._post(payload)
        if not isinstance(replies, list):
            raise RuntimeError(f"batch of {len(calls)}: {replies}")
        return sorted(replies, key=lambda r: r["id"])


@dataclass
class FlowResult:
    window_s: float  # submission time actually used
    offered: int  # transactions sent to the first node
    accepted: int
    errors: dict[str, int]  # rejection message (first 60 characters) -> count
    at_last: int  # reached the last node's mempool within the window
    exhausted: bool  # the pre-signed pool ran out before the window ended
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, at last)
    drained: int = 0  # at the last node when following stopped
    drain_s: float = 0.0  # from the end of the window until then

    @property
    def last_rate(self) -> float:
        return self.at_last / self.window_s

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.window_s

    @property
    def steady_rate(self) -> float:
        """Arrivals per second at the last node over the second half of the window."""
        half = [(t, n) for t, n in self.samples if t >= self.window_s / 2]
        if len(half) < 2 or half[-1][0] <= half[0][0]:
            return 0.0
        return (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0])


def mempool_size(client: KeepAliveRPC) -> int:
    return int(client.call("getmempoolinfo")["size"])


def measure_flow(
    first: BatchRPC, last: KeepAliveRPC, hexes: Sequence[str], seconds: float,
    batch: int = 100, drain_timeout: float = DRAIN_TIMEOUT_S,
) -> FlowResult:
    """Submit `hexes` to `first` for `seconds` (or until they run out); see the module doc."""
    base = mempool_size(last)
    errors: dict[str, int] = {}
    accepted = offered = 0
    samples: list[tuple[float, int]] = [(0.0, 0)]
    start = time.monotonic()
    next_sample = start + SAMPLE_EVERY_S
    now = start
    while offered < len(hexes) and now - start < seconds:
        part = hexes[offered : offered + batch]
        for reply in first.batch_replies([("sendrawtransaction", [h]) for h in part]):
            if reply.get("error"):
                message = str(reply["error"].get("message", reply["error"]))[:60]
                errors[message] = errors.get(message, 0) + 1
            else:
                accepted += 1
        offered += len(part)
        now = time.monotonic()
        if now >= next_sample:
            samples.append((now - start, mempool_size(last) - base))
            next_sample += SAMPLE_EVERY_S
    end = time.monotonic()
    window = end - start
    at_last = mempool_size(last) - base
    samples.append((window, at_last))
    result = FlowResult(window, offered, accepted, errors, at_last, offered >= len(hexes)
                        and window < seconds, samples)
    result.drained, result.drain_s = _drain(last, base, accepted, end, drain_timeout)
    return result


def _drain(
    last: KeepAliveRPC, base: int, accepted: int, end: float, timeout: float
) -> tuple[int, float]:
    """Follow the last node until it holds `accepted` transactions or stops gaining."""
    seen = mempool_size(last) - base
    gained_at = time.monotonic()
    while seen < accepted:
        now = time.monotonic()
        if now - gained_at > min(DRAIN_STALL_S, timeout) or now - end > timeout:
            break
        time.sleep(0.1)  # polling a condition, with the two deadlines above
        size = mempool_size(last) - base
        if size > seen:
            seen, gained_at = size, time.monotonic()
    return seen, gained_at - end


def flow_summary(r: FlowResult) -> str:
    text = (f"accepted {r.accepted:,} of {r.offered:,} at the first node in {r.window_s:.1f} s "
            f"({r.accept_rate:,.0f}/s); at the last node {r.at_last:,} in the window = "
            f"{r.last_rate:,.0f} tx/s (second half {r.steady_rate:,.0f}/s); there "
            f"{r.drained:,} of {r.accepted:,} at +{r.drain_s:.1f} s after the window")
    if r.exhausted:
        text += " [pre-signed pool ran out before the window ended: raise --flow-txs]"
    if r.errors:
        text += f"; rejected: {r.errors}"
    return text
