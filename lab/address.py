"""`powlab address history ADDR [--watch]`: an address's transactions from a node's address index.

Each confirmed transaction is shown with its height, net amount for the address and
confirmations, marked ``final`` once it has the node's finality depth (getblockchaininfo), else
``confirmed``; mempool entries are ``pending``. With ``--watch`` the history is re-read whenever
the tip or the mempool changes; a transaction that leaves the index (a reorg) is reported and
classified with ``gettransaction``/``getmempoolentry``: back in the mempool (``pending``),
``conflicted`` (a conflicting spend confirmed instead), or ``gone``. Runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from lab.client import (
    CookieError,
    EndpointError,
    NodeEndpoint,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
)
from lab.text import plural

EXIT_OK = 0
EXIT_ERROR = 1


@dataclass(frozen=True)
class Entry:
    """One transaction of the address: its net effect on the address and where it stands."""

    txid: str
    amount: int  # net smallest units for the address (negative: it paid out)
    height: int | None  # None while unconfirmed
    confirmations: int
    state: str  # final, confirmed, pending, conflicted, gone


@dataclass(frozen=True)
class History:
    address: str
    tip: str
    height: int
    finality_depth: int
    mempool: frozenset[str]
    entries: tuple[Entry, ...]

    def confirmed(self) -> dict[str, Entry]:
        return {e.txid: e for e in self.entries if e.height is not None}


def fetch_history(endpoint: NodeEndpoint, address: str) -> History:
    """The address's confirmed and pending transactions, as one consistent-enough snapshot."""
    request = {"addresses": [address]}
    info = endpoint.call("getblockchaininfo")
    deltas = endpoint.call("getaddressdeltas", request)
    pending = endpoint.call("getaddressmempool", request)
    height, depth = int(info["blocks"]), int(info["finality_depth"])
    amounts: dict[str, int] = {}
    heights: dict[str, int] = {}
    for row in deltas:
        amounts[row["txid"]] = amounts.get(row["txid"], 0) + int(row["satoshis"])
        heights[row["txid"]] = int(row["height"])
    entries = []
    for txid, amount in amounts.items():
        confirmations = height - heights[txid] + 1
        state = "final" if confirmations >= depth else "confirmed"
        entries.append(Entry(txid, amount, heights[txid], confirmations, state))
    unconfirmed: dict[str, int] = {}
    for row in pending:
        unconfirmed[row["txid"]] = unconfirmed.get(row["txid"], 0) + int(row["satoshis"])
    entries.extend(Entry(t, a, None, 0, "pending") for t, a in unconfirmed.items())
    return History(
        address, info["bestblockhash"], height, depth, frozenset(unconfirmed), tuple(entries)
    )


def classify_vanished(endpoint: NodeEndpoint, txid: str) -> tuple[str, int]:
    """Where a transaction that left the index went: pending, conflicted or gone."""
    try:
        status = endpoint.call("gettransaction", txid)
    except RPCError:
        status = {}
    confirmations = int(status.get("confirmations", 0) or 0)
    state = status.get("status")
    if state == "conflicted" or confirmations < 0:
        return "conflicted", confirmations
    if state in ("confirmed", "final") and confirmations > 0:
        return "confirmed", confirmations  # already back in a block of the new chain
    # One entry, not getrawmempool: that answers every txid of the pool, once per transaction.
    try:
        endpoint.call("getmempoolentry", txid)
    except RPCError:
        return "gone", 0
    return "pending", 0


def _line(entry: Entry) -> str:
    where = f"height {entry.height}" if entry.height is not None else "mempool"
    return f"{entry.txid}  {entry.amount:+d}  {where}  {entry.confirmations} conf  {entry.state}"


def print_history(history: History, as_json: bool, out: Callable[[str], None] = print) -> None:
    if as_json:
        out(
            json.dumps(
                {
                    "address": history.address,
                    "height": history.height,
                    "finality_depth": history.finality_depth,
                    "entries": [asdict(e) for e in history.entries],
                }
            )
        )
        return
    out(
        f"{history.address}: {plural(len(history.entries), 'transaction')}"
        f" at height {history.height}"
        f" (final at {history.finality_depth} confirmations)"
    )
    for entry in history.entries:
        out("  " + _line(entry))


def _event(kind: str, entry: Entry, as_json: bool, out: Callable[[str], None]) -> None:
    if as_json:
        out(json.dumps({"event": kind, **asdict(entry)}))
    else:
        out(f"{kind.upper():10} {_line(entry)}")


def watch_history(
    endpoint: NodeEndpoint,
    address: str,
    as_json: bool,
    interval: float = 0.5,
    out: Callable[[str], None] = print,
    reconnect: Callable[[], NodeEndpoint] | None = None,
) -> int:
    """Print the history, then every change to it until interrupted (Ctrl-C: exit 0).
    `reconnect` names the node again while it is unreachable: a restarted node listens on a
    new RPC port with a new cookie, which only its data directory tells."""
    try:
        history = fetch_history(endpoint, address)
        print_history(history, as_json, out)
        while True:
            time.sleep(interval)  # a poll period, not a synchronisation wait
            try:
                history = _follow(endpoint, address, history, as_json, out)
            except (RPCConnectionError, RPCAuthError) as exc:
                out(
                    json.dumps({"event": "unreachable", "error": str(exc)})
                    if as_json
                    else f"node unreachable: {exc}"
                )
                if reconnect is not None:
                    # Not back yet (no cookie while it is down): try again at the next poll.
                    with contextlib.suppress(CookieError, EndpointError, OSError):
                        endpoint = reconnect()
    except KeyboardInterrupt:
        return EXIT_OK


def _follow(
    endpoint: NodeEndpoint,
    address: str,
    before: History,
    as_json: bool,
    out: Callable[[str], None],
) -> History:
    info = endpoint.call("getblockchaininfo")
    pool = endpoint.call("getaddressmempool", {"addresses": [address]})
    if info["bestblockhash"] == before.tip and frozenset(r["txid"] for r in pool) == before.mempool:
        return before
    after = fetch_history(endpoint, address)
    old, new = before.confirmed(), after.confirmed()
    for txid, entry in old.items():
        if txid in new:
            continue
        state, confirmations = classify_vanished(endpoint, txid)
        _event("reorged", Entry(txid, entry.amount, None, confirmations, state), as_json, out)
    for txid, entry in new.items():
        previous = old.get(txid)
        if previous is None:
            _event("confirmed" if entry.state != "final" else "final", entry, as_json, out)
        elif previous.state != entry.state or previous.height != entry.height:
            _event(entry.state, entry, as_json, out)
    pending_before = {e.txid: e for e in before.entries if e.height is None}
    for entry in after.entries:
        if entry.height is None and entry.txid not in pending_before and entry.txid not in old:
            _event("pending", entry, as_json, out)
    for txid, entry in pending_before.items():
        if txid not in new and txid not in after.mempool:
            state, confirmations = classify_vanished(endpoint, txid)
            _event("dropped", Entry(txid, entry.amount, None, confirmations, state), as_json, out)
    return after


def history_command(
    endpoint: NodeEndpoint,
    address: str,
    watch: bool,
    as_json: bool,
    interval: float,
    reconnect: Callable[[], NodeEndpoint] | None = None,
) -> int:
    try:
        if watch:
            return watch_history(endpoint, address, as_json, interval, reconnect=reconnect)
        print_history(fetch_history(endpoint, address), as_json)
    except (RPCError, RPCConnectionError, RPCAuthError) as exc:
        print(f"powlab address history: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
