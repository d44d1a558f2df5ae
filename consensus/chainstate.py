"""The block tree, the active chain (most cumulative work) and the UTXO set.

`ChainState` is pure: it never reads a clock (callers pass `now`) and never writes. It reads
committed block bodies and undo data through a `BlockReader`, keeps the block index, UTXO set,
transaction index and spends index in memory, and records every change in a `ChainUpdate` that the
caller hands to the store as one atomic write (`take_update`).

The active chain is the fully valid chain with the most cumulative work, ties going to the block
whose data arrived first. That is what "longest chain" has to mean once difficulty varies: a
shorter chain of harder blocks beats a longer chain of easy ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from consensus.addressindex import DeltaRows, index_block, unindex_block
from consensus.block import Block, BlockHeader, decode_block, decode_header
from consensus.coins import Coin, decode_undo, encode_undo
from consensus.errors import ConsensusError
from consensus.params import (
    DEFAULT_MAX_ORPHAN_BLOCKS,
    DEFAULT_SIGNATURE_CACHE_SIZE,
    ChainParams,
)
from consensus.pow import bits_to_target, retarget, target_to_bits, work_from_target
from consensus.tx import OutPoint, Transaction
from consensus.update import BlockReader, ChainSnapshot, ChainUpdate, IndexRecord
from consensus.validation import (
    BatchVerifier,
    SignatureCache,
    SignatureJob,
    check_block,
    check_block_final,
    check_block_merkle,
    check_coinbase_height,
    check_header_context,
    check_header_pow,
    check_timewarp,
    check_tx_inputs,
    signature_jobs,
    timewarp_floor,
    verify_sequentially,
)

_new_tuple = tuple.__new__
_BLOCK_CACHE_SIZE = 256  # decoded blocks/undo kept for quick reorgs and RPC reads


class BlockStatus:
    """Bit flags of a block index entry (plain ints: this is on the hottest path)."""

    HEADER_VALID = 1
    HAVE_DATA = 2
    VALID = 4  # connected successfully at least once: every rule checked
    FAILED = 8  # this block broke a rule
    FAILED_CHILD = 16  # descends from a block that broke a rule
    FAILED_MASK = FAILED | FAILED_CHILD


@dataclass(eq=False, slots=True)
class BlockIndex:
    hash: bytes
    header: BlockHeader
    height: int
    chainwork: int
    prev: BlockIndex | None
    status: int
    sequence: int = 0
    # Data for this block and all its ancestors is at hand (derived; not stored).
    chain_data: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.status & BlockStatus.FAILED_MASK)

    def ancestor(self, height: int) -> BlockIndex:
        entry: BlockIndex | None = self
        while entry is not None and entry.height > height:
            entry = entry.prev
        if entry is None or entry.height != height:
            raise ValueError(f"no ancestor at height {height}")
        return entry

    def record(self) -> IndexRecord:
        return IndexRecord(
            self.hash, self.header.encode(), self.height, self.chainwork, int(self.status),
            self.sequence,
        )


@dataclass
class ChainTip:
    height: int
    hash: bytes
    branchlen: int
    status: str


@dataclass
class AcceptResult:
    """What one call changed. `connected`/`disconnected` are net of any back-and-forth."""

    block_hash: bytes
    status: str  # connected, side-branch, orphan, duplicate, invalid, stored
    reason: str | None = None
    old_tip: BlockIndex | None = None
    new_tip: BlockIndex | None = None
    fork: BlockIndex | None = None
    disconnected: list[tuple[BlockIndex, Block]] = field(default_factory=list)
    connected: list[tuple[BlockIndex, Block]] = field(default_factory=list)
    invalid: list[tuple[bytes, str]] = field(default_factory=list)
    finality_refused: list[bytes] = field(default_factory=list)
    missing_parent: bytes | None = None

    @property
    def reorg_depth(self) -> int:
        return len(self.disconnected)


@dataclass(frozen=True, slots=True)
class FinalityConflict:
    """A heavier branch this node refuses (`--enforce-finality`): following it would disconnect
    `depth` >= finality-depth blocks of the active chain, i.e. revert a final block."""

    tip: BlockIndex
    fork: BlockIndex
    depth: int

    def to_json(self) -> dict[str, object]:
        return {
            "hash": self.tip.hash.hex(),
            "height": self.tip.height,
            "chainwork": f"{self.tip.chainwork:064x}",
            "fork_hash": self.fork.hash.hex(),
            "fork_height": self.fork.height,
            "depth": self.depth,
        }

    def warning(self) -> str:
        return (
            f"Refused reorganisation beyond finality: a heavier branch (tip {self.tip.hash.hex()}"
            f", height {self.tip.height}, chainwork {self.tip.chainwork:x}) forks at height "
            f"{self.fork.height} and would disconnect {self.depth} blocks, more than finality "
            "allows; this node stays "
            "on its own branch (chain split). Resolve with `powlab testnet heal --resolve` or "
            "invalidateblock/reconsiderblock."
        )


class _BlockView:
    """The UTXO set as seen part-way through a block: earlier transactions' effects applied."""

    __slots__ = ("base", "created", "spent")

    def __init__(self, base: dict[OutPoint, Coin]) -> None:
        self.base = base
        self.created: dict[OutPoint, Coin] = {}
        self.spent: set[OutPoint] = set()

    def get(self, outpoint: OutPoint) -> Coin | None:
        coin = self.created.get(outpoint)
        if coin is not None:
            return coin
        if outpoint in self.spent:
            return None
        return self.base.get(outpoint)


class ChainState:
    def __init__(
        self,
        params: ChainParams,
        reader: BlockReader,
        snapshot: ChainSnapshot | None = None,
        *,
        finality_depth: int | None = None,
        enforce_finality: bool = False,
        max_orphan_blocks: int = DEFAULT_MAX_ORPHAN_BLOCKS,
        signature_cache: SignatureCache | None = None,
        verify_batch: BatchVerifier = verify_sequentially,
        check_pow: bool = True,
    ) -> None:
        self.params = params
        self.reader = reader
        self.verify_batch = verify_batch
        # Only the simulator turns this off: it models mining as a Poisson process, and
        # proof-of-work validity is not what it studies.
        self.check_pow = check_pow
        self.finality_depth = finality_depth or params.finality_depth
        self.enforce_finality = enforce_finality
        # Journal address-index rows with every connect/disconnect. The node switches it on only
        # once the stored index matches the tip (see node/addressindex.py), never at load.
        self.address_index = False
        self.max_orphan_blocks = max_orphan_blocks
        self.signature_cache = (
            signature_cache
            if signature_cache is not None
            else SignatureCache(DEFAULT_SIGNATURE_CACHE_SIZE)
        )
        self.index: dict[bytes, BlockIndex] = {}
        self.children: dict[bytes, list[BlockIndex]] = {}
        self.active: list[BlockIndex] = []
        self.utxo: dict[OutPoint, Coin] = {}
        self.tx_index: dict[bytes, bytes] = {}
        self.spends: dict[OutPoint, bytes] = {}
        self.best_header: BlockIndex
        self._candidates: set[BlockIndex] = set()
        self._finality_refused: set[BlockIndex] = set()
        self._orphans: OrderedDict[bytes, Block] = OrderedDict()
        self._next_sequence = 1
        self._update = ChainUpdate()
        self._dirty: set[BlockIndex] = set()
        # Undo data of blocks connected since the last take_update, encoded only there: the
        # encoding is for the store, and a relaying node has passed the block on by then.
        self._unencoded_undo: dict[bytes, list[Coin]] = {}
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()
        self._undo: OrderedDict[bytes, list[Coin]] = OrderedDict()
        if snapshot is None or not snapshot.index:
            self._init_genesis()
        else:
            self._load(snapshot)

    # ----------------------------------------------------------------- start-up

    def _init_genesis(self) -> None:
        genesis = self.params.genesis_block
        entry = BlockIndex(
            genesis.hash,
            genesis.header,
            0,
            work_from_target(bits_to_target(genesis.header.bits)),
            None,
            BlockStatus.HEADER_VALID | BlockStatus.HAVE_DATA | BlockStatus.VALID,
            0,
            True,
        )
        self._add_entry(entry)
        self._dirty.add(entry)
        self.active = [entry]
        self.best_header = entry
        self._candidates.add(entry)
        self._remember_block(genesis)
        self._update.blocks[genesis.hash] = genesis.encode()
        self._update.tip = genesis.hash

    def _load(self, snapshot: ChainSnapshot) -> None:
        for rec in sorted(snapshot.index, key=lambda r: r.height):
            header = decode_header(rec.header)
            prev = self.index.get(header.prev_hash) if rec.height else None
            if rec.height and prev is None:
                raise ConsensusError("bad-store", f"index entry {rec.hash.hex()} lacks its parent")
            entry = BlockIndex(
                rec.hash, header, rec.height, rec.chainwork, prev, rec.status, rec.sequence
            )
            entry.chain_data = bool(rec.status & BlockStatus.HAVE_DATA) and (
                prev is None or prev.chain_data
            )
            self._add_entry(entry)
            self._next_sequence = max(self._next_sequence, rec.sequence + 1)
        genesis = self.active_genesis_check()
        tip = self.index.get(snapshot.tip or b"")
        if tip is None:
            raise ConsensusError("bad-store", "the stored tip is not in the block index")
        self.active = [tip.ancestor(h) for h in range(tip.height + 1)]
        if self.active[0] is not genesis:
            raise ConsensusError("bad-store", "the stored chain does not start at genesis")
        self.utxo = dict(snapshot.utxo)
        self.tx_index = dict(snapshot.tx_index)
        self.spends = dict(snapshot.spends)
        self.best_header = max(
            (e for e in self.index.values() if not e.failed), key=lambda e: e.chainwork
        )
        self._rebuild_candidates()
        # A policy change (finality enforcement switched off, say) may make another branch win.
        self._activate_best_chain(AcceptResult(tip.hash, "loaded", old_tip=tip))

    def active_genesis_check(self) -> BlockIndex:
        genesis = self.index.get(self.params.genesis_hash)
        if genesis is None:
            raise ConsensusError(
                "bad-genesis", "the stored chain belongs to another network (genesis differs)"
            )
        return genesis

    # ----------------------------------------------------------------- queries

    @property
    def tip(self) -> BlockIndex:
        return self.active[-1]

    @property
    def height(self) -> int:
        return len(self.active) - 1

    def get(self, block_hash: bytes) -> BlockIndex | None:
        return self.index.get(block_hash)

    def at_height(self, height: int) -> BlockIndex | None:
        return self.active[height] if 0 <= height < len(self.active) else None

    def is_active(self, entry: BlockIndex) -> bool:
        return entry.height < len(self.active) and self.active[entry.height] is entry

    def confirmations(self, entry: BlockIndex) -> int:
        return self.height - entry.height + 1 if self.is_active(entry) else -1

    def coin(self, outpoint: OutPoint) -> Coin | None:
        return self.utxo.get(outpoint)

    def tx_block(self, txid: bytes) -> BlockIndex | None:
        """The active-chain block that contains `txid`, if any."""
        block_hash = self.tx_index.get(txid)
        return self.index[block_hash] if block_hash is not None else None

    def spender(self, outpoint: OutPoint) -> bytes | None:
        """The txid that spent `outpoint` in the active chain, if any."""
        return self.spends.get(outpoint)

    def has_block(self, block_hash: bytes) -> bool:
        entry = self.index.get(block_hash)
        return (entry is not None and bool(entry.status & BlockStatus.HAVE_DATA)) or (
            block_hash in self._orphans
        )

    def get_block(self, block_hash: bytes) -> Block | None:
        entry = self.index.get(block_hash)
        if entry is None or not entry.status & BlockStatus.HAVE_DATA:
            return self._orphans.get(block_hash)
        return self._load_block(block_hash)

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        """The block's encoding, without decoding it (serving peers needs only the bytes)."""
        block = self._blocks.get(block_hash)
        if block is not None:
            return block.encode()
        entry = self.index.get(block_hash)
        if entry is None or not entry.status & BlockStatus.HAVE_DATA:
            orphan = self._orphans.get(block_hash)
            return orphan.encode() if orphan is not None else None
        return self._update.blocks.get(block_hash) or self.reader.get_block_bytes(block_hash)

    def median_time_past(self, entry: BlockIndex) -> int:
        times = []
        cursor: BlockIndex | None = entry
        while cursor is not None and len(times) < self.params.median_time_span:
            times.append(cursor.header.timestamp)
            cursor = cursor.prev
        times.sort()
        return times[len(times) // 2]

    def min_timestamp(self, prev: BlockIndex) -> int:
        """The earliest timestamp a block on top of `prev` may carry: above the median time
        past, and (at the start of a retarget window) not more than the timewarp grace before
        `prev`."""
        floor = timewarp_floor(prev.height + 1, prev.header.timestamp, self.params)
        earliest = self.median_time_past(prev) + 1
        return earliest if floor is None else max(earliest, floor)

    def lock_time_clock(self, prev: BlockIndex | None = None) -> tuple[int, int]:
        """The height of a block on `prev` (default: the tip) and the clock its transactions'
        time locks are read against: `prev`'s median time past (BIP113). The mempool uses
        the tip's, so that what it holds is final in the next block."""
        prev = prev or self.tip
        return prev.height + 1, self.median_time_past(prev)

    def next_bits(self, prev: BlockIndex) -> int:
        """The `bits` a block on top of `prev` must carry."""
        params = self.params
        height = prev.height + 1
        if params.no_retarget or height % params.retarget_window:
            return prev.header.bits if prev.height else params.pow_limit_bits
        first = prev.ancestor(height - params.retarget_window)
        new_target = retarget(
            bits_to_target(prev.header.bits),
            prev.header.timestamp - first.header.timestamp,
            params.target_spacing * params.retarget_window,
            params.retarget_clamp,
            params.pow_limit,
        )
        return target_to_bits(new_target)

    def locator(self, entry: BlockIndex | None = None) -> list[bytes]:
        """Hashes back from `entry` (default tip), dense at first then exponentially sparse."""
        entry = entry or self.tip
        hashes, step, height = [], 1, entry.height
        while True:
            hashes.append(entry.ancestor(height).hash)
            if height == 0:
                return hashes
            if len(hashes) >= 10:
                step *= 2
            height = max(0, height - step)

    def fork_from_locator(self, hashes: list[bytes]) -> BlockIndex:
        for block_hash in hashes:
            entry = self.index.get(block_hash)
            if entry is not None and self.is_active(entry):
                return entry
        return self.active[0]

    def chain_tips(self) -> list[ChainTip]:
        tips = [e for e in self.index.values() if not self.children.get(e.hash)]
        if self.tip not in tips:
            tips.append(self.tip)
        result = []
        for entry in sorted(tips, key=lambda e: (-e.height, e.sequence)):
            fork = self.find_fork(entry, self.tip)
            if entry is self.tip:
                status = "active"
            elif entry.failed:
                status = "invalid"
            elif not entry.chain_data:
                status = "headers-only"
            elif entry.status & BlockStatus.VALID:
                status = "valid-fork"
            else:
                status = "valid-headers"
            result.append(ChainTip(entry.height, entry.hash, entry.height - fork.height, status))
        return result

    @staticmethod
    def find_fork(a: BlockIndex, b: BlockIndex) -> BlockIndex:
        while a.height > b.height:
            a = a.prev  # type: ignore[assignment]
        while b.height > a.height:
            b = b.prev  # type: ignore[assignment]
        while a is not b:
            a, b = a.prev, b.prev  # type: ignore[assignment]
        return a

    def iter_utxos(self) -> Iterator[tuple[OutPoint, Coin]]:
        return iter(self.utxo.items())

    def orphan_count(self) -> int:
        return len(self._orphans)

    # ----------------------------------------------------------------- updates

    def take_update(self) -> ChainUpdate:
        """Hand over everything changed since the last call, for the store to apply atomically."""
        update = self._update
        for entry in self._dirty:
            update.index[entry.hash] = entry.record()
        for block_hash, undo in self._unencoded_undo.items():
            update.undo[block_hash] = encode_undo(undo)
        self._dirty = set()
        self._unencoded_undo = {}
        self._update = ChainUpdate()
        return update

    def discard_update(self) -> None:
        """Drop the journal without building records (for callers that persist nothing)."""
        self._dirty = set()
        self._unencoded_undo = {}
        self._update = ChainUpdate()

    def accept_header(
        self, header: BlockHeader, now: int, header_hash: bytes | None = None
    ) -> BlockIndex:
        """Check a header against its parent and add it to the block index (headers-first)."""
        header_hash = header_hash or header.hash
        existing = self.index.get(header_hash)
        if existing is not None:
            if existing.failed:
                raise ConsensusError("duplicate-invalid", "header of a known invalid block")
            return existing
        prev = self.index.get(header.prev_hash)
        if prev is None:
            raise ConsensusError("prev-blk-not-found", header.prev_hash.hex())
        if prev.failed:
            raise ConsensusError("bad-prevblk", "parent block is invalid")
        if self.check_pow:
            check_header_pow(header, self.params)
        check_header_context(
            header, self.next_bits(prev), self.median_time_past(prev), now, self.params
        )
        check_timewarp(header, prev.height + 1, prev.header.timestamp, self.params)
        entry = BlockIndex(
            header_hash,
            header,
            prev.height + 1,
            prev.chainwork + work_from_target(bits_to_target(header.bits)),
            prev,
            BlockStatus.HEADER_VALID,
        )
        self._add_entry(entry)
        self._dirty.add(entry)
        if entry.chainwork > self.best_header.chainwork:
            self.best_header = entry
        return entry

    def accept_block(self, block: Block, now: int) -> AcceptResult:
        """Validate and store `block`, then switch to the most-work valid chain.

        Blocks whose parent is unknown wait in a bounded orphan pool and are processed when the
        parent arrives.
        """
        result = AcceptResult(block.hash, "stored", old_tip=self.tip)
        self._accept_one(block, now, result)
        if result.status in ("stored", "connected", "side-branch"):
            self._activate_best_chain(result)
            self._process_orphans(block.hash, now, result)
            entry = self.index[block.hash]
            if entry.failed:
                # Found invalid when connecting (its own rules, or an ancestor's on the way).
                result.status = "invalid"
                result.reason = result.reason or "bad-prevblk"
            else:
                result.status = "connected" if self.is_active(entry) else "side-branch"
        return result

    def invalidate_block(self, block_hash: bytes) -> AcceptResult:
        entry = self._require(block_hash)
        if entry.height == 0:
            raise ConsensusError("invalid-genesis", "the genesis block cannot be invalidated")
        result = AcceptResult(block_hash, "invalidated", old_tip=self.tip)
        while self.is_active(entry):
            self._disconnect_tip()
        self._mark_failed(entry, BlockStatus.FAILED)
        self._rebuild_candidates()
        self._activate_best_chain(result)
        return result

    def reconsider_block(self, block_hash: bytes) -> AcceptResult:
        entry = self._require(block_hash)
        result = AcceptResult(block_hash, "reconsidered", old_tip=self.tip)
        for e in [*self._descendants(entry), entry]:
            self._clear_failure(e)
        cursor = entry.prev
        while cursor is not None:
            self._clear_failure(cursor)
            cursor = cursor.prev
        self._finality_refused.clear()
        self._rebuild_candidates()
        self._activate_best_chain(result)
        return result

    def finality_conflicts(self) -> list[FinalityConflict]:
        """Branches refused beyond finality that have more work than the active tip, the
        heaviest per fork point (empty when all is well)."""
        tip = self.tip
        best: dict[bytes, tuple[BlockIndex, BlockIndex]] = {}
        for e in self._finality_refused:
            if e.failed or e.chainwork <= tip.chainwork:
                continue
            fork = self.find_fork(tip, e)
            cur = best.get(fork.hash)
            if cur is None or self._better(e, cur[0]):
                best[fork.hash] = (e, fork)
        return [FinalityConflict(e, fork, tip.height - fork.height)
                for e, fork in sorted(best.values(), key=lambda x: x[1].height)]

    def branch_has_tx(self, conflict: FinalityConflict, txid: bytes) -> bool:
        """Whether a block of the refused branch (above its fork point) holds `txid`."""
        cursor: BlockIndex | None = conflict.tip
        while cursor is not None and cursor is not conflict.fork:
            if any(tx.txid == txid for tx in self._load_block(cursor.hash).txs):
                return True
            cursor = cursor.prev
        return False

    # ----------------------------------------------------------------- internals

    def _require(self, block_hash: bytes) -> BlockIndex:
        entry = self.index.get(block_hash)
        if entry is None:
            raise ConsensusError("block-not-found", block_hash.hex())
        return entry

    def _add_entry(self, entry: BlockIndex) -> None:
        self.index[entry.hash] = entry
        if entry.prev is not None:
            self.children.setdefault(entry.prev.hash, []).append(entry)

    def _accept_one(self, block: Block, now: int, result: AcceptResult) -> None:
        block_hash = block.hash
        entry = self.index.get(block_hash)
        if entry is not None and entry.status & BlockStatus.HAVE_DATA:
            result.status = "invalid" if entry.failed else "duplicate"
            result.reason = "duplicate-invalid" if entry.failed else "duplicate"
            return
        if block_hash in self._orphans:
            result.status, result.reason = "duplicate", "duplicate"
            return
        try:
            if block.header.prev_hash not in self.index:
                if self.check_pow:  # no free rides in the orphan pool
                    check_header_pow(block.header, self.params)
                self._add_orphan(block)
                result.status, result.missing_parent = "orphan", block.header.prev_hash
                return
            entry = self.accept_header(block.header, now, block_hash)
            check_block_merkle(block)
        except ConsensusError as exc:
            result.status, result.reason = "invalid", exc.reason
            result.invalid.append((block_hash, exc.reason))
            return
        try:
            check_block(block, self.params)
            check_coinbase_height(block, entry.height)
            parent = entry.prev
            assert parent is not None
            check_block_final(block, entry.height, lambda: self.median_time_past(parent))
        except ConsensusError as exc:
            self._mark_failed(entry, BlockStatus.FAILED)
            result.status, result.reason = "invalid", exc.reason
            result.invalid.append((block_hash, exc.reason))
            return
        entry.status |= BlockStatus.HAVE_DATA
        entry.sequence = self._next_sequence
        self._next_sequence += 1
        self._dirty.add(entry)
        self._remember_block(block)
        self._update.blocks[block_hash] = block.encode()
        if entry.prev is not None and entry.prev.chain_data:
            self._propagate_chain_data(entry)

    def _propagate_chain_data(self, entry: BlockIndex) -> None:
        """`entry` now has data all the way down: so may descendants that arrived earlier."""
        stack = [entry]
        while stack:
            e = stack.pop()
            e.chain_data = True
            if not e.failed and e not in self._finality_refused:
                self._candidates.add(e)
            stack.extend(
                c for c in self.children.get(e.hash, ()) if c.status & BlockStatus.HAVE_DATA
            )

    def _add_orphan(self, block: Block) -> None:
        self._orphans[block.hash] = block
        while len(self._orphans) > self.max_orphan_blocks:
            self._orphans.popitem(last=False)

    def _process_orphans(self, parent_hash: bytes, now: int, result: AcceptResult) -> None:
        if not self._orphans:
            return
        pending = [parent_hash]
        accepted = False
        while pending:
            parent = pending.pop()
            ready = [b for b in self._orphans.values() if b.header.prev_hash == parent]
            for block in ready:
                del self._orphans[block.hash]
                sub = AcceptResult(block.hash, "stored")
                self._accept_one(block, now, sub)
                result.invalid.extend(sub.invalid)
                if sub.status == "stored":
                    pending.append(block.hash)
                    accepted = True
        if accepted:
            self._activate_best_chain(result)

    def _better(self, a: BlockIndex, b: BlockIndex) -> bool:
        return (a.chainwork, -a.sequence) > (b.chainwork, -b.sequence)

    def _best_candidate(self) -> BlockIndex | None:
        if not self._candidates:
            return None
        return max(self._candidates, key=lambda e: (e.chainwork, -e.sequence))

    def _rebuild_candidates(self) -> None:
        self._candidates = {
            e
            for e in self.index.values()
            if e.chain_data and not e.failed and e not in self._finality_refused
        }

    def _activate_best_chain(self, result: AcceptResult) -> None:
        initial_tip = result.old_tip or self.tip
        while True:
            best = self._best_candidate()
            if best is None or best is self.tip or not self._better(best, self.tip):
                break
            fork = self.find_fork(self.tip, best)
            if self.enforce_finality and self.tip.height - fork.height >= self.finality_depth:
                # Reverting a final block is refused: the branch is parked, not invalid, and
                # the network splits rather than rewriting settled history.
                self._candidates.discard(best)
                self._finality_refused.add(best)
                result.finality_refused.append(best.hash)
                continue
            while self.tip is not fork:
                self._disconnect_tip()
            path = []
            cursor: BlockIndex | None = best
            while cursor is not fork:
                assert cursor is not None
                path.append(cursor)
                cursor = cursor.prev
            for entry in reversed(path):
                block = self._load_block(entry.hash)
                try:
                    self._connect_block(entry, block)
                except ConsensusError as exc:
                    self._mark_failed(entry, BlockStatus.FAILED)
                    result.invalid.append((entry.hash, exc.reason))
                    if entry.hash == result.block_hash:
                        result.reason = exc.reason
                    break
        tip = self.tip
        self._candidates = {
            c for c in self._candidates if c.chainwork >= tip.chainwork or c is tip
        }
        self._candidates.add(tip)
        self._summarise(initial_tip, result)

    def _summarise(self, initial_tip: BlockIndex, result: AcceptResult) -> None:
        tip = self.tip
        fork = self.find_fork(initial_tip, tip)
        disconnected, cursor = [], initial_tip
        while cursor is not fork:
            disconnected.append((cursor, self._load_block(cursor.hash)))
            cursor = cursor.prev  # type: ignore[assignment]
        connected, cursor = [], tip
        while cursor is not fork:
            connected.append((cursor, self._load_block(cursor.hash)))
            cursor = cursor.prev  # type: ignore[assignment]
        connected.reverse()
        result.old_tip, result.new_tip, result.fork = initial_tip, tip, fork
        result.disconnected, result.connected = disconnected, connected

    def _connect_block(self, entry: BlockIndex, block: Block) -> None:
        assert entry.prev is self.tip, "blocks connect on the tip only"
        params = self.params
        view = _BlockView(self.utxo)
        created, spent = view.created, view.spent
        undo: list[Coin] = []
        fees = 0
        height = entry.height
        genesis_hash = params.genesis_hash
        cache = self.signature_cache
        # Signatures not already verified (mempool entries are) are checked together at the
        # end, so an injected verifier can spread them over several cores.
        jobs: list[SignatureJob] = []
        job_owner: list[tuple[Transaction, int]] = []
        for tx in block.txs[1:]:
            outpoints = tx.outpoints
            for outpoint in outpoints:
                if outpoint in spent:
                    raise ConsensusError(
                        "bad-txns-inputs-spent-in-block", f"{outpoint} spent twice"
                    )
            fee, coins = check_tx_inputs(tx, view.get, height, params)
            if tx.txid not in cache:
                tx_jobs = signature_jobs(tx, coins, genesis_hash)
                jobs.extend(tx_jobs)
                job_owner.extend((tx, n) for n in range(len(tx_jobs)))
            fees += fee
            undo.extend(coins)
            for outpoint in outpoints:
                if created.pop(outpoint, None) is None:
                    spent.add(outpoint)
            self._create_outputs(tx, height, created)
        if jobs:
            for ok, (tx, n) in zip(self.verify_batch(jobs), job_owner, strict=True):
                if not ok:
                    raise ConsensusError(
                        "bad-txns-bad-signature", f"tx {tx.txid.hex()} signature {n}"
                    )
            for tx, _ in job_owner:
                cache.add(tx.txid)
        coinbase = block.txs[0]
        limit = params.block_reward(height) + fees
        if coinbase.total_out() > limit:
            raise ConsensusError(
                "bad-cb-amount", f"coinbase pays {coinbase.total_out()} > limit {limit}"
            )
        self._create_outputs(coinbase, height, created)
        self._apply_connected(entry, block, view, undo)

    def _apply_connected(
        self, entry: BlockIndex, block: Block, view: _BlockView, undo: list[Coin]
    ) -> None:
        """Make a block that `_connect_block` has checked the new tip: its coins, indexes and
        undo data, in memory and in the journal of the pending store update."""
        utxo, journal = self.utxo, self._update
        for outpoint in view.spent:
            del utxo[outpoint]
            journal.utxo[outpoint] = None
        utxo.update(view.created)
        journal.utxo.update(view.created)
        coinbase = block.txs[0]
        for tx in block.txs:
            txid = tx.txid
            self.tx_index[txid] = entry.hash
            journal.tx_index[txid] = entry.hash
            if tx is not coinbase:
                for outpoint in tx.outpoints:
                    self.spends[outpoint] = txid
                    journal.spends[outpoint] = txid
        self._unencoded_undo[entry.hash] = undo
        if self.address_index:
            self._index_addresses(index_block, block, entry.height, undo, entry.hash)
        self._remember_undo(entry.hash, undo)
        entry.status |= BlockStatus.VALID
        self._dirty.add(entry)
        self.active.append(entry)
        journal.tip = entry.hash

    @staticmethod
    def _create_outputs(tx: Transaction, height: int, into: dict[OutPoint, Coin]) -> None:
        txid, is_coinbase = tx.txid, tx.is_coinbase
        for n, out in enumerate(tx.outputs):
            # OutPoint(txid, n) and Coin(...) without the named tuples' Python-level __new__:
            # the same objects at half the cost, two per output of every connected block.
            into[_new_tuple(OutPoint, (txid, n))] = _new_tuple(
                Coin, (out.amount, out.pkh, height, is_coinbase)
            )

    def _disconnect_tip(self) -> None:
        entry = self.tip
        if entry.prev is None:
            raise ConsensusError("invalid-genesis", "cannot disconnect the genesis block")
        block = self._load_block(entry.hash)
        undo = self._load_undo(entry.hash)
        if self.address_index:
            self._index_addresses(unindex_block, block, entry.height, undo, entry.prev.hash)
        utxo, journal = self.utxo, self._update
        for tx in reversed(block.txs):
            txid = tx.txid
            for n in range(len(tx.outputs)):
                outpoint = OutPoint(txid, n)
                utxo.pop(outpoint, None)
                journal.utxo[outpoint] = None
            self.tx_index.pop(txid, None)
            journal.tx_index[txid] = None
            if tx.is_coinbase:
                continue
            for txin in reversed(tx.inputs):
                coin = undo.pop()
                utxo[txin.outpoint] = coin
                journal.utxo[txin.outpoint] = coin
                self.spends.pop(txin.outpoint, None)
                journal.spends[txin.outpoint] = None
        if undo:
            raise ConsensusError("bad-undo", f"undo data of {entry.hash.hex()} does not match")
        self.active.pop()
        journal.tip = entry.prev.hash

    def _index_addresses(
        self,
        rows_of: Callable[[Block, int, list[Coin], DeltaRows], None],
        block: Block,
        height: int,
        undo: list[Coin],
        new_tip: bytes,
    ) -> None:
        journal = self._update
        try:
            rows_of(block, height, undo, journal.address_deltas)
        except ValueError as exc:
            raise ConsensusError("bad-undo", f"block {block.hash.hex()}: {exc}") from exc
        journal.address_tip = new_tip

    def block_undo(self, block_hash: bytes) -> list[Coin]:
        """The coins the block's inputs spent, in input order (from the store or the cache)."""
        return self._load_undo(block_hash)

    def _mark_failed(self, entry: BlockIndex, flag: int) -> None:
        entry.status |= flag
        self._dirty.add(entry)
        self._candidates.discard(entry)
        for descendant in self._descendants(entry):
            descendant.status |= BlockStatus.FAILED_CHILD
            self._dirty.add(descendant)
            self._candidates.discard(descendant)
        if self.best_header.failed:
            self.best_header = max(
                (e for e in self.index.values() if not e.failed), key=lambda e: e.chainwork
            )

    def _clear_failure(self, entry: BlockIndex) -> None:
        if entry.status & BlockStatus.FAILED_MASK:
            entry.status &= ~BlockStatus.FAILED_MASK
            self._dirty.add(entry)
            if entry.chainwork > self.best_header.chainwork:
                self.best_header = entry

    def _descendants(self, entry: BlockIndex) -> list[BlockIndex]:
        found, stack = [], list(self.children.get(entry.hash, ()))
        while stack:
            e = stack.pop()
            found.append(e)
            stack.extend(self.children.get(e.hash, ()))
        return found

    def _remember_block(self, block: Block) -> None:
        self._blocks[block.hash] = block
        self._blocks.move_to_end(block.hash)
        while len(self._blocks) > _BLOCK_CACHE_SIZE:
            self._blocks.popitem(last=False)

    def _remember_undo(self, block_hash: bytes, undo: list[Coin]) -> None:
        self._undo[block_hash] = list(undo)
        while len(self._undo) > _BLOCK_CACHE_SIZE:
            self._undo.popitem(last=False)

    def _load_block(self, block_hash: bytes) -> Block:
        block = self._blocks.get(block_hash)
        if block is not None:
            return block
        data = self._update.blocks.get(block_hash) or self.reader.get_block_bytes(block_hash)
        if data is None:
            raise ConsensusError("bad-store", f"block {block_hash.hex()} is missing from the store")
        block = decode_block(data, max(self.params.max_block_size, len(data)))
        self._remember_block(block)
        return block

    def _load_undo(self, block_hash: bytes) -> list[Coin]:
        undo = self._undo.get(block_hash)
        if undo is None:
            undo = self._unencoded_undo.get(block_hash)
        if undo is not None:
            return list(undo)
        data = self._update.undo.get(block_hash) or self.reader.get_undo_bytes(block_hash)
        if data is None:
            raise ConsensusError("bad-store", f"undo data of {block_hash.hex()} is missing")
        return decode_undo(data)
