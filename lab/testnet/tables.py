"""The testnet's tables and messages on the terminal (rich, imported only when drawn)."""

from __future__ import annotations

import os
import sys
from typing import Any

from lab.testnet.manifest import MANIFEST_NAME, Manifest, resolve_dir

# Rich is slow to import; only commands that draw tables pay for it.
_console: Any = None
# Piped or redirected, rich would assume 80 columns and cut the status table; a table only
# takes the width it needs, so this just means "never cut". $COLUMNS still wins.
PIPED_WIDTH = 1000


def console() -> Any:
    global _console
    if _console is None:
        from rich.console import Console

        piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
        _console = Console(width=PIPED_WIDTH if piped else None)
    return _console


def dir_flag(manifest: Manifest) -> str:
    """`--dir X` when the testnet is not the one commands find by default."""
    return "" if manifest.directory == resolve_dir(None) else f" --dir {manifest.directory}"


def print_nodes(manifest: Manifest, states: dict[str, str] | None = None,
                hints: bool = True) -> None:
    from rich.table import Table

    table = Table(title=f"powlab testnet ({manifest.network}, {manifest.topology}, "
                        f"block time {manifest.block_time:g}s) in {manifest.directory}")
    for col in ("node", "role", "state", "RPC", "P2P", "mining H/s"):
        table.add_column(col)
    for entry in manifest.nodes:
        rate = "" if entry.mining_rate is None else (
            f"{entry.mining_rate:.4g} ({entry.hashrate_share:.0%})")
        table.add_row(entry.name, entry.role, (states or {}).get(entry.name, ""), entry.url,
                      entry.p2p, rate)
    console().print(table)
    if not hints:
        return
    console().print(
        f"Call a node by name (URL and cookie come from {MANIFEST_NAME}):\n"
        f"  powlab rpc --node {manifest.nodes[-1].name}{dir_flag(manifest)} getblockchaininfo",
        soft_wrap=True,
    )


def status_table(title: str, partition: list[list[str]] | None,
                 rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    if partition:
        title += " — PARTITIONED: " + " | ".join(",".join(g) for g in partition)
    table = Table(title=title)
    for col in ("node", "role", "up", "height", "best hash", "peers", "mempool", "hash rate",
                "RPC"):
        table.add_column(col, justify="right" if col in ("height", "peers", "mempool") else "left")
    tips = [r["bestblockhash"] for r in rows if r["bestblockhash"]]
    common = max(set(tips), key=tips.count) if tips else None
    for r in rows:
        best = r["bestblockhash"] or ""
        best_text = best[:12]
        if best and best != common:
            best_text = f"[yellow]{best_text}"  # not on the majority's tip: a fork or lag
        if r.get("hashrate") is None:
            rate = "-"
        elif r.get("mining", True):
            limit = r.get("hashrate_limit")
            rate = f"{r['hashrate']:.3g}" + (f" / {limit:.3g}" if limit else "")
        else:
            rate = "off"
        up = "[green]up" if r["up"] and "error" not in r else (
            "[yellow]no rpc" if r["up"] else "[red]down")
        if r.get("warnings"):
            # A heavier branch refused beyond finality: a split `heal --resolve` ends.
            best_text = f"[red]{best[:12]} !"
        table.add_row(
            r["node"], r["role"], up, _cell(r["height"]), best_text, _cell(r["peers"]),
            _cell(r["mempool"]), rate, _cell(r["rpc"]),
        )
    return table


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
