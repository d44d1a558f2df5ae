"""What the dashboard shows, in memory and bounded: the block tree seen across all nodes,
each node's tip and status, the activity log (with the tips before its first entry, for
playback), the attack runs, and the browsers listening for changes.

Pure bookkeeping: no I/O. Every change is also handed to `publish`, which puts one message on
every listener's bounded queue (a listener that falls behind is dropped; its page reconnects
and starts again from a snapshot)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lab.dashboard.untrusted import as_float, as_int

# Bounds: every collection the dashboard keeps is limited by one of these.
MAX_BLOCKS = 20_000  # blocks held in the tree; the lowest heights go first
EVICT_TO = 18_000  # ...down to this many, so eviction is rare
MAX_LOG = 5_000  # activity-log entries (playback reaches back this far)
MAX_RUNS = 10  # attack / scenario runs followed
MAX_RUN_EVENTS = 2_000  # timeline events kept per run
LISTENER_BACKLOG = 2_000  # messages queued per browser before it is dropped
MAX_MARKS = 5_000  # blocks marked by attack runs (withheld, released, private)
MAX_LINK_FAULTS = 1_000  # links with an injected fault shown at once
FAULT_KEYS = ("delay_ms", "jitter_ms", "loss", "bandwidth_kbps")


@dataclass
class Block:
    hash: str
    prev: str | None
    height: int
    time: int
    txs: int
    miner: str | None = None  # the node whose wallet got the reward, else the first to show it
    first_node: str | None = None  # the node that reported it first
    first_seen: float = 0.0  # when this dashboard first saw it (unix seconds)
    invalid: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "prev": self.prev, "height": self.height, "time": self.time,
                "txs": self.txs, "miner": self.miner, "first_node": self.first_node,
                "seen": round(self.first_seen, 3), "invalid": self.invalid}


@dataclass
class NodeView:
    name: str
    role: str = "node"
    share: float = 0.0  # hash-rate share from the manifest (0 for non-miners)
    url: str = ""
    up: bool = False
    height: int | None = None
    tip: str | None = None
    peers: list[str] = field(default_factory=list)  # names of established peers
    peer_count: int = 0
    mempool: int | None = None
    hashrate: float | None = None
    mining: bool | None = None
    node_id: str | None = None
    warnings: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "share": self.share, "up": self.up,
                "height": self.height, "tip": self.tip, "peers": self.peers,
                "peer_count": self.peer_count, "mempool": self.mempool,
                "hashrate": self.hashrate, "mining": self.mining, "warnings": self.warnings,
                "error": self.error}


class Listener:
    """One browser's stream: a bounded queue; `dropped` once it fell too far behind."""

    def __init__(self, backlog: int = LISTENER_BACKLOG) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(backlog)
        self.dropped = False

    def offer(self, message: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True


class Model:
    def __init__(self, finality_depth: int = 6, clock: Any = time.time) -> None:
        self.clock = clock
        self.finality_depth = finality_depth
        self.blocks: dict[str, Block] = {}
        self.nodes: dict[str, NodeView] = {}
        self.log: deque[dict[str, Any]] = deque()
        self.base_tips: dict[str, str] = {}  # each node's tip before log[0]
        self.runs: dict[str, dict[str, Any]] = {}
        self.marks: dict[str, str] = {}  # hash prefix (16 hex) -> "withheld" / "released" / …
        self.partition: list[list[str]] | None = None
        # Link faults injected by a run ("link fault" events), by "a|b" (names sorted).
        self.link_faults: dict[str, dict[str, float]] = {}
        self.listeners: set[Listener] = set()
        self.seq = 0
        self._lowest: int | None = None  # the lowest height held (kept, not searched for)

    # -- listeners --------------------------------------------------------------------------
    def publish(self, message: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            if not listener.offer(message):
                self.listeners.discard(listener)

    # -- blocks -----------------------------------------------------------------------------
    def add_block(self, block: Block) -> bool:
        """Adds a block not seen before (and publishes it); False if it was known."""
        if block.hash in self.blocks:
            return False
        if not block.first_seen:
            block.first_seen = self.clock()
        self.blocks[block.hash] = block
        if self._lowest is None or block.height < self._lowest:
            self._lowest = block.height
        if len(self.blocks) > MAX_BLOCKS:
            self._evict()
        self.publish({"kind": "block", "block": block.to_json()})
        return True

    def _evict(self) -> None:
        keep = sorted(self.blocks.values(), key=lambda b: b.height)[-EVICT_TO:]
        self.blocks = {b.hash: b for b in keep}
        self._lowest = keep[0].height if keep else None

    def mark_invalid(self, block_hash: str) -> None:
        block = self.blocks.get(block_hash)
        if block is not None and not block.invalid:
            block.invalid = True
            self.publish({"kind": "block", "block": block.to_json()})

    def lowest_height(self) -> int:
        return self._lowest or 0

    # -- tips and nodes ---------------------------------------------------------------------
    def set_tip(self, node: str, block_hash: str, height: int | None, why: str) -> None:
        view = self.nodes.setdefault(node, NodeView(node))
        if view.tip == block_hash:
            return
        previous = view.tip
        view.tip = block_hash
        if height is not None:
            view.height = height
        if previous is None and not self.log:
            self.base_tips[node] = block_hash
            self.publish({"kind": "tip", "node": node, "hash": block_hash, "height": height})
            return
        self.add_log("tip", node, f"{node} tip → {height} {block_hash[:12]}… ({why})",
                     hash=block_hash, height=height, prev_tip=previous)

    def add_log(self, kind: str, node: str | None, text: str, **extra: Any) -> dict[str, Any]:
        self.seq += 1
        entry = {"seq": self.seq, "t": round(self.clock(), 3), "kind": kind, "node": node,
                 "text": text, **extra}
        self.log.append(entry)
        while len(self.log) > MAX_LOG:
            old = self.log.popleft()
            if old["kind"] == "tip" and old.get("node"):
                self.base_tips[old["node"]] = old["hash"]
        self.publish({"kind": "log", "entry": entry})
        return entry

    def publish_nodes(self) -> None:
        self.publish({"kind": "nodes", "nodes": [v.to_json() for v in self.nodes.values()],
                      "partition": self.partition, "link_faults": self.link_faults})

    # -- attack runs ------------------------------------------------------------------------
    def run_record(self, run_id: str, record: dict[str, Any], log: bool = True) -> None:
        """One line of a run's live record (lab/scenario/runlog.py); `log=False` for records
        older than the dashboard (kept for the attack view, not logged as happening now)."""
        run = self.runs.get(run_id)
        if run is None:
            run = {"id": run_id, "start": None, "events": [], "end": None}
            self.runs[run_id] = run
            while len(self.runs) > MAX_RUNS:
                self.runs.pop(next(iter(self.runs)))
        kind = record.get("type")
        self._fault_from(record)
        if not log:
            if kind in ("start", "end"):
                run[kind] = record
            elif kind == "event" and len(run["events"]) < MAX_RUN_EVENTS:
                run["events"].append(record)
                self._mark_from(record)
            self.publish({"kind": "run", "id": run_id, "record": record})
            return
        if kind == "start":
            run["start"] = record
            self.add_log("attack", None, f"run started: {record.get('scenario', run_id)}",
                         run=run_id)
        elif kind == "event":
            if len(run["events"]) < MAX_RUN_EVENTS:
                run["events"].append(record)
            if self._mark_from(record):
                self.publish({"kind": "run", "id": run_id, "record": record,
                              "marks": dict(self.marks)})
                self.add_log("attack", record.get("node"), _step(record), run=run_id)
                return
            self.add_log("attack", record.get("node"), _step(record), run=run_id)
        elif kind == "end":
            run["end"] = record
            self.add_log("attack", None, f"verdict: {record.get('verdict', '')}", run=run_id)
        self.publish({"kind": "run", "id": run_id, "record": record})

    def _fault_from(self, record: dict[str, Any]) -> None:
        """A run's "link fault" (node, peer, delay_ms, jitter_ms, loss, bandwidth_kbps) and
        "link faults cleared" events, and its end, for the network view."""
        event = record.get("event")
        before = dict(self.link_faults)
        if record.get("type") == "end" or event == "link faults cleared":
            self.link_faults.clear()
        elif event == "link fault" and record.get("node") and record.get("peer"):
            key = "|".join(sorted((str(record["node"]), str(record["peer"]))))
            fault = {k: v for k in FAULT_KEYS if (v := as_float(record.get(k)))}
            if fault:
                if len(self.link_faults) < MAX_LINK_FAULTS or key in self.link_faults:
                    self.link_faults[key] = fault
            else:
                self.link_faults.pop(key, None)
        if self.link_faults != before:
            self.publish_nodes()

    def _mark_from(self, record: dict[str, Any]) -> bool:
        event = str(record.get("event", ""))
        label = {"block withheld": "withheld", "block released": "released",
                 "private branch published": "private"}.get(event)
        if label is None:
            for word in ("withheld", "released"):
                if word in event:
                    label = word
        if label is None:
            return False
        for key in ("hash", "tip"):
            value = record.get(key)
            if isinstance(value, str) and len(self.marks) < MAX_MARKS:
                self.marks[value[:16]] = label
        if label == "private" and isinstance(record.get("tip"), str):
            self._mark_branch(record["tip"][:16], as_int(record.get("branch_length")) or 0)
        return True

    def _mark_branch(self, tip_prefix: str, length: int) -> None:
        """The published private branch: its tip and the blocks below it, `length` of them."""
        block = next((b for h, b in self.blocks.items() if h.startswith(tip_prefix)), None)
        for _ in range(max(0, min(length, MAX_MARKS - len(self.marks)))):
            if block is None:
                return
            self.marks[block.hash[:16]] = "private"
            block = self.blocks.get(block.prev or "")

    # -- snapshot ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "finality_depth": self.finality_depth,
            "blocks": [b.to_json() for b in self.blocks.values()],
            "nodes": [v.to_json() for v in self.nodes.values()],
            "partition": self.partition,
            "link_faults": dict(self.link_faults),
            "log": list(self.log),
            "base_tips": dict(self.base_tips),
            "runs": list(self.runs.values()),
            "marks": dict(self.marks),
            "limits": {"blocks": MAX_BLOCKS, "evict_to": EVICT_TO, "log": MAX_LOG,
                       "runs": MAX_RUNS, "run_events": MAX_RUN_EVENTS},
            "now": round(self.clock(), 3),
        }


def _step(record: dict[str, Any]) -> str:
    node = record.get("node")
    who = f"{node}: " if node and node != "*" else ""
    return f"{who}{record.get('event', '')}{_detail(record)}"


def _detail(record: dict[str, Any]) -> str:
    skip = {"type", "t", "node", "event"}
    parts = [f"{k}={v}" for k, v in record.items()
             if k not in skip and not isinstance(v, dict | list)]
    return (" " + " ".join(parts))[:200] if parts else ""
