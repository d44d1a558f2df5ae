"""`powlab watch TXID`: follow one transaction from the mempool to finality, live."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from lab.client import NodeEndpoint, RPCConnectionError, RPCError
from lab.text import confirmations as confirmations_text

EXIT_FINAL = 0
EXIT_CONFLICTED = 2
EXIT_ERROR = 1
EXIT_TIMEOUT = 3


def watch_transaction(
    endpoint: NodeEndpoint,
    txid: str,
    depth: int | None = None,
    interval: float = 0.5,
    timeout: float | None = None,
    console: Console | None = None,
) -> int:
    """Poll `gettransaction` until final (exit 0) or conflicted (exit 2)."""
    console = console or Console()
    deadline = None if timeout is None else time.monotonic() + timeout
    best_seen = 0
    status: dict[str, Any] = {}
    with Progress(
        TextColumn("[bold]{task.fields[txid]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} confirmations"),
        TextColumn("[cyan]{task.fields[status]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("watch", total=depth or 1, txid=txid[:16] + "…", status="?")
        while True:
            try:
                status = endpoint.call("gettransaction", txid)
            except RPCConnectionError as exc:
                progress.update(task, status=f"node unreachable: {exc}")
                status = {}
            except RPCError as exc:
                console.print(f"[red]error: {exc}")
                return EXIT_ERROR
            if status:
                final_depth = depth or int(status.get("finality_depth") or 1)
                confirmations = int(status.get("confirmations", 0))
                state = status.get("status", "unknown")
                if depth and state == "confirmed" and confirmations >= depth:
                    state = "final"
                risk = status.get("risk_summary", "")
                progress.update(
                    task,
                    total=final_depth,
                    completed=max(0, min(confirmations, final_depth)),
                    status=f"{state}  {risk}" if state in ("confirmed", "final") else state,
                )
                if best_seen > 0 and confirmations < best_seen and state != "conflicted":
                    console.print(
                        f"[bold yellow]REORG: confirmations fell from {best_seen} to "
                        f"{confirmations} ({state})"
                    )
                best_seen = max(best_seen, confirmations)
                if state == "final":
                    progress.stop()
                    console.print(f"[bold green]final[/] {txid} at "
                                  f"{confirmations_text(confirmations)}"
                                  f" ({status.get('risk_summary', '')})")
                    return EXIT_FINAL
                if state == "conflicted":
                    progress.stop()
                    conflicts = ", ".join(status.get("conflicts", [])) or "unknown"
                    console.print(
                        f"[bold red]CONFLICTED: {txid} was double-spent by {conflicts} "
                        f"(confirmations {confirmations}; it had reached {best_seen})"
                    )
                    return EXIT_CONFLICTED
            if deadline is not None and time.monotonic() > deadline:
                console.print(f"[yellow]timed out; last status {status.get('status')}")
                return EXIT_TIMEOUT
            time.sleep(interval)
