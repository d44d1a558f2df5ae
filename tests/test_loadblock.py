"""`--loadblock FILE`: blocks imported from a file take the same path as blocks from peers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consensus.block import Block
from consensus.blockbuild import assemble_block, solve_block
from consensus.chainstate import AcceptResult, ChainState
from consensus.params import REGTEST
from lab.testnet.processes import NodeProcess
from node.loadblock import load_block_file
from storage.memory import MemoryStore
from tests.daemon_harness import wait_for

NOW = 1_800_000_000


class _Sink:
    """What `load_block_file` needs of a node: a chain and `submit_block`."""

    def __init__(self) -> None:
        store = MemoryStore()
        self.chain = ChainState(REGTEST, store, store.load())

    def submit_block(self, block: Block) -> AcceptResult:
        return self.chain.accept_block(block, NOW + 10_000)


def _chain_of(count: int) -> list[Block]:
    sink = _Sink()
    blocks = []
    for i in range(count):
        block = solve_block(assemble_block(sink.chain, [], 0, bytes(20), NOW + i))
        assert block is not None and sink.submit_block(block).status == "connected"
        blocks.append(block)
    return blocks


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_imports_every_block_skipping_blanks_and_comments_in_any_order(
    tmp_path: Path,
) -> None:
    blocks = _chain_of(6)
    hexes = [b.encode().hex() for b in blocks]
    # Two blocks swapped: the later one waits in the orphan pool for its parent.
    lines = ["# exported by hand", hexes[0], "", hexes[2], hexes[1], *hexes[3:], hexes[5]]
    sink = _Sink()
    outcome = await load_block_file(sink, _write(tmp_path / "blocks.hex", lines), 1_000_000)
    assert sink.chain.tip.hash == blocks[-1].hash and sink.chain.height == 6
    assert outcome.counts == {"connected": 5, "orphan": 1, "duplicate": 1}
    assert outcome.error is None


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [("zz-not-hex", "line 3: not hex"), ("00ff", "line 3: not a block")],
)
async def test_stops_at_a_line_that_is_not_a_block_and_keeps_what_came_before(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    blocks = _chain_of(4)
    lines = [blocks[0].encode().hex(), blocks[1].encode().hex(), bad_line,
             blocks[2].encode().hex()]
    sink = _Sink()
    outcome = await load_block_file(sink, _write(tmp_path / "blocks.hex", lines), 1_000_000)
    assert sink.chain.height == 2 and outcome.counts == {"connected": 2}
    assert outcome.error is not None and outcome.error.startswith(message)


async def test_an_invalid_block_stops_the_import(tmp_path: Path) -> None:
    blocks = _chain_of(3)
    # Block 3's header with other transactions: its merkle root does not match them.
    bad = Block(blocks[2].header, blocks[1].txs)
    lines = [blocks[0].encode().hex(), blocks[1].encode().hex(), bad.encode().hex(),
             blocks[2].encode().hex()]
    sink = _Sink()
    outcome = await load_block_file(sink, _write(tmp_path / "blocks.hex", lines), 1_000_000)
    assert sink.chain.height == 2
    assert outcome.counts == {"connected": 2, "invalid": 1}
    assert outcome.error is not None and outcome.error.startswith("line 3: invalid block")


async def test_a_missing_file_or_an_over_long_line_is_reported_not_raised(tmp_path: Path) -> None:
    sink = _Sink()
    missing = await load_block_file(sink, tmp_path / "absent.hex", 1_000_000)
    assert missing.error is not None and "absent.hex" in missing.error and not missing.counts
    long_line = tmp_path / "long.hex"
    long_line.write_text("ab" * 5_000)  # no newline, longer than 2 x max_block_size
    too_long = await load_block_file(sink, long_line, 1_000)
    assert too_long.error == "line 1: longer than the largest block allowed"
    assert sink.chain.height == 0


def test_a_fresh_node_loads_another_nodes_blocks_at_start_up(tmp_path: Path) -> None:
    source = NodeProcess(tmp_path / "source")
    fresh: NodeProcess | None = None
    try:
        source.start()
        hashes = source.rpc("generatetoaddress", 40, source.rpc("getnewaddress"))
        export = tmp_path / "blocks.hex"
        export.write_text("".join(source.rpc("getblock", h, 0) + "\n" for h in hashes))
        fresh = NodeProcess(tmp_path / "fresh", args=["--loadblock", str(export)]).start()
        wait_for(lambda: fresh.rpc("getblockcount") == 40, 30, "the import")
        assert fresh.rpc("getbestblockhash") == hashes[-1]
        wait_for(lambda: "loadblock_done" in fresh.log_path.read_text(), 10, "the done line")
        done = [json.loads(line) for line in fresh.log_path.read_text().splitlines()
                if '"loadblock_done"' in line]
        assert done[0]["connected"] == 40 and done[0]["height"] == 40
    finally:
        source.ensure_dead()
        if fresh is not None:
            fresh.ensure_dead()
