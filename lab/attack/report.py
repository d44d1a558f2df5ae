"""Printing the timeline and verdict, and drawing the PNG."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from lab.plotting import pyplot

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
    roles = data.get("roles") or {}
    print(f"  roles: attacker {roles.get('attacker')}, victim {roles.get('victim')}, "
          f"honest miners {', '.join(roles.get('honest') or []) or '-'}")


def plot_attack(data: dict[str, Any], path: Path) -> None:
    """Both branches' heights (the attacker's node and the victim's node) and the victim's
    confirmations of its payment, over time, with the scenario's key moments marked."""
    plt = pyplot()
    samples = data.get("samples") or []
    roles = data.get("roles") or {}
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ts = [s["t"] for s in samples]
    for key, label, style in (
        ("attacker", f"attacker's node {roles.get('attacker')} (its branch)", "C3"),
        ("honest", f"victim's node {roles.get('victim')} (honest branch)", "C0"),
    ):
        ys = [s.get(key) for s in samples]
        pts = [(t, y) for t, y in zip(ts, ys, strict=True) if y is not None]
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color=style,
                    label=label)
    ax.set_xlabel("seconds since the attack started")
    ax.set_ylabel("chain height")
    ax.grid(True, alpha=0.3)
    confs = [(s["t"], s["victim_confirmations"]) for s in samples
             if s.get("victim_confirmations") is not None]
    handles, labels = ax.get_legend_handles_labels()
    if confs:
        ax2 = ax.twinx()
        ax2.step([c[0] for c in confs], [c[1] for c in confs], where="post", color="C2",
                 linestyle="--", label="victim's confirmations of tx1")
        ax2.axhline(0, color="grey", linewidth=0.6)
        ax2.set_ylabel("victim's confirmations (negative: conflicted)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    marks = ("tx1 sent", "tx2 sent", "block released", "block shown to the victim only",
             "private branch published", "gives up", "reconnected", "isolated")
    seen: set[str] = set()
    for event in data.get("timeline", []):
        if event["event"] in marks and event["event"] not in seen:
            seen.add(event["event"])
            ax.axvline(event["t"], color="grey", linestyle=":", linewidth=0.8)
            ax.annotate(event["event"], (event["t"], 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="dimgray")
    ax.legend(handles, labels, fontsize=7, loc="upper left")
    verdict = "success" if data.get("success") else "failed"
    ax.set_title(f"powlab attack {data['attack']}: {verdict}, reorg depth "
                 f"{data.get('reorg_depth')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
