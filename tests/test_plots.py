"""The plots' structure, not their pixels: integer ticks on integer axes, attacker and honest
lines that differ, titles that repeat the verdict, labels that are not rotated, the selfish
plot's lead and revenue panels, the stale-rate plot's intervals and references."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("matplotlib")

from matplotlib.ticker import MaxNLocator

from lab.plotting import pyplot
from lab.scenario.report import (
    ATTACKER_STYLE,
    HONEST_STYLE,
    build_attack_figure,
    selfish_lead,
)
from lab.simulate.plots import (
    build_doublespend_figure,
    build_stale_rate_figure,
)
from lab.simulate.presets import reference_stale_rates


def split_run() -> dict[str, Any]:
    """A majority run against finality enforcement, as --json records it (trimmed)."""
    samples = [{"t": t / 4, "attacker": 110 + t // 3, "honest": 110 + t // 5,
                "victim_confirmations": None if t < 2 else t // 5} for t in range(40)]
    return {
        "attack": "majority", "success": False, "reorg_depth": 0, "detected": True,
        "victim_confirmations_seen": 7,
        "verdict": "majority: CHAIN SPLIT, no reversal — the victim enforces finality …",
        "roles": {"attacker": "n3", "victim": "n5", "honest": ["n1", "n2"]},
        "samples": samples,
        "timeline": [{"t": 0.3, "node": "n3", "event": "isolated"},
                     {"t": 0.31, "node": "n5", "event": "tx1 sent"},
                     {"t": 0.32, "node": "n1", "event": "tx2 sent"},
                     {"t": 9.0, "node": "n3", "event": "private branch published"}],
    }


@pytest.fixture
def close_figures() -> Any:
    yield
    pyplot().close("all")


def test_attack_plot_integer_axes_distinct_lines_and_verdict_title(close_figures: Any) -> None:
    fig = build_attack_figure(split_run())
    heights, confs = fig.axes[0], fig.axes[1]
    for axis in (heights.yaxis, confs.yaxis):
        locator = axis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        ticks = [t for t in axis.get_ticklocs() if axis.axes.get_ylim()[0] <= t]
        assert all(float(t).is_integer() for t in ticks)
    lines = {line.get_label(): line for line in heights.get_lines()}
    attacker = lines["attacker's node n3 (its branch)"]
    honest = lines["victim's node n5 (honest branch)"]
    assert attacker.get_color() != honest.get_color()
    assert attacker.get_linestyle() != honest.get_linestyle()
    assert attacker.get_zorder() > honest.get_zorder()  # drawn on top, never hidden
    markers = {line.get_marker() for line in heights.get_lines() if line.get_marker() != "None"}
    assert {ATTACKER_STYLE["marker"], HONEST_STYLE["marker"]} <= markers
    title = fig._suptitle.get_text()
    assert "CHAIN SPLIT, no reversal" in title and "failed" not in title.lower()
    assert "reorg 0" in title and "detected: yes" in title


def test_attack_plot_labels_are_not_rotated_and_the_legend_is_outside(
        close_figures: Any) -> None:
    fig = build_attack_figure(split_run())
    top = fig.axes[0]
    texts = [t for t in top.texts]
    assert [t.get_text() for t in texts] == ["1", "2", "3", "4"]
    assert all(t.get_rotation() == 0 for t in texts)
    # Close marks are staggered upwards rather than printed on one another.
    offsets = [t.xyann[1] for t in texts[:3]]
    assert len(set(offsets)) == 3
    legend = top.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= top.get_window_extent().x1 - 1
    assert any("1: isolated" in t.get_text() for t in legend.get_texts())


def test_success_title_follows_the_verdict(close_figures: Any) -> None:
    data = split_run() | {"success": True, "reorg_depth": 5, "verdict":
                          "race: SUCCESS on chain, but the merchant was warned in time — …",
                          "attack": "race"}
    title = build_attack_figure(data)._suptitle.get_text()
    assert "SUCCESS on chain, but the merchant was warned in time" in title
    assert "reorg 5 blocks" in title


def selfish_run() -> dict[str, Any]:
    events, t = [], 0.0
    for who, lead in (("A", 1), ("A", 2), ("A", 3), ("H", 3), ("H", 2), ("A", 1), ("H", 1)):
        t += 0.5
        if who == "A":
            events.append({"t": t, "node": "n3", "event": "attacker finds (private)",
                           "lead": lead})
        else:
            events.append({"t": t, "node": "n1", "event": "honest finds", "lead": lead})
    return {"attack": "selfish", "success": True, "reorg_depth": 3, "detected": False,
            "victim_confirmations_seen": 0, "alpha": 0.45, "gamma": 0.0,
            "attacker_share": 0.6, "ci95": [0.5, 0.7], "eyal_sirer": 0.652,
            "main_chain_owners": "AAAHAHAHHA",
            "verdict": "selfish: SUCCESS — …", "roles": {}, "samples": [],
            "timeline": events}


def test_selfish_lead_follows_the_strategy() -> None:
    assert [v for _, v in selfish_lead(selfish_run()["timeline"])] == [0, 1, 2, 3, 2, 0, 1, 0]


def test_selfish_plot_shows_lead_over_time_and_revenue_share(close_figures: Any) -> None:
    fig = build_selfish_figure_for_test()
    lead_ax, share_ax = fig.axes[0], fig.axes[1]
    assert "lead" in lead_ax.get_ylabel()
    assert isinstance(lead_ax.yaxis.get_major_locator(), MaxNLocator)
    assert "share" in share_ax.get_ylabel()
    labels = [line.get_label() for line in share_ax.get_lines()]
    assert any("α = 0.45" in label for label in labels)
    assert any("Eyal–Sirer" in label for label in labels)
    share = next(line for line in share_ax.get_lines() if "so far" in line.get_label())
    assert list(share.get_ydata())[-1] == pytest.approx(0.6)
    title = fig._suptitle.get_text()
    assert "SUCCESS" in title and "reorg 3 blocks" in title


def build_selfish_figure_for_test() -> Any:
    return build_attack_figure(selfish_run())


def network_runs() -> list[dict[str, Any]]:
    return [{"nodes": 50, "latency": "100ms", "block_interval": b, "blocks": 1500,
             "stale_blocks": s, "stale_rate": s / 1500, "propagation_ms": {"p50": 2000.0}}
            for b, s in ((1, 905), (10, 252), (60, 34), (600, 0))]


def test_stale_rate_plot_has_intervals_and_the_references(close_figures: Any) -> None:
    fig = build_stale_rate_figure(network_runs())
    ax = fig.axes[0]
    assert ax.containers, "no error bars"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("95 % CI" in label for label in labels)
    for ref in reference_stale_rates():
        assert any(f"{ref['stale_rate']:.2%} at {ref['block_interval']:g} s" in label
                   for label in labels)
    assert any("no stale block" in label for label in labels)
    own = [{"block_interval": 60.0, "stale_rate": 0.02, "source": "somebody"}]
    fig = build_stale_rate_figure(network_runs(), own)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("somebody" in label for label in labels)
    assert not any("Gervais" in label for label in labels)


def test_doublespend_plot_integer_confirmations(close_figures: Any) -> None:
    rows = [{"q": 0.1, "z": z, "trials": 100, "empirical": 0.5 ** z if z < 4 else 0.0,
             "ci95": [0.0, 0.6], "nakamoto": 0.5 ** z, "exact": 0.5 ** z} for z in range(6)]
    ax = build_doublespend_figure({"model": "catch-up", "rows": rows}).axes[0]
    locator = ax.xaxis.get_major_locator()
    assert isinstance(locator, MaxNLocator) and locator._integer
