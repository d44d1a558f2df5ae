"""Mining is a Poisson process from the moment it is switched on (issue 12, item 5).

The rate cap (`HashBudget`) runs here in virtual time and the hashes are real double SHA-256,
so the checks count hashes and virtual seconds, never wall-clock time: no banked credit after
idleness or a pause, a time-to-first-block distribution that matches the geometric/exponential
law within a binomial bound, and no block connected from a result that arrives after
`setmining false` returned.
"""

from __future__ import annotations

import asyncio
import math
import random
from types import SimpleNamespace
from typing import Any

import pytest

from consensus.block import Block, BlockHeader
from node.miner.hashing import make_scanner
from node.miner.miner import Miner, MinerError
from node.miner.pool import PACE_QUANTUM_S, Found, HashBudget, _Worker


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def granted_within(budget: HashBudget, clock: Clock, seconds: float) -> int:
    """Hashes the budget lets a worker do in the next `seconds` of virtual time."""
    end = clock.t + seconds
    total = 0
    while True:
        n, wait = budget.grant()
        if n:
            budget.spend(n)
            total += n
            continue
        if clock.t + wait > end:
            return total
        clock.t += wait


def test_no_credit_banked_while_idle() -> None:
    clock = Clock()
    budget = HashBudget(1000.0, clock)
    granted_within(budget, clock, 1.0)  # hashing for a while
    clock.t += 3600.0  # then idle (no job) for an hour
    budget.restart()  # what a worker does when a job starts after idleness
    assert budget.grant()[0] == 0  # nothing available at the instant of switching on
    for window in (0.005, 0.05, 0.5):
        clock2 = Clock()
        b = HashBudget(1000.0, clock2)
        clock2.t += 3600.0
        b.restart()
        assert granted_within(b, clock2, window) <= 1000.0 * window


def test_no_credit_banked_while_paused() -> None:
    clock = Clock()
    budget = HashBudget(1000.0, clock)
    budget.set_rate(0.0)  # paused (hashrate 0)
    clock.t += 600.0
    assert budget.grant()[0] == 0
    budget.set_rate(1000.0)
    assert granted_within(budget, clock, 0.1) <= 100


def test_rate_is_met_while_hashing() -> None:
    clock = Clock()
    budget = HashBudget(1000.0, clock)
    done = granted_within(budget, clock, 10.0)
    assert 1000 * 10 - 2 * 1000 * PACE_QUANTUM_S <= done <= 1000 * 10


def test_worker_restarts_budget_when_a_job_starts_after_idleness() -> None:
    clock = Clock()
    worker = _Worker(0, None, None, None, None, 1000.0, 1)  # type: ignore[arg-type]
    worker.bucket.clock = clock
    worker.bucket.tokens = 500.0  # as if banked
    clock.t += 100.0
    worker.handle(("job", 1, 1, bytes(76), 0, 0, 100))
    assert worker.bucket.tokens == 0.0 and worker.bucket.refilled_at == clock.t
    assert worker.bucket.grant()[0] == 0
    # A job switch while hashing keeps the (small) running credit: no reset, no burst.
    worker.bucket.tokens = 3.0
    worker.handle(("job", 2, 2, bytes(76), 0, 0, 100))
    assert worker.bucket.tokens == 3.0


RATE = 100.0  # hashes/s: one hash per pacing quantum, so granularity does not blur the law
P_WIN = 1 / 64  # target 2**250: one hash in 64 wins
TARGET = (1 << 250) - 1
TRIALS = 2000
Z_ALPHA = 3.29  # two-sided alpha = 1e-3


def first_block_time(rng: random.Random, clock: Clock, idle: float) -> float:
    """Virtual seconds from switching on (after `idle` seconds without a job) to a block."""
    budget = HashBudget(RATE, clock)
    clock.t += idle
    budget.restart()
    start = clock.t
    scan = make_scanner(rng.randbytes(76), TARGET)
    nonce_at = 0
    while True:
        n, wait = budget.grant()
        if n == 0:
            clock.t += wait
            continue
        nonce, done = scan(nonce_at, n)
        budget.spend(done)
        nonce_at += done
        if nonce is not None:
            return clock.t - start


def test_time_to_first_block_is_exponential_from_switch_on() -> None:
    rng = random.Random(12)
    clock = Clock()
    times = [first_block_time(rng, clock, idle=rng.uniform(0, 100)) for _ in range(TRIALS)]
    mean = 1 / (RATE * P_WIN)
    for fraction_of_mean in (0.07, 0.25, 1.0):
        window = fraction_of_mean * mean
        # k-th hash is done at k / RATE: P(T <= w) = 1 - (1 - p) ** floor(w * RATE + eps)
        expected = 1 - (1 - P_WIN) ** math.floor(window * RATE + 1e-9)
        observed = sum(t <= window + 1e-9 for t in times)
        bound = Z_ALPHA * math.sqrt(TRIALS * expected * (1 - expected))
        assert abs(observed - TRIALS * expected) <= bound, (window, observed, TRIALS * expected)
    # the continuous limit agrees too (p is small): the exponential CDF at 7% of the mean
    assert abs((1 - math.exp(-0.07)) - (1 - (1 - P_WIN) ** math.floor(0.07 * mean * RATE))) < 0.02


def test_banked_credit_would_fail_the_check() -> None:
    """The check above can fail: a bucket that keeps its full capacity at switch-on (the old
    behaviour) puts too many first blocks into the first instants."""
    rng = random.Random(13)
    hits = 0
    burst = int(HashBudget(RATE).capacity())
    window_hashes = 4
    for _ in range(TRIALS):
        scan = make_scanner(rng.randbytes(76), TARGET)
        nonce, _ = scan(0, burst + window_hashes)  # banked burst, then the window's hashes
        hits += nonce is not None
    expected = 1 - (1 - P_WIN) ** window_hashes
    bound = Z_ALPHA * math.sqrt(TRIALS * expected * (1 - expected))
    assert hits - TRIALS * expected > bound


# ----------------------------------------------------------------------------- no block after off


class FakePool:
    processes = 1

    def __init__(self) -> None:
        self.results: asyncio.Queue[Any] = asyncio.Queue()
        self.jobs: list[int] = []
        self.cleared = 0

    def submit_job(self, job_id: int, header76: bytes, target: int) -> None:
        self.jobs.append(job_id)

    async def next_result(self) -> Any:
        return await self.results.get()

    def clear_job(self) -> None:
        self.cleared += 1

    def set_hashrate(self, rate: float | None) -> None:
        pass

    def hashrate_measured(self) -> float:
        return 0.0


def fake_miner() -> tuple[Miner, FakePool, list[Block]]:
    submitted: list[Block] = []
    tip = SimpleNamespace(hash=bytes(32))
    node = SimpleNamespace(
        chain=SimpleNamespace(tip=tip, height=0),
        submit_block=lambda b: submitted.append(b) or SimpleNamespace(status="connected"),
    )
    miner = Miner(node, bytes(20), 1)  # type: ignore[arg-type]
    header = BlockHeader(1, bytes(32), bytes(32), 0, 0x207FFFFF, 0)
    miner.template = lambda payout_pkh=None, extra_nonce=0: Block(header, [])  # type: ignore
    pool = FakePool()
    miner.pool = pool  # type: ignore[assignment]
    return miner, pool, submitted


async def test_found_result_is_connected_while_on() -> None:
    miner, pool, submitted = fake_miner()
    await miner.set_mining(True)
    await asyncio.sleep(0)
    pool.results.put_nowait(Found(pool.jobs[-1], 7, 0))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(submitted) == 1 and submitted[0].header.nonce == 7
    await miner.set_mining(False)


async def test_no_block_after_setmining_false_returns() -> None:
    miner, pool, submitted = fake_miner()
    await miner.set_mining(True)
    await asyncio.sleep(0)
    job = pool.jobs[-1]
    template = miner.template()
    await miner.set_mining(False)
    # A worker's nonce for the old job arrives late: on the result queue, and straight at the
    # submit path (as if the task had already taken it from the pool).
    pool.results.put_nowait(Found(job, 7, 0))
    for _ in range(20):
        await asyncio.sleep(0)
    assert miner._submit_found(template, 7, job) is False
    assert submitted == []
    assert pool.cleared == 1


async def test_found_for_a_replaced_job_or_old_tip_is_discarded() -> None:
    miner, pool, submitted = fake_miner()
    await miner.set_mining(True)
    await asyncio.sleep(0)
    template = miner.template()
    job = pool.jobs[-1]
    assert miner._submit_found(template, 1, job - 1) is False  # superseded job
    miner.node.chain.tip = SimpleNamespace(hash=b"\x01" * 32)  # type: ignore[attr-defined]
    assert miner._submit_found(template, 1, job) is False  # the tip moved on
    assert submitted == []
    await miner.set_mining(False)


# ----------------------------------------------------------------------------- the real pool


async def test_real_pool_hashes_nothing_banked_after_off_and_on() -> None:
    """At 2 H/s (one worker) the first hash after switching on is due 0.5 s later. The old
    bucket kept three hashes through a pause and spent them at once. Load can only delay a
    hash, never bring it forward, so "no hash in the first 0.2 s" holds on a busy machine."""
    from node.miner.pool import MinerPool

    pool = MinerPool(processes=1, hashrate=2.0)
    await asyncio.to_thread(pool.start)
    try:
        header = bytes(range(76))
        pool.submit_job(1, header, 0)  # impossible target: hashes, never finds
        await asyncio.sleep(1.2)
        assert pool.total_hashes() >= 1
        for job in (2, 3):
            pool.clear_job()  # mining off ...
            await asyncio.sleep(1.5)  # ... long enough for the old bucket to fill up
            before = pool.total_hashes()
            pool.submit_job(job, header, 0)  # ... and on again
            await asyncio.sleep(0.2)
            assert pool.total_hashes() == before
    finally:
        await asyncio.to_thread(pool.close)


async def test_a_cap_can_be_set_and_lifted_again() -> None:
    """A scenario gives a node back without the cap it found it without (-1 lifts it)."""
    miner, pool, _ = fake_miner()
    rates: list[float | None] = []
    pool.set_hashrate = rates.append  # type: ignore[method-assign]
    await miner.set_mining(False, 0.4)
    assert miner.hashrate == 0.4
    await miner.set_mining(False, -1)
    assert miner.hashrate is None and rates == [0.4, None]
    with pytest.raises(MinerError, match="positive"):
        await miner.set_mining(True, 0)
