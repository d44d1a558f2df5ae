"""`--loadblock FILE`: import blocks from a file at start-up, like bitcoind's -loadblock.

The file holds one block per line in hex, exactly as `getblock HASH 0` prints it (blank lines
and lines starting with # are skipped), so `powlab rpc getblock …` output can be replayed into
another node. Every block goes through `Node.submit_block`, the path blocks from peers take:
the same validation, one commit per chain change, the same logs and events. Blocks out of
order wait in the orphan pool as they would from the network.

The import stops at the first line that is not a block, or at an invalid block, and says
where; the node keeps running with what was imported up to there.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from consensus.block import Block, decode_block
from consensus.chainstate import AcceptResult
from consensus.errors import DecodeError

log = structlog.get_logger("powlab.node")

YIELD_EVERY = 64  # blocks between yields to the event loop, so RPC and peers stay served


class BlockSink(Protocol):
    chain: Any

    def submit_block(self, block: Block) -> AcceptResult: ...


@dataclass
class LoadResult:
    counts: Counter[str] = field(default_factory=Counter)  # blocks per accept status
    error: str | None = None  # why the import stopped early, if it did


class BlockFileError(Exception):
    """A line of a block file that is not a block; carries the line number."""


def _read_lines(path: Path, max_line: int) -> Any:
    """(line number, stripped line) for each non-blank, non-comment line; bounded length."""
    with path.open("rb") as f:
        number = 0
        while True:
            line = f.readline(max_line + 2)
            if not line:
                return
            number += 1
            if len(line) > max_line and not line.endswith(b"\n"):
                raise BlockFileError(f"line {number}: longer than the largest block allowed")
            text = line.strip()
            if text and not text.startswith(b"#"):
                yield number, text


def _decode_line(number: int, text: bytes, max_block_size: int) -> Block:
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise BlockFileError(f"line {number}: not hex") from None
    try:
        return decode_block(raw, max_block_size)
    except DecodeError as exc:
        raise BlockFileError(f"line {number}: not a block ({exc})") from None


async def load_block_file(node: BlockSink, path: Path, max_block_size: int) -> LoadResult:
    """Submit every block in `path`, in file order."""
    outcome = LoadResult()
    counts = outcome.counts
    started = time.monotonic()
    log.info("loadblock_started", file=str(path))
    try:
        for n, (number, text) in enumerate(_read_lines(path, 2 * max_block_size), 1):
            block = _decode_line(number, text, max_block_size)
            result = node.submit_block(block)
            counts[result.status] += 1
            if result.status == "invalid":
                raise BlockFileError(f"line {number}: invalid block ({result.reason})")
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
    except (OSError, BlockFileError) as exc:
        outcome.error = str(exc)
        log.error("loadblock_failed", file=str(path), error=outcome.error, **counts)
        return outcome
    log.info("loadblock_done", file=str(path), seconds=round(time.monotonic() - started, 3),
             height=node.chain.height, **counts)
    return outcome


async def load_block_files(node: BlockSink, paths: Sequence[str], max_block_size: int) -> None:
    for name in paths:
        await load_block_file(node, Path(name).expanduser(), max_block_size)
