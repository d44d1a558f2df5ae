"""What a running node costs and how fast a block reaches it, read from outside: memory and
CPU time from /proc, block arrival from the nodes' own JSON logs. Used by the benchmarks
(benchmarks/scale_figures.py, benchmarks/swarm_figures.py) and the tests."""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from lab.stats import percentile
from lab.testnet.processes import process_group

_SMAPS_LINE = re.compile(r"(\w+):\s+(\d+) kB")


def memory_kb(pid: int) -> tuple[int, int]:
    """(USS, PSS) of one process in kB, from /proc/PID/smaps_rollup; (0, 0) if it is gone.
    USS is what the process alone holds (Private_Clean + Private_Dirty); PSS adds its share
    of the pages it shares."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = {m.group(1): int(m.group(2)) for m in _SMAPS_LINE.finditer(text)}
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Pss", 0)


def process_groups() -> dict[int, list[int]]:
    """Every live process group: pgid -> its members, from one pass over /proc (asking
    `process_group` once per node would read /proc once per node)."""
    groups: dict[int, list[int]] = {}
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            text = (child / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X"):
            groups.setdefault(int(fields[2]), []).append(int(child.name))
    return groups


def group_memory_kb(pgid: int, groups: dict[int, list[int]] | None = None) -> tuple[int, int]:
    """(USS, PSS) in kB summed over a node's process group: the node and its miner workers.
    `groups` (process_groups()) saves a pass over /proc per call."""
    members = (groups.get(pgid) if groups is not None else process_group(pgid)) or [pgid]
    sizes = [memory_kb(pid) for pid in members]
    return sum(u for u, _ in sizes), sum(p for _, p in sizes)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int, groups: dict[int, list[int]] | None = None) -> float:
    members = (groups.get(pgid) if groups is not None else process_group(pgid)) or [pgid]
    return sum(cpu_seconds(pid) for pid in members)


def parse_iso(text: str) -> float:
    """A log line's `timestamp` (ISO 8601, UTC, `Z`) as a Unix time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def block_connected_at(log: Path, hashes: Iterable[str]) -> dict[str, float]:
    """When the node whose JSON log this is connected each of `hashes` (those it did)."""
    wanted = set(hashes)
    found: dict[str, float] = {}
    try:
        with open(log, "rb") as fh:
            lines = [line for line in fh if b"block_connected" in line]
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        block = record.get("hash")
        if record.get("event") == "block_connected" and block in wanted:
            found.setdefault(block, parse_iso(record["timestamp"]))
    return found


def spread(values: Iterable[float], digits: int = 1) -> dict[str, float] | None:
    """p50, p90 and max (lab.stats.percentile), rounded; None without values."""
    ordered = list(values)
    if not ordered:
        return None
    return {"p50": round(percentile(ordered, 0.5), digits),
            "p90": round(percentile(ordered, 0.9), digits),
            "max": round(max(ordered), digits), "n": len(ordered)}


def mean_max(values: Iterable[float], digits: int = 1) -> dict[str, float] | None:
    ordered = list(values)
    if not ordered:
        return None
    return {"mean": round(statistics.mean(ordered), digits), "max": round(max(ordered), digits)}
