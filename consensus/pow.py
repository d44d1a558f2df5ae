"""Proof of work: compact targets, work, and difficulty retargeting (pure integer arithmetic)."""

from __future__ import annotations

from consensus.errors import ConsensusError

MAX_TARGET_BITS = 256


def bits_to_target(bits: int) -> int:
    """Expand Bitcoin's compact `bits` (1-byte exponent, 3-byte mantissa) into a target.

    Negative or overflowing encodings are rejected rather than silently wrapped, so a header can
    never claim a target the network does not allow.
    """
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    if bits & 0x00800000 and mantissa:
        raise ConsensusError("bad-diffbits", f"negative compact target {bits:#010x}")
    if exponent <= 3:
        target = mantissa >> (8 * (3 - exponent))
    else:
        target = mantissa << (8 * (exponent - 3))
    if target.bit_length() > MAX_TARGET_BITS:
        raise ConsensusError("bad-diffbits", f"compact target {bits:#010x} overflows 256 bits")
    return target


def target_to_bits(target: int) -> int:
    """The compact encoding of `target`, rounding down to 24 bits of precision."""
    if target <= 0:
        return 0
    size = (target.bit_length() + 7) // 8
    if size <= 3:
        mantissa = target << (8 * (3 - size))
    else:
        mantissa = target >> (8 * (size - 3))
    # The mantissa's top bit is a sign bit: shift into the next exponent instead.
    if mantissa & 0x00800000:
        mantissa >>= 8
        size += 1
    return (size << 24) | mantissa


def work_from_target(target: int) -> int:
    """Expected number of hashes to find a block at `target`: 2**256 / (target + 1)."""
    return (1 << 256) // (target + 1)


def hash_meets_target(block_hash: bytes, target: int) -> bool:
    return int.from_bytes(block_hash, "big") <= target


def difficulty(target: int, pow_limit: int) -> float:
    """How many times harder than the easiest allowed target (1.0 at the limit)."""
    return pow_limit / target if target else float("inf")


def retarget(
    last_target: int,
    actual_timespan: int,
    target_timespan: int,
    clamp: int,
    pow_limit: int,
) -> int:
    """Scale the target by how long the last window took, clamped to [1/clamp, clamp]×."""
    actual = max(target_timespan // clamp, min(actual_timespan, target_timespan * clamp))
    # Cap before the compact round trip: with a limit near 2**256 (regtest-like), 4x the limit
    # does not fit in 256 bits and its compact form would be refused as an overflow.
    new_target = min(last_target * actual // target_timespan, pow_limit)
    # Round-trip through compact form so the expected bits are exactly what a header can hold.
    return bits_to_target(target_to_bits(new_target))
