"""Calibrated network presets for `powlab simulate network --preset NAME`.

`bitcoin`: a Bitcoin-like network whose stale rates are checked against the published ones.

Parameters and where they come from (per hop = link latency + block size ÷ bandwidth +
validation delay, store and forward, as `lab.simulate.network` models relay):

- block size: 1 MB at the 10-minute interval, Bitcoin's block size limit and the block size of
  Gervais et al. 2016's Bitcoin simulation (A. Gervais, G. O. Karame, K. Wüst, V. Glykantzis,
  H. Ritzdorf, S. Capkun, "On the Security and Performance of Proof of Work Blockchains",
  ACM CCS 2016, https://eprint.iacr.org/2016/555). At shorter intervals the block size shrinks
  in proportion (constant throughput, 1 MB per 10 minutes): with a fixed 1 MB block the two
  reference points below cannot both hold (a 1-minute interval with 10-minute-sized blocks
  would have several times the 10-minute stale rate, not 1.5 times), so the references are
  read as constant-throughput points. Not below 250 bytes (a header and a coinbase).
- miners: 16, equal shares: the 16 mining pools of Gervais et al.'s Bitcoin row.
- peers per node: 8, Bitcoin Core's default number of outbound connections.
- link latency: uniform 50 ms–350 ms per hop. A Bitcoin hop is three messages (inv, getdata,
  block; Decker & Wattenhofer 2013 describe this relay), so this is about three one-way
  Internet delays of 17 ms–117 ms each (an assumption: typical delays within and between
  continents, not a measured distribution).
- bandwidth: 2 Mbit/s effective per link. Decker & Wattenhofer 2013 ("Information Propagation
  in the Bitcoin Network", IEEE P2P 2013) measured that beyond 20 kB every kilobyte of a block
  adds about 80 ms before a majority of nodes has it, i.e. an effective network-wide throughput
  of about 0.1 Mbit/s, far below the nodes' raw bandwidth, because each hop receives, validates
  and re-announces before sending on. 2 Mbit/s per hop is calibrated, inside that range, to
  Gervais et al.'s stale rates: it is the one fitted parameter.
- validation delay: 200 ms per MB of block per hop (scaled with the block size), the order of
  a 2016 node's verification of a full block (Decker & Wattenhofer 2013 describe the per-hop
  verification before relay that this stands for); an assumption, stated as such.

Scaled for speed, deliberately: 50 nodes rather than Gervais et al.'s ~6000 (every node holds a
real `ChainState`, and the stale rate depends only on the delays between miners; fewer nodes
means fewer hops, which the per-hop bandwidth absorbs), and the number of blocks per interval
is chosen so that about 150 stale blocks are expected, capped at 6000 blocks so that every
reference point runs in a few seconds on one core (5-10 s). At 10 minutes the cap binds: about
90 stale blocks, a relative standard error near 11%, so ±30% is almost three standard errors;
at 1 minute about 130, near 9%. Same seed, same output.

The reference stale rates live in `REFERENCE_STALE_RATES` (one table, used by the CLI, the JSON,
the plot via `reference_stale_rates()` and the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.simulate.network import NetworkConfig

BITCOIN_INTERVAL = 600.0  # seconds
BITCOIN_BLOCK_SIZE = 1_000_000  # bytes at BITCOIN_INTERVAL
MIN_BLOCK_SIZE = 250
BITCOIN_BANDWIDTH_BPS = 2e6
BITCOIN_VALIDATION_PER_MB = 0.2  # seconds per MB per hop
BITCOIN_LATENCY = "uniform:50ms,350ms"
BITCOIN_NODES = 50
BITCOIN_DEGREE = 8
BITCOIN_MINERS = 16
TOLERANCE = 0.30  # relative; the acceptance band

GERVAIS_2016 = ("Gervais et al. 2016, On the Security and Performance of Proof of Work "
                "Blockchains, ACM CCS (https://eprint.iacr.org/2016/555)")


@dataclass(frozen=True)
class Reference:
    block_interval: float  # seconds
    stale_rate: float
    source: str


# The published Bitcoin stale rates this preset is checked against. Only these two points are
# used: they are the values issue 12 quotes from Gervais et al. 2016 for Bitcoin (about 1.5% at
# 10 minutes, 2.2% at 1 minute, from their simulator). The paper's own text could not be
# retrieved here to confirm the table and the remaining intervals (down to 1 s), so no other
# points are claimed; the measured Bitcoin stale rate of their Table I (0.41%, with blocks of
# 534.8 kB on average rather than 1 MB) is a measurement, not a simulation, and is not a
# reference for 1 MB blocks.
REFERENCE_STALE_RATES: tuple[Reference, ...] = (
    Reference(600.0, 0.015, GERVAIS_2016 + ", Bitcoin, 10 min, 1 MB (simulated), as quoted "
              "in issue 12"),
    Reference(60.0, 0.022, GERVAIS_2016 + ", Bitcoin-like, 1 min (simulated), as quoted in "
              "issue 12"),
)


def reference_stale_rates(preset: str = "bitcoin") -> list[dict[str, Any]]:
    """The reference points as plain dicts (for the JSON and the plot)."""
    if preset != "bitcoin":
        raise ValueError(f"unknown preset {preset!r}")
    return [{"block_interval": r.block_interval, "stale_rate": r.stale_rate,
             "source": r.source, "label": "Gervais et al. 2016, Bitcoin, simulated"}
            for r in REFERENCE_STALE_RATES]


def reference_for(block_interval: float) -> Reference | None:
    for ref in REFERENCE_STALE_RATES:
        if abs(ref.block_interval - block_interval) < 1e-9:
            return ref
    return None


PRESETS = ("bitcoin",)


def bitcoin_block_size(block_interval: float) -> int:
    return max(MIN_BLOCK_SIZE, round(BITCOIN_BLOCK_SIZE * block_interval / BITCOIN_INTERVAL))


def bitcoin_blocks(block_interval: float, expected_stale: int = 150, cap: int = 6000) -> int:
    """Enough blocks for about `expected_stale` stale ones at the reference rate (or a rough
    guess of it between references), at most `cap`."""
    ref = reference_for(block_interval)
    guess = ref.stale_rate if ref else 0.02
    return max(200, min(cap, round(expected_stale / guess)))


def bitcoin_config(block_interval: float = BITCOIN_INTERVAL, seed: int = 1,
                   blocks: int | None = None) -> NetworkConfig:
    size = bitcoin_block_size(block_interval)
    return NetworkConfig(
        nodes=BITCOIN_NODES,
        blocks=blocks if blocks is not None else bitcoin_blocks(block_interval),
        block_interval=block_interval,
        latency=BITCOIN_LATENCY,
        degree=BITCOIN_DEGREE,
        miners=BITCOIN_MINERS,
        bandwidth_bps=BITCOIN_BANDWIDTH_BPS,
        block_size=size,
        validation_delay=BITCOIN_VALIDATION_PER_MB * size / 1_000_000,
        seed=seed,
    )


def annotate(run: dict[str, Any], preset: str) -> dict[str, Any]:
    """Add the preset's name, block size and (where there is one) the reference to a run."""
    run["preset"] = preset
    ref = reference_for(run["block_interval"])
    run["reference"] = None if ref is None else {
        "stale_rate": ref.stale_rate,
        "source": ref.source,
        "ratio": run["stale_rate"] / ref.stale_rate,
        "within_tolerance": abs(run["stale_rate"] / ref.stale_rate - 1) <= TOLERANCE,
        "tolerance": TOLERANCE,
    }
    return run
