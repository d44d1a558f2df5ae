"""PNG plots of simulation results (matplotlib, headless: lab.plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.plotting import pyplot, save_figure
from lab.simulate.presets import reference_stale_rates

# The reference stale rates come from the one table the simulator's preset is checked against.


def stale_interval(run: dict[str, Any]) -> tuple[float, float]:
    """95 % interval of a run's stale rate: the run's own if it carries one, else Wilson's
    on stale blocks out of all blocks mined."""
    if run.get("stale_ci95"):
        lo, hi = run["stale_ci95"]
        return float(lo), float(hi)
    from consensus.attack_theory import wilson_interval

    return wilson_interval(int(run["stale_blocks"]), int(run["blocks"]))


def build_stale_rate_figure(runs: list[dict[str, Any]],
                            references: list[dict[str, Any]] | None = None) -> Any:
    from matplotlib.ticker import FuncFormatter, LogLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.6))
    runs = sorted(runs, key=lambda r: r["block_interval"])
    xs = [r["block_interval"] for r in runs]
    ys = [r["stale_rate"] for r in runs]
    cis = [stale_interval(r) for r in runs]
    zero = [(x, hi) for x, y, (_, hi) in zip(xs, ys, cis, strict=True) if y <= 0]
    if zero:
        # No stale block at all: on a log axis only the interval's upper end can be shown.
        ax.plot([z[0] for z in zero], [z[1] for z in zero], "v", color="#1f77b4",
                markersize=8, linestyle="none", label="no stale block: 95 % upper bound")
    ax.errorbar(xs, ys, yerr=[[max(0.0, y - lo) for y, (lo, _) in zip(ys, cis, strict=True)],
                              [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis, strict=True)]],
                fmt="o-", color="#1f77b4", capsize=4, linewidth=2, markersize=6, zorder=3,
                label="simulated stale rate, 95 % CI")
    if references is None:
        references = next((r["references"] for r in runs if r.get("references")), None)
    for ref in references if references is not None else reference_stale_rates():
        measured = ref.get("kind") == "measured"
        ax.plot([ref["block_interval"]], [ref["stale_rate"]], linestyle="none",
                marker="D" if measured else "*", markersize=9 if measured else 14,
                markerfacecolor="none" if measured else "#ff7f0e",
                markeredgecolor="#ff7f0e", markeredgewidth=1.8, zorder=4,
                label=f"{ref['stale_rate']:.2%} at {ref['block_interval']:g} s: "
                      f"{ref.get('label') or ref['source']}")
    # Stale rates span orders of magnitude: log-log, with the intervals' own numbers on the
    # x axis and percentages on the y axis.
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted(set(xs)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g} %"))
    # Between the decades only 2 and 5 are labelled: more would crowd the axis.
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v * 100:g} %"))
    ax.set_xlabel("mean block interval (s, log scale)")
    ax.set_ylabel("stale (orphan) rate (log scale)")
    p50 = runs[0]["propagation_ms"]["p50"] / 1000
    ax.axvline(p50, color="grey", linestyle="--",
               label=f"median block propagation {p50:.2f} s (first run)")
    preset = runs[0].get("preset")
    ax.set_title(f"powlab simulate network: stale rate vs block interval\n{runs[0]['nodes']} "
                 f"nodes, latency {runs[0]['latency']}" + (f", preset {preset}" if preset
                                                            else ""))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    ax.grid(True, alpha=0.3, which="major")
    fig.tight_layout()
    return fig


def plot_stale_rate(runs: list[dict[str, Any]], path: Path,
                    references: list[dict[str, Any]] | None = None) -> None:
    save_figure(build_stale_rate_figure(runs, references), path)


def build_doublespend_figure(data: dict[str, Any]) -> Any:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.6))
    for q in sorted({r["q"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["q"] == q]
        zs = [r["z"] for r in rows]
        line = ax.plot(zs, [r["exact"] for r in rows], "-", linewidth=2,
                       label=f"q={q:g} exact")[0]
        ax.plot(zs, [r["nakamoto"] for r in rows], ":", color=line.get_color(), linewidth=2,
                label=f"q={q:g} Nakamoto")
        hit = [r for r in rows if r["empirical"] > 0]
        emp = [r["empirical"] for r in hit]
        err_lo = [max(0.0, e - max(r["ci95"][0], e * 1e-3))
                  for e, r in zip(emp, hit, strict=True)]
        err_hi = [max(0.0, r["ci95"][1] - e) for e, r in zip(emp, hit, strict=True)]
        ax.errorbar([r["z"] for r in hit], emp, yerr=[err_lo, err_hi], fmt="o",
                    color=line.get_color(), markersize=5, capsize=3,
                    label=f"q={q:g} simulated, 95 % CI")
        # No success in any trial: a log axis can only show the interval's upper end.
        none = [r for r in rows if r["empirical"] <= 0]
        if none:
            ax.plot([r["z"] for r in none], [r["ci95"][1] for r in none], "v",
                    color=line.get_color(), markersize=7, linestyle="none",
                    label=f"q={q:g} no success: 95 % upper bound")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("confirmations z")
    ax.set_ylabel("P(double spend succeeds)")
    trials = data.get("trials") or (data["rows"][0].get("trials") if data["rows"] else None)
    ax.set_title(f"powlab simulate doublespend: model {data['model']}"
                 + (f", {trials:,} trials per point" if trials else ""))
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              borderaxespad=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def plot_doublespend(data: dict[str, Any], path: Path) -> None:
    save_figure(build_doublespend_figure(data), path)


def build_selfish_figure(data: dict[str, Any]) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.6))
    for gamma in sorted({r["gamma"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["gamma"] == gamma]
        alphas = [r["alpha"] for r in rows]
        line = ax.plot(alphas, [r["eyal_sirer"] for r in rows], "-", linewidth=2,
                       label=f"γ={gamma:g} Eyal–Sirer")[0]
        shares = [r["attacker_share"] for r in rows]
        cis = [r.get("ci95") or [s, s] for s, r in zip(shares, rows, strict=True)]
        ax.errorbar(alphas, shares, yerr=[[max(0.0, s - c[0]) for s, c in zip(shares, cis,
                                                                                strict=True)],
                                          [max(0.0, c[1] - s) for s, c in zip(shares, cis,
                                                                                strict=True)]],
                    fmt="o", color=line.get_color(), markersize=5, capsize=3,
                    label=f"γ={gamma:g} simulated, 95 % CI (batch means)")
    ax.plot([0, 0.5], [0, 0.5], "k--", linewidth=1, label="honest mining: share = α")
    ax.set_xlabel("attacker hash-rate share α")
    ax.set_ylabel("attacker share of main-chain blocks")
    ax.set_title("powlab simulate selfish: revenue share vs hash-rate share")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              borderaxespad=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def plot_selfish(data: dict[str, Any], path: Path) -> None:
    save_figure(build_selfish_figure(data), path)


def build_balance_figure(data: dict[str, Any]) -> Any:
    """Success vs delay, one series per attacker share, each with its partition limit."""
    from matplotlib.ticker import PercentFormatter

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.6))
    colours = plt.get_cmap("tab10")
    qs = sorted({r["q"] for r in data["rows"]})
    markers = "osD^vP*X"
    top = max(r["delay"] for r in data["rows"])
    for i, q in enumerate(qs):
        rows = sorted((r for r in data["rows"] if r["q"] == q), key=lambda r: r["delay"])
        colour = colours(i % 10)
        xs = [r["delay"] for r in rows]
        ys = [r["success_rate"] for r in rows]
        ax.errorbar(xs, ys, yerr=[[max(0.0, y - r["ci95"][0]) for y, r in zip(ys, rows,
                                                                               strict=True)],
                                  [max(0.0, r["ci95"][1] - y) for y, r in zip(ys, rows,
                                                                               strict=True)]],
                    fmt=markers[i % len(markers)] + "-", color=colour, capsize=4, linewidth=2,
                    markersize=7, label=f"q = {q:g}: simulated, 95 % CI")
        ax.axhline(rows[0]["partition_limit"], color=colour, linestyle=":", linewidth=1.8,
                   xmax=1.0, label=f"q = {q:g}: partition limit {rows[0]['partition_limit']:.2f}")
    ax.set_xlim(left=-0.02 * top, right=top * 1.03 if top > 0 else 1.0)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.tick_params(labelsize=11)
    interval = data["block_interval"]
    trips = data.get("payment_trips", 1)
    ax.set_xlabel(f"one-way delay between the halves (s; mean block interval {interval:g} s"
                  + (f"; a payment's block crosses in {trips} delays)" if trips != 1 else ")"),
                  fontsize=12)
    ax.set_ylabel("P(payment confirmed, then reversed)", fontsize=12)
    ax.set_title(f"powlab simulate balance: {_balance_headline(data)}\n"
                 f"z = {data['confirmations']}, {data['trials']:,} trials per point; dotted: "
                 "the limit of an endless delay (a partition)", fontsize=12)
    # Each share's simulated series, then its limit, in the order of the shares.
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: (float(labels[k].split()[2].rstrip(":")),
                                                      "limit" in labels[k]))
    ax.legend([handles[k] for k in order], [labels[k] for k in order], fontsize=10,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def _balance_headline(data: dict[str, Any]) -> str:
    """What the figure shows, said only when the data show it."""
    grows = reaches = True
    for q in {r["q"] for r in data["rows"]}:
        rows = sorted((r for r in data["rows"] if r["q"] == q), key=lambda r: r["delay"])
        if len(rows) < 2 or rows[-1]["ci95"][0] <= rows[0]["ci95"][1]:
            grows = False
        lo, hi = rows[-1]["ci95"]
        reaches = reaches and lo <= rows[-1]["partition_limit"] <= hi
    if grows and reaches:
        return "success grows with the delay between the halves, up to the partition limit"
    if grows:
        return "the longer the delay between the halves, the more double spends succeed"
    return "double-spend success vs delay between the halves"


def plot_balance(data: dict[str, Any], path: Path) -> None:
    save_figure(build_balance_figure(data), path)
