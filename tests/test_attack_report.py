"""The attack reports say what their timelines show: unit tests on recorded and synthetic
timelines, no testnet."""

from __future__ import annotations

import io
import random
import threading

from lab.attack.finney import finney_verdict
from lab.attack.race import race_verdict
from lab.attack.selfish import batch_means_interval
from lab.scenario.report import (
    deepest_reorg,
    first_conflict_seen,
    format_event,
    line_echo,
    warned_before_loss,
)


def ev(t: float, node: str, event: str, **extra: object) -> dict[str, object]:
    return {"t": t, "node": node, "event": event, **extra}


# A selfish run as the monitor records it: the honest nodes reorganise when the attacker
# publishes; the attacker's own node never does.
SELFISH = [
    ev(0.1, "n3", "attacker finds (private)", lead=1),
    ev(0.9, "n1", "reorg", depth=3, old_tip="a", new_tip="b", height=113),
    ev(1.0, "n2", "reorg", depth=17, old_tip="c", new_tip="d", height=140),
    ev(1.1, "n3", "reorg", depth=40, old_tip="e", new_tip="f", height=141),
    ev(1.2, "n5", "reorg", depth=2, old_tip="g", new_tip="h", height=141),
]


def test_reorg_depth_is_the_deepest_of_the_victim_nodes() -> None:
    assert deepest_reorg(SELFISH, ["n1", "n2", "n4", "n5"]) == 17
    assert deepest_reorg(SELFISH, ["n5"]) == 2
    assert deepest_reorg(SELFISH, ["n4"]) == 0  # the attacker's own reorg does not count


# `attack race --victim-latency 500` with alerts: the victim's node reports the conflict
# 1.9 s before the first block, though the snapshot taken later shows nothing.
RACE = [
    ev(0.20, "n5", "tx1", status="mempool", confirmations=0, accepted_zero_conf=True),
    ev(0.60, "n5", "tx1", status="mempool", confirmations=0, double_spend_alert=True,
       conflicts=["abcd"]),
    ev(2.50, "n1", "block mined", hash="00ff"),
    ev(2.70, "n5", "tx1", status="conflicted", confirmations=-1),
]


def test_race_detects_a_conflict_the_timeline_shows_before_the_block() -> None:
    block = RACE[2]
    alert = first_conflict_seen(RACE, "n5", before=block["t"])
    assert alert is RACE[1]
    text = race_verdict(True, False, True, True, "conflicted", alert, block)
    assert "DETECTED" in text and "1.90s before the first block" in text
    assert "no conflict" not in text and "no alert" not in text
    assert "warned in time" in text


def test_race_without_an_alert_says_so_and_the_loss_is_not_a_warning() -> None:
    quiet = [e for e in RACE if not e.get("double_spend_alert")]
    block = quiet[1]
    assert first_conflict_seen(quiet, "n5", before=block["t"]) is None
    text = race_verdict(True, False, True, True, "conflicted", None, block)
    assert text.startswith("race: SUCCESS —") and "never reported a conflict" in text


def test_majority_and_vector76_warnings_come_before_the_reorg() -> None:
    lost = [ev(1.0, "n5", "tx1", status="final", confirmations=6),
            ev(3.0, "n5", "reorg", depth=6),
            ev(3.0, "n5", "tx1", status="conflicted", confirmations=-1)]
    assert not warned_before_loss(lost, "n5")
    warned = [ev(0.5, "n5", "tx1", status="mempool", double_spend_alert=True), *lost]
    assert warned_before_loss(warned, "n5")


def test_finney_verdict_follows_acceptance() -> None:
    after = {"status": "conflicted", "confirmations": -1}
    yes = finney_verdict(True, True, False, "ab" * 32, "n5", False, after)
    assert yes.startswith("finney: SUCCESS") and "accepted at 0 confirmations" in yes
    no = finney_verdict(True, False, True, "ab" * 32, "n5", False, after)
    assert no.startswith("finney: FAILED") and "accepted at 0 confirmations" not in no
    assert "flagged as double-spent and not accepted" in no
    lost = finney_verdict(False, True, False, "ab" * 32, "n5", True,
                          {"status": "confirmed", "confirmations": 1})
    assert lost.startswith("finney: FAILED — an honest block came first")


def test_batch_means_interval_is_wider_than_binomial_on_correlated_runs() -> None:
    # Runs of ten blocks of one owner, as overrides and lost ties produce: strongly
    # correlated, so the batch-means interval must be wider than a binomial one.
    rng = random.Random(1)
    owners: list[bool] = []
    while len(owners) < 300:
        owners += [rng.random() < 0.5] * 10
    lo, hi, shares = batch_means_interval(owners)
    share = sum(owners) / len(owners)
    binomial_half = 1.96 * (share * (1 - share) / len(owners)) ** 0.5
    assert len(shares) == 10 and lo <= share <= hi
    assert (hi - lo) / 2 > 1.5 * binomial_half
    # Independent blocks: close to the binomial width.
    independent = [rng.random() < 0.5 for _ in range(3000)]
    lo, hi, _ = batch_means_interval(independent)
    assert 0.6 < (hi - lo) / 2 / (1.96 * (0.25 / 3000) ** 0.5) < 1.6
    assert batch_means_interval([True, False, True]) == (0.0, 1.0, [])


def test_piped_timeline_writes_one_whole_line_per_event() -> None:
    out = io.StringIO()
    echo = line_echo(out)
    events = [ev(i / 1000, f"n{i % 5}", "tip", height=i) for i in range(400)]
    threads = [threading.Thread(target=lambda k=k: [echo(e) for e in events[k::4]])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().split("\n")
    assert lines[-1] == ""  # ends with a newline
    assert sorted(lines[:-1]) == sorted(format_event(e) for e in events)
    assert all(line.strip() for line in lines[:-1])  # no blank line
