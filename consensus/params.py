"""Every chain parameter, per network: the single source of truth.

Consensus fields are committed to in the genesis block, so the genesis hash identifies the network
*and* its rules: two nodes whose configs override a consensus field differently refuse each other
at the handshake instead of forking silently. Policy fields (finality depth, pool limits) are a
node's own choice and are not committed to.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack

from consensus.block import Block, BlockHeader
from consensus.errors import ConsensusError
from consensus.hashing import ZERO_HASH
from consensus.pow import bits_to_target
from consensus.tx import make_coinbase

COIN = 100_000_000  # smallest units per coin, as in Bitcoin

# Policy defaults (not consensus; nodes may differ).
DEFAULT_FINALITY_DEPTH = 6
DEFAULT_MAX_ORPHAN_BLOCKS = 100
DEFAULT_MAX_MEMPOOL_BYTES = 50_000_000
DEFAULT_MAX_ORPHAN_TXS = 100
DEFAULT_ORPHAN_TX_EXPIRY = 20 * 60  # seconds
DEFAULT_MIN_RELAY_FEE_RATE = 1  # smallest units per byte
DEFAULT_INCREMENTAL_RELAY_FEE_RATE = 1  # units/byte the mempool floor rises above an evicted rate
DEFAULT_MEMPOOL_FEE_HALFLIFE = 12 * 60 * 60  # seconds for a raised mempool floor to halve
DEFAULT_MAX_MEMPOOL_ANCESTORS = 25  # in-mempool ancestors of one entry, itself included
DEFAULT_MAX_MEMPOOL_DESCENDANTS = 25  # in-mempool descendants of one entry, itself included
# Bytes: bigger transactions are not taken into the mempool or relayed (Bitcoin Core's
# MAX_STANDARD_TX_WEIGHT, 400,000 weight units); a block may still hold one, up to its own size.
DEFAULT_MAX_STANDARD_TX_SIZE = 100_000
# Bigger orphans are refused, their inputs unchecked.
DEFAULT_MAX_ORPHAN_TX_SIZE = DEFAULT_MAX_STANDARD_TX_SIZE
DEFAULT_SIGNATURE_CACHE_SIZE = 100_000
DEFAULT_ASSUMED_ATTACKER_SHARE = 0.1

POLICY_FIELDS = frozenset({"finality_depth"})

# The timewarp fix (BIP54's first rule, scaled to powlab's short windows): the first block of a
# retarget window may be at most this many seconds earlier than the block before it. Bitcoin's
# 7200 s is 0.6% of its two-week window; powlab testnet's whole window is 600 s, so 7200 s would
# let every window gain twelve windows' worth of time. One target spacing instead, like
# testnet4's 600 s (BIP94). See docs/consensus.md, "Timestamps and the timewarp".
TIMEWARP_GRACE = 10  # seconds
# Fields that cannot change which blocks are valid on a network with `no_retarget`, and that
# were added after such networks' genesis: left out of those networks' consensus digest, so
# regtest keeps its genesis hash (a retargeting network commits to them like to any field).
RETARGET_ONLY_FIELDS = frozenset({"timewarp_grace"})


class ParamsError(ValueError):
    """An override names an unknown parameter or gives a value of the wrong kind."""


@dataclass(frozen=True)
class ChainParams:
    name: str
    address_prefix: str
    magic: bytes
    genesis_timestamp: int
    genesis_message: str
    pow_limit_bits: int
    no_retarget: bool
    target_spacing: int  # seconds
    retarget_window: int  # blocks
    retarget_clamp: int
    initial_reward: int
    halving_interval: int
    coinbase_maturity: int
    max_block_size: int  # bytes, the encoded block
    max_future_drift: int  # seconds a timestamp may run ahead of a node's clock
    median_time_span: int  # blocks in the median-time-past window
    # seconds the first block of a retarget window may be earlier than its parent (timewarp fix)
    timewarp_grace: int
    finality_depth: int = DEFAULT_FINALITY_DEPTH

    @cached_property
    def pow_limit(self) -> int:
        return bits_to_target(self.pow_limit_bits)

    def consensus_digest(self) -> bytes:
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in POLICY_FIELDS
            and not (self.no_retarget and f.name in RETARGET_ONLY_FIELDS)
        }
        return hashlib.sha256(msgpack.packb(sorted(values.items()), use_bin_type=True)).digest()

    @cached_property
    def genesis_block(self) -> Block:
        # Genesis pays nobody (no outputs): it exists to fix the network's identity and rules.
        coinbase = make_coinbase(
            0, [], extra=self.consensus_digest() + self.genesis_message.encode()[:60]
        )
        header = BlockHeader(
            version=1,
            prev_hash=ZERO_HASH,
            merkle_root=Block(BlockHeader(1, ZERO_HASH, ZERO_HASH, 0, 0, 0), [coinbase])
            .computed_merkle_root(),
            timestamp=self.genesis_timestamp,
            bits=self.pow_limit_bits,
            nonce=0,
        )
        return Block(header, [coinbase])

    @cached_property
    def genesis_hash(self) -> bytes:
        return self.genesis_block.hash

    def block_reward(self, height: int) -> int:
        halvings = height // self.halving_interval
        return 0 if halvings >= 64 else self.initial_reward >> halvings

    def with_overrides(self, overrides: Mapping[str, Any]) -> ChainParams:
        """A copy with fields replaced, e.g. from a config file's ``[params]`` table."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            name = key.replace("-", "_")
            if name not in fields or name in ("name", "magic"):
                known = ", ".join(sorted(n for n in fields if n not in ("name", "magic")))
                raise ParamsError(f"unknown chain parameter {key!r}; known: {known}")
            current = getattr(self, name)
            if type(value) is not type(current):
                raise ParamsError(
                    f"chain parameter {key!r} must be {type(current).__name__}, "
                    f"got {value!r}"
                )
            changes[name] = value
        updated = dataclasses.replace(self, **changes)
        updated.validate()
        return updated

    def validate(self) -> None:
        positive = (
            "target_spacing", "retarget_window", "retarget_clamp", "halving_interval",
            "max_block_size", "median_time_span", "finality_depth",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ParamsError(f"chain parameter {name!r} must be at least 1")
        for name in ("initial_reward", "coinbase_maturity", "max_future_drift",
                     "timewarp_grace"):
            if getattr(self, name) < 0:
                raise ParamsError(f"chain parameter {name!r} must not be negative")
        try:
            limit = bits_to_target(self.pow_limit_bits)
        except (ValueError, ConsensusError) as exc:  # negative or overflowing compact bits
            raise ParamsError(f"pow_limit_bits: {exc}") from None
        if limit <= 0:
            raise ParamsError("pow_limit_bits must give a positive target")


REGTEST = ChainParams(
    name="regtest",
    address_prefix="rpow",
    magic=b"PWRT",
    genesis_timestamp=1_764_000_000,
    genesis_message="powlab regtest genesis",
    pow_limit_bits=0x207FFFFF,  # about half of all hashes win: instant mining
    no_retarget=True,
    target_spacing=10,
    retarget_window=144,
    retarget_clamp=4,
    initial_reward=50 * COIN,
    halving_interval=150,
    coinbase_maturity=100,
    max_block_size=1_000_000,
    max_future_drift=2 * 60 * 60,
    median_time_span=11,
    timewarp_grace=TIMEWARP_GRACE,
)

TESTNET = ChainParams(
    name="testnet",
    address_prefix="tpow",
    magic=b"PWTN",
    genesis_timestamp=1_764_000_000,
    genesis_message="powlab testnet genesis",
    pow_limit_bits=0x1F00FFFF,  # about 65,536 hashes a block at the easiest
    no_retarget=False,
    target_spacing=10,
    retarget_window=60,
    retarget_clamp=4,
    initial_reward=50 * COIN,
    halving_interval=210_000,
    coinbase_maturity=100,
    max_block_size=1_000_000,
    max_future_drift=2 * 60 * 60,
    median_time_span=11,
    timewarp_grace=TIMEWARP_GRACE,
)

NETWORKS: dict[str, ChainParams] = {p.name: p for p in (REGTEST, TESTNET)}
ADDRESS_PREFIXES: dict[str, str] = {p.address_prefix: p.name for p in NETWORKS.values()}


def network_params(name: str, overrides: Mapping[str, Any] | None = None) -> ChainParams:
    if name not in NETWORKS:
        raise ParamsError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    params = NETWORKS[name]
    return params.with_overrides(overrides) if overrides else params
