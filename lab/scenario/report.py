"""Printing the timeline and verdict, and drawing the PNG."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from lab.plotting import pyplot, save_figure

SKIP_KEYS = ("t", "node", "event")


# --------------------------------------------------------------------------- from the timeline


def deepest_reorg(events: Iterable[dict[str, Any]], nodes: Iterable[str]) -> int:
    """The deepest reorganisation any of `nodes` performed, from the timeline's reorg events
    (the monitor writes one per tip change that disconnected blocks)."""
    names = set(nodes)
    return max((int(e.get("depth") or 0) for e in events
                if e.get("event") == "reorg" and e.get("node") in names), default=0)


def shows_conflict(event: dict[str, Any]) -> bool:
    """An event in which a node reports a transaction as double-spent: an alert, recorded
    conflicts, or the conflicted status."""
    return bool(event.get("double_spend_alert") or event.get("conflicts")
                or event.get("status") == "conflicted")


def first_conflict_seen(events: Iterable[dict[str, Any]], node: str, label: str = "tx1",
                        before: float | None = None) -> dict[str, Any] | None:
    """The first event in which `node` reported `label` (tx1: the victim's payment) as
    double-spent, at or before time `before` if given, or None."""
    return next((e for e in events if e.get("node") == node and e.get("event") == label
                 and shows_conflict(e) and (before is None or e["t"] <= before)), None)


def warned_before_loss(events: list[dict[str, Any]], node: str) -> bool:
    """`node` reported the victim's payment as double-spent before it first reorganised (in
    timeline order: a conflict it reports with or after the reorg is the loss itself, not a
    warning)."""
    for e in events:
        if e.get("node") != node:
            continue
        if e.get("event") == "reorg":
            return False
        if e.get("event") == "tx1" and shows_conflict(e):
            return True
    return False


def line_echo(stream: TextIO | None = None) -> Callable[[dict[str, Any]], None]:
    """A timeline echo for a terminal or a pipe: one event per line, written whole under a
    lock (the monitor's thread and the scenario's thread add events at the same time, and
    print()'s separate text and newline writes could interleave into merged lines and a
    blank line)."""
    lock = threading.Lock()

    def echo(event: dict[str, Any]) -> None:
        out = stream if stream is not None else sys.stdout
        with lock:
            out.write(format_event(event) + "\n")
            out.flush()

    return echo


def format_event(event: dict[str, Any]) -> str:
    extra = " ".join(f"{k}={_short(v)}" for k, v in event.items() if k not in SKIP_KEYS)
    return f"  {event['t']:8.3f}s  {event['node']:<6} {event['event']:<32} {extra}".rstrip()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(_short(v) for v in value) or "[]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def print_report(data: dict[str, Any], timeline_printed: bool) -> None:
    if not timeline_printed:
        print("timeline:")
        for event in data["timeline"]:
            print(format_event(event))
    print()
    print(f"verdict: {data['verdict']}")
    print(f"  success={data['success']} reorg_depth={data['reorg_depth']} "
          f"victim_confirmations_seen={data['victim_confirmations_seen']} "
          f"detected={data['detected']}")
    roles = data.get("roles")
    if roles:
        print(f"  roles: attacker {roles.get('attacker')}, victim {roles.get('victim')}, "
              f"honest miners {', '.join(roles.get('honest') or []) or '-'}")
    print(f"  seed={data.get('seed')} (repeat the run with --seed {data.get('seed')})")


# --------------------------------------------------------------------------- plots

# Distinct at a glance and in black and white: colour, line style, marker and drawing order.
ATTACKER_STYLE = {"color": "#d62728", "linestyle": "--", "marker": "o", "linewidth": 2.4,
                  "markersize": 5, "zorder": 4}
HONEST_STYLE = {"color": "#1f77b4", "linestyle": "-", "marker": "s", "linewidth": 2.0,
                "markersize": 4, "zorder": 3}
CONF_STYLE = {"color": "#2ca02c", "linestyle": "-", "marker": "D", "linewidth": 1.8,
              "markersize": 4, "zorder": 3}
MARKS = ("tx1 sent", "tx2 sent", "block mined", "block released",
         "block shown to the victim only", "private branch published", "gives up",
         "reconnected", "isolated")
SLIDE = (11, 6.2)  # inches: 16:9-ish at 110 dpi, readable on a projector


def headline(data: dict[str, Any]) -> str:
    """The verdict's own first words ("SUCCESS", "FAILED", "CHAIN SPLIT, no reversal", …):
    the title repeats the verdict rather than re-deriving it from `success`."""
    verdict = str(data.get("verdict") or "")
    head = verdict.split(" — ", 1)[0]
    prefix = f"{data.get('attack')}: "
    head = head.removeprefix(prefix).strip()
    return head or ("SUCCESS" if data.get("success") else "FAILED")


def plot_title(data: dict[str, Any]) -> str:
    command = f"powlab {data.get('command') or 'attack'} {data.get('attack')}"
    if data.get("attack") == "selfish":
        lo, hi = (data.get("ci95") or [0.0, 1.0])[:2]
        return (f"{command}: {headline(data)} "
                f"(α = {data.get('alpha')}, γ = {data.get('gamma')})\n"
                f"attacker's share {data.get('attacker_share', 0):.3f} [95 % CI {lo:.3f}–"
                f"{hi:.3f}] · deepest honest-node reorg {data.get('reorg_depth')} blocks")
    detected = "yes" if data.get("detected") else "no"
    return (f"{command}: {headline(data)}\n"
            f"deepest victim reorg {data.get('reorg_depth')} blocks · victim saw "
            f"{data.get('victim_confirmations_seen')} confirmations · detected: {detected}")


def _changes(samples: list[dict[str, Any]], key: str) -> list[tuple[float, int]]:
    """(t, value) where the value changes (and the last sample), skipping unknowns."""
    pts: list[tuple[float, int]] = []
    for s in samples:
        value = s.get(key)
        if value is None:
            continue
        if not pts or pts[-1][1] != value:
            pts.append((s["t"], int(value)))
    if pts and samples and samples[-1].get(key) is not None and pts[-1][0] != samples[-1]["t"]:
        pts.append((samples[-1]["t"], int(samples[-1][key])))
    return pts


def _step(ax: Any, pts: list[tuple[float, int]], label: str, style: dict[str, Any]) -> None:
    if not pts:
        return
    line_style = {k: v for k, v in style.items() if k not in ("marker", "markersize")}
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=label, **line_style)
    # Markers only where the value changes, so a dense poll does not blur the line.
    ax.plot([p[0] for p in pts[:-1] or pts], [p[1] for p in pts[:-1] or pts],
            linestyle="none", marker=style["marker"], markersize=style["markersize"],
            color=style["color"], zorder=style["zorder"])


def _integer_axis(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _mark_events(fig: Any, axes: list[Any], events: list[dict[str, Any]]) -> list[str]:
    """Numbered vertical lines on every panel for the scenario's key moments; the numbers
    sit above the top panel (staggered when close) and the key goes in the legend, so no
    label is rotated or lands on another one."""
    seen: set[str] = set()
    marks = []
    for event in events:
        if event["event"] in MARKS and event["event"] not in seen:
            seen.add(event["event"])
            marks.append(event)
    if not marks:
        return []
    top = axes[0]
    x0, x1 = top.get_xlim()
    span = max(1e-9, x1 - x0)
    keys, last_x, level = [], None, 0
    for i, event in enumerate(marks, 1):
        for ax in axes:
            ax.axvline(event["t"], color="0.45", linestyle=":", linewidth=1.0, zorder=1)
        level = level + 1 if last_x is not None and (event["t"] - last_x) / span < 0.04 else 0
        last_x = event["t"]
        top.annotate(str(i), (event["t"], 1.0), xycoords=("data", "axes fraction"),
                     xytext=(0, 3 + 12 * level), textcoords="offset points", ha="center",
                     va="bottom", fontsize=9, fontweight="bold", color="0.25",
                     annotation_clip=False)
        keys.append(f"{i}: {event['event']} ({event['t']:.1f} s, {event['node']})")
    return keys


def build_attack_figure(data: dict[str, Any]) -> Any:
    """The figure `--plot` saves (returned, not saved, so tests can inspect its structure)."""
    if data.get("attack") == "selfish":
        return build_selfish_figure(data)
    plt = pyplot()
    samples = data.get("samples") or []
    roles = data.get("roles") or {}
    fig, (ax, ax2) = plt.subplots(2, 1, sharex=True, figsize=SLIDE,
                                  gridspec_kw={"height_ratios": [3, 2]})
    _step(ax, _changes(samples, "honest"),
          f"victim's node {roles.get('victim')} (honest branch)", HONEST_STYLE)
    _step(ax, _changes(samples, "attacker"),
          f"attacker's node {roles.get('attacker')} (its branch)", ATTACKER_STYLE)
    ax.set_ylabel("chain height")
    _integer_axis(ax.yaxis)
    ax.grid(True, alpha=0.3)
    _step(ax2, _changes(samples, "victim_confirmations"),
          "victim's confirmations of tx1", CONF_STYLE)
    ax2.axhline(0, color="0.3", linewidth=0.8)
    ax2.set_ylabel("confirmations of tx1\n(negative: conflicted)")
    ax2.set_xlabel("seconds since the attack started")
    _integer_axis(ax2.yaxis)
    ax2.grid(True, alpha=0.3)
    keys = _mark_events(fig, [ax, ax2], data.get("timeline", []))
    _legend_outside(ax, ax2, keys)
    fig.suptitle(plot_title(data), fontsize=12)
    fig.tight_layout()
    return fig


def _legend_outside(ax: Any, ax2: Any, keys: list[str]) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    handles, labels = handles + h2, labels + l2
    for key in keys:
        handles.append(Line2D([], [], color="0.45", linestyle=":"))
        labels.append(key)
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9,
              frameon=False, borderaxespad=0)


def selfish_lead(events: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """The attacker's private lead (its branch minus the honest one since the fork) after
    each block of a selfish run, from the timeline: `attacker finds` carries the new lead,
    `honest finds` the lead before that block (an honest block takes one off; at a lead of
    one or two the attacker publishes, and the lead is then 0)."""
    lead = [(0.0, 0)]
    for e in events:
        if e["event"] == "attacker finds (private)":
            lead.append((e["t"], int(e.get("lead") or 0)))
        elif e["event"] == "honest finds":
            before = int(e.get("lead") or 0)
            lead.append((e["t"], before - 1 if before >= 3 else 0))
    return lead


def build_selfish_figure(data: dict[str, Any]) -> Any:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=SLIDE)
    lead = selfish_lead(data.get("timeline", []))
    ax.fill_between([p[0] for p in lead], [p[1] for p in lead], step="post",
                    color=ATTACKER_STYLE["color"], alpha=0.25, linewidth=0)
    ax.step([p[0] for p in lead], [p[1] for p in lead], where="post",
            label="attacker's private lead (blocks)", color=ATTACKER_STYLE["color"],
            linewidth=1.2, zorder=ATTACKER_STYLE["zorder"])
    ax.set_xlabel("seconds since the attack started")
    ax.set_ylabel("private lead (blocks)")
    _integer_axis(ax.yaxis)
    ax.set_ylim(bottom=-0.2)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
              borderaxespad=0)

    owners = str(data.get("main_chain_owners") or "")
    alpha = data.get("alpha")
    if owners:
        heights = list(range(1, len(owners) + 1))
        ours = 0
        share = []
        for i, owner in enumerate(owners, 1):
            ours += owner == "A"
            share.append(ours / i)
        ax2.plot(heights, share, label="attacker's share of main-chain blocks so far",
                 **{k: v for k, v in ATTACKER_STYLE.items()
                    if k not in ("marker", "markersize")})
        lo, hi = (data.get("ci95") or [None, None])[:2]
        if lo is not None:
            ax2.errorbar([len(owners)], [share[-1]], yerr=[[max(0.0, share[-1] - lo)],
                                                         [max(0.0, hi - share[-1])]],
                         fmt="o", color=ATTACKER_STYLE["color"], capsize=5, zorder=5,
                         label="final share, 95 % CI (batch means)")
    if alpha is not None:
        ax2.axhline(alpha, label=f"hash-rate share α = {alpha:g} (honest revenue)",
                    **{k: v for k, v in HONEST_STYLE.items() if k not in ("marker",
                                                                          "markersize")})
    if data.get("eyal_sirer") is not None:
        ax2.axhline(data["eyal_sirer"], color="0.2", linestyle=":", linewidth=1.8,
                    label=f"Eyal–Sirer prediction {data['eyal_sirer']:.3f}")
    ax2.set_xlabel("main-chain blocks since the start")
    ax2.set_ylabel("attacker's revenue share")
    _integer_axis(ax2.xaxis)
    ax2.set_ylim(0, 1)
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
               borderaxespad=0)
    fig.suptitle(plot_title(data), fontsize=12)
    fig.tight_layout()
    return fig


def plot_attack(data: dict[str, Any], path: Path) -> None:
    """Both branches' heights (the attacker's node and the victim's node) and the victim's
    confirmations of its payment over time, with the scenario's key moments marked; for
    selfish mining the private lead over time and the revenue share along the chain."""
    save_figure(build_attack_figure(data), path)
