"""The timewarp fix (BIP54's first rule): pure consensus tests, no node.

A retarget window is measured from its own first block to its own last one, as in Bitcoin, so
the step from one window's last block to the next window's first is in no window. The rule: the
first block of a window may be at most `timewarp_grace` seconds earlier than its parent.
"""

from __future__ import annotations

import itertools

import pytest

from consensus.blockbuild import assemble_block
from consensus.errors import ConsensusError
from consensus.params import REGTEST, TESTNET, TIMEWARP_GRACE, ParamsError
from consensus.pow import bits_to_target
from consensus.validation import timewarp_floor
from tests.helpers import ChainBuilder, pkh, regtest, retargeting, solve

WINDOW = 4


def _to_window_end(b: ChainBuilder) -> None:
    """Mine slowly (gaps of 100 s, well above the grace) until the tip is the last block of
    a window."""
    while (b.chain.height + 1) % WINDOW:
        b.mine(1, gap=100)


def test_the_grace_is_one_named_constant_on_both_networks() -> None:
    assert TESTNET.timewarp_grace == REGTEST.timewarp_grace == TIMEWARP_GRACE
    # Far below one window's time: BIP54's 7200 s would be twelve testnet windows.
    assert TESTNET.target_spacing * TESTNET.retarget_window > TIMEWARP_GRACE
    with pytest.raises(ParamsError, match="timewarp_grace"):
        TESTNET.with_overrides({"timewarp_grace": -1})


def test_regtest_keeps_its_genesis_and_has_no_window_starts() -> None:
    # The field cannot matter without retargeting, so it is not committed to there.
    assert REGTEST.genesis_hash.hex().startswith("c96ce6c6")
    assert REGTEST.genesis_hash == regtest(timewarp_grace=99).genesis_hash
    assert TESTNET.genesis_hash != TESTNET.with_overrides({"timewarp_grace": 99}).genesis_hash
    assert all(timewarp_floor(h, 10**6, REGTEST) is None for h in range(0, 400))
    assert timewarp_floor(TESTNET.retarget_window, 10**6, TESTNET) == 10**6 - TIMEWARP_GRACE
    assert timewarp_floor(TESTNET.retarget_window + 1, 10**6, TESTNET) is None
    assert timewarp_floor(0, 10**6, TESTNET) is None


def test_a_window_start_more_than_the_grace_before_its_parent_is_refused() -> None:
    b = ChainBuilder(retargeting(window=WINDOW))
    _to_window_end(b)
    prev = b.chain.tip
    too_early = b.block(timestamp=prev.header.timestamp - TIMEWARP_GRACE - 1)
    # Above the median time past, so only the new rule refuses it.
    assert too_early.header.timestamp > b.chain.median_time_past(prev)
    with pytest.raises(ConsensusError) as info:
        b.chain.accept_header(too_early.header, b.now)
    assert info.value.reason == "time-timewarp-attack"
    assert b.accept(too_early).reason == "time-timewarp-attack"
    assert b.chain.tip == prev
    # Exactly the grace earlier is allowed.
    b.mine(1, timestamp=prev.header.timestamp - TIMEWARP_GRACE)
    assert b.chain.height == prev.height + 1


def test_inside_a_window_only_the_median_time_past_limits_going_back() -> None:
    b = ChainBuilder(retargeting(window=WINDOW))
    b.mine(WINDOW + 1, gap=100)  # tip is the first block of the second window
    prev = b.chain.tip
    assert (prev.height + 1) % WINDOW
    back = b.chain.median_time_past(prev) + 1
    assert back < prev.header.timestamp - TIMEWARP_GRACE
    b.mine(1, timestamp=back)
    assert b.chain.tip.header.timestamp == back


def test_templates_respect_the_rule_after_a_parent_stamped_in_the_future() -> None:
    params = retargeting(window=WINDOW)
    b = ChainBuilder(params)
    b.mine(WINDOW - 2)
    ahead = b.now + params.max_future_drift  # the last block of the window, 2 h ahead
    b.mine(1, timestamp=ahead)
    block = assemble_block(b.chain, [], 0, pkh(1), b.now)
    assert block.header.timestamp == ahead - TIMEWARP_GRACE  # not the miner's own clock
    solved = type(block)(solve(block.header), block.txs)
    assert b.accept(solved).status == "connected"


def _timewarp_targets(grace: int, windows: int) -> list[int]:
    """A majority attacker's classic timewarp: after three fast windows (difficulty 64x the
    limit), `windows` windows in which every block is stamped as early as the rules allow,
    except each window's last block, stamped at the real time; real time runs on schedule.
    Returns the target of each attack window and the one after."""
    params = retargeting(window=WINDOW, timewarp_grace=grace)
    b = ChainBuilder(params)
    b.mine(3 * WINDOW - 1, gap=1)
    real = b.chain.tip.header.timestamp
    targets = []
    for _ in range(windows):
        targets.append(bits_to_target(b.chain.next_bits(b.chain.tip)))
        for _ in range(WINDOW):
            real += params.target_spacing
            if (b.chain.height + 1) % WINDOW == WINDOW - 1:
                b.mine(1, timestamp=real)
            else:
                b.mine(1, timestamp=b.chain.min_timestamp(b.chain.tip))
    targets.append(bits_to_target(b.chain.next_bits(b.chain.tip)))
    return targets


def test_the_classic_timewarp_lowers_difficulty_without_the_rule_and_not_with_it() -> None:
    limit = retargeting(window=WINDOW).pow_limit
    without = _timewarp_targets(grace=10**9, windows=6)
    with_rule = _timewarp_targets(grace=TIMEWARP_GRACE, windows=6)
    assert without[0] == with_rule[0] <= limit // 60
    # Without the rule every window's first block goes back to the frozen time, so each window
    # measures all the time since the attack began, and difficulty falls to the limit.
    assert without[-1] == limit
    # With it a window's first block is at most the grace before the previous (real-time)
    # block, so each window measures what really passed plus at most the grace: the target
    # grows by (window time + grace) / window time per window (1.25 here, where the grace is a
    # quarter of a 4-block window; 1.017 on testnet's 600 s windows), not 4.
    window_time = WINDOW * retargeting(window=WINDOW).target_spacing
    for before, after in itertools.pairwise(with_rule[1:]):
        assert after * window_time <= before * (window_time + TIMEWARP_GRACE) * 1.001
    # Without it the time each window measures grows with every window (64x the limit down to
    # the limit in five windows here: 58, 28, 9.4, 2.3, 1).
    for before, after in itertools.pairwise(without[1:]):
        assert after == limit or after > before * 2
