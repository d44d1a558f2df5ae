"""PNG plots of simulation results (matplotlib, headless: lab.plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.plotting import pyplot


def plot_stale_rate(runs: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["block_interval"] for r in runs]
    ax.plot(xs, [r["stale_rate"] for r in runs], "o-", label="stale rate")
    ax.set_xscale("log")
    ax.set_xlabel("mean block interval (s)")
    ax.set_ylabel("stale (orphan) rate")
    p50 = runs[0]["propagation_ms"]["p50"] / 1000
    ax.axvline(p50, color="grey", linestyle="--", label=f"median propagation {p50:.2f} s")
    ax.set_title(f"{runs[0]['nodes']} nodes, latency {runs[0]['latency']}")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_doublespend(data: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for q in sorted({r["q"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["q"] == q]
        zs = [r["z"] for r in rows]
        line = ax.plot(zs, [r["exact"] for r in rows], "-", label=f"q={q:g} exact")[0]
        ax.plot(zs, [r["nakamoto"] for r in rows], ":", color=line.get_color(),
                label=f"q={q:g} Nakamoto")
        emp = [max(r["empirical"], 1e-9) for r in rows]
        err_lo = [e - max(r["ci95"][0], 1e-9) for e, r in zip(emp, rows, strict=True)]
        err_hi = [r["ci95"][1] - e for e, r in zip(emp, rows, strict=True)]
        ax.errorbar(zs, emp, yerr=[err_lo, err_hi], fmt="o", color=line.get_color(),
                    markersize=3, capsize=2)
    ax.set_yscale("log")
    ax.set_xlabel("confirmations z")
    ax.set_ylabel("P(double spend succeeds)")
    ax.set_title(f"model: {data['model']}")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_selfish(data: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for gamma in sorted({r["gamma"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["gamma"] == gamma]
        alphas = [r["alpha"] for r in rows]
        line = ax.plot(alphas, [r["eyal_sirer"] for r in rows], "-",
                       label=f"γ={gamma:g} Eyal-Sirer")[0]
        ax.plot(alphas, [r["attacker_share"] for r in rows], "o", color=line.get_color(),
                label=f"γ={gamma:g} simulated")
    ax.plot([0, 0.5], [0, 0.5], "k--", linewidth=0.8, label="honest share = α")
    ax.set_xlabel("attacker hash-rate share α")
    ax.set_ylabel("attacker share of main-chain blocks")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
