"""The memory pool: unconfirmed transactions valid on top of the active chain.

Pure policy and state: the node hands in the chain state and the time; nothing here touches I/O.
Validity is exactly the chain's (`check_transaction`, `check_tx_inputs`, `check_tx_signatures`
against the tip's UTXO set plus the outputs of pool transactions, spend height = tip + 1); on top
of that come the relay policies: a replacement policy for conflicts (first-seen wins, BIP125
opt-in or full replace-by-fee: `consensus.replacement`), a minimum fee rate, limits on
chains of unconfirmed transactions, a byte budget enforced by evicting the lowest fee rates, and a
small pool of orphans waiting for their parents.

Signatures go through the chain's `SignatureCache`, so a block made of pool transactions connects
without verifying a single signature again.

Entries are kept with their descendant totals (count, size, fee) up to date, which is what both the
descendant limit and eviction need; ancestor packages are computed on demand (they are bounded by
the ancestor limit). Arrival order (`seq`) is always a valid dependency order, because an entry
only ever goes in after all its in-pool parents.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from consensus.block import Block, tx_space_in_block
from consensus.chainstate import AcceptResult, BlockIndex
from consensus.coins import Coin
from consensus.errors import ConsensusError
from consensus.params import (
    DEFAULT_INCREMENTAL_RELAY_FEE_RATE,
    DEFAULT_MAX_MEMPOOL_ANCESTORS,
    DEFAULT_MAX_MEMPOOL_BYTES,
    DEFAULT_MAX_MEMPOOL_DESCENDANTS,
    DEFAULT_MAX_ORPHAN_TX_SIZE,
    DEFAULT_MAX_ORPHAN_TXS,
    DEFAULT_MAX_STANDARD_TX_SIZE,
    DEFAULT_MEMPOOL_FEE_HALFLIFE,
    DEFAULT_MIN_RELAY_FEE_RATE,
    DEFAULT_ORPHAN_TX_EXPIRY,
    DEFAULT_SIGNATURE_CACHE_SIZE,
    ChainParams,
)
from consensus.replacement import (
    ADDS_UNCONFIRMED,
    DEFAULT_REPLACEMENT_POLICY,
    FIRST_SEEN,
    FULL,
    MAX_REPLACEMENT_CANDIDATES,
    SPENDS_CONFLICTING,
    ReplacementPolicy,
    check_pays_more_than_conflicts,
    check_replacement,
    signals_opt_in,
    too_many_replacements,
)
from consensus.tx import OutPoint, Transaction
from consensus.validation import (
    SignatureCache,
    check_transaction,
    check_tx_inputs,
    check_tx_signatures,
    is_final_tx,
    nonfinal_detail,
)

MISSING_INPUTS = "bad-txns-inputs-missingorspent"
# Bitcoin Core's reject reason for a transaction that could not be in the next block yet.
NON_FINAL = "non-final"
# Its reason for a transaction above the standard size.
TX_SIZE = "tx-size"

# Rough CPython footprint of an entry beyond its encoded bytes (entry object, decoded inputs and
# outputs, index slots); only feeds the `usage` estimate.
_ENTRY_OVERHEAD = 700
_INPUT_OVERHEAD = 350
_OUTPUT_OVERHEAD = 150


class ChainView(Protocol):
    """What the mempool reads from the chain state (`ChainState` provides all of it)."""

    @property
    def height(self) -> int: ...

    def coin(self, outpoint: OutPoint) -> Coin | None: ...

    def tx_block(self, txid: bytes) -> Any: ...

    def spender(self, outpoint: OutPoint) -> bytes | None: ...

    def lock_time_clock(self) -> tuple[int, int]: ...


class MempoolConflict(ConsensusError):
    """The transaction spends an output a pool transaction already spends, and the replacement
    policy does not let it replace that one (first seen wins, or it does not signal)."""

    def __init__(self, conflicting: list[bytes]) -> None:
        self.conflicting = conflicting
        super().__init__(
            "txn-mempool-conflict",
            "spends an output already spent by mempool transaction "
            + ", ".join(t.hex() for t in conflicting),
        )


@dataclass(eq=False, slots=True)
class MempoolEntry:
    tx: Transaction
    txid: bytes
    fee: int
    size: int
    time: int
    parents: set[bytes]  # in-pool transactions this one spends from
    children: set[bytes]  # in-pool transactions spending this one
    seq: int  # arrival order: a dependency order of the whole pool
    # Totals over this entry and all its in-pool descendants.
    descendant_count: int = 1
    descendant_size: int = 0
    descendant_fee: int = 0
    _evict_key: tuple[float, int, bytes] | None = None

    @property
    def fee_rate(self) -> float:
        return self.fee / self.size

    @property
    def descendant_score(self) -> float:
        """What eviction ranks by: a parent is worth at least what its descendants pay for it."""
        return max(self.fee / self.size, self.descendant_fee / self.descendant_size)


@dataclass
class ReplacementRecord:
    """Pool transactions a replacement pushed out (direct conflicts and their descendants)."""

    replaced: dict[bytes, bytes] = field(default_factory=dict)  # txid -> replacing txid
    replaced_txs: dict[bytes, Transaction] = field(default_factory=dict)  # gone from the pool

    def note(self, removed: list[MempoolEntry], by: bytes) -> None:
        for entry in removed:
            self.replaced[entry.txid] = by
            self.replaced_txs[entry.txid] = entry.tx


@dataclass
class AcceptOutcome(ReplacementRecord):
    accepted: list[bytes] = field(default_factory=list)  # the transaction, then adopted orphans
    orphan: bool = False
    missing_parents: list[bytes] = field(default_factory=list)
    evicted: list[bytes] = field(default_factory=list)  # pushed out to make room
    orphans_rejected: list[tuple[bytes, str]] = field(default_factory=list)
    # (`replaced`: what the transaction, or an orphan it let in, replaced; parents first.)


@dataclass
class MempoolUpdate(ReplacementRecord):
    """What a chain change did to the pool."""

    included: list[bytes] = field(default_factory=list)  # now confirmed
    conflicted: list[bytes] = field(default_factory=list)
    conflicted_with: dict[bytes, bytes] = field(default_factory=dict)  # txid -> block txid
    returned: list[bytes] = field(default_factory=list)  # from disconnected blocks, back in
    removed: list[bytes] = field(default_factory=list)  # invalid on the new chain
    removed_reasons: dict[bytes, str] = field(default_factory=dict)
    evicted: list[bytes] = field(default_factory=list)  # over the byte budget afterwards
    orphans_accepted: list[bytes] = field(default_factory=list)
    orphans_rejected: list[tuple[bytes, str]] = field(default_factory=list)
    # (`replaced`: what adopted orphans replaced, as in `AcceptOutcome`.)


@dataclass(eq=False, slots=True)
class _Orphan:
    tx: Transaction
    time: int
    missing: tuple[bytes, ...]


class Mempool:
    def __init__(
        self,
        params: ChainParams,
        *,
        max_bytes: int = DEFAULT_MAX_MEMPOOL_BYTES,
        min_fee_rate: int = DEFAULT_MIN_RELAY_FEE_RATE,
        max_orphans: int = DEFAULT_MAX_ORPHAN_TXS,
        orphan_expiry: int = DEFAULT_ORPHAN_TX_EXPIRY,
        signature_cache: SignatureCache | None = None,
        max_ancestors: int = DEFAULT_MAX_MEMPOOL_ANCESTORS,
        max_descendants: int = DEFAULT_MAX_MEMPOOL_DESCENDANTS,
        incremental_fee_rate: int = DEFAULT_INCREMENTAL_RELAY_FEE_RATE,
        fee_halflife: int = DEFAULT_MEMPOOL_FEE_HALFLIFE,
        max_orphan_size: int = DEFAULT_MAX_ORPHAN_TX_SIZE,
        max_standard_size: int = DEFAULT_MAX_STANDARD_TX_SIZE,
        replacement_policy: ReplacementPolicy = DEFAULT_REPLACEMENT_POLICY,
    ) -> None:
        self.params = params
        self.replacement_policy = replacement_policy
        self.max_standard_size = max_standard_size
        self.max_bytes = max_bytes
        self.min_relay_fee_rate = min_fee_rate
        self.max_orphans = max_orphans
        self.orphan_expiry = orphan_expiry
        # Share the chain state's cache: that sharing is what lets blocks skip verification.
        # (Not `or`: an empty cache has len() 0 and is falsy, and would silently go unshared.)
        self.signature_cache = (
            signature_cache
            if signature_cache is not None
            else SignatureCache(DEFAULT_SIGNATURE_CACHE_SIZE)
        )
        self.max_ancestors = max_ancestors
        self.max_descendants = max_descendants
        self.incremental_fee_rate = incremental_fee_rate
        self.fee_halflife = fee_halflife
        self.max_orphan_size = max_orphan_size
        self._entries: dict[bytes, MempoolEntry] = {}
        self._spenders: dict[OutPoint, bytes] = {}
        # Lazy min-heap of (descendant score, -seq, txid); stale keys are skipped on pop.
        self._evict_heap: list[tuple[float, int, bytes]] = []
        self._bytes = 0
        self._usage = 0
        self._next_seq = 0
        self._floor = 0.0  # raised after evictions, decays with `fee_halflife`
        self._floor_time = 0
        self._orphans: OrderedDict[bytes, _Orphan] = OrderedDict()
        self._orphans_by_parent: dict[bytes, set[bytes]] = {}
        self._orphan_scan_at = 0  # no orphan expires before this time: skip the scan till then

    # ----------------------------------------------------------------- queries

    def __contains__(self, txid: object) -> bool:
        return txid in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, txid: bytes) -> MempoolEntry | None:
        return self._entries.get(txid)

    def txids(self) -> list[bytes]:
        """All txids in arrival order (parents before children)."""
        return list(self._entries)

    def transactions(self) -> Iterator[tuple[bytes, Transaction]]:
        """(txid, transaction) of every entry, in arrival order; the pool must not change
        while this is iterated."""
        return ((txid, entry.tx) for txid, entry in self._entries.items())

    @property
    def usage(self) -> int:
        """Estimated memory use in bytes."""
        return self._usage

    @property
    def min_fee_rate(self) -> float:
        """The fee rate (units/byte) a newcomer must pay now: the relay minimum, or more while
        the pool is recovering from being full."""
        return max(float(self.min_relay_fee_rate), self._floor)

    def conflicts_of(self, tx: Transaction) -> list[bytes]:
        found: list[bytes] = []
        for txin in tx.inputs:
            spender = self._spenders.get(txin.outpoint)
            if spender is not None and spender != tx.txid and spender not in found:
                found.append(spender)
        return found

    def signals_replaceable(self, txid: bytes) -> bool:
        """BIP125's `bip125-replaceable`: the entry or one of its in-pool ancestors signals
        (whatever the policy: under full RBF everything is replaceable, signalling or not)."""
        entry = self._entries[txid]
        if signals_opt_in(entry.tx):
            return True
        return any(signals_opt_in(self._entries[a].tx) for a in self._ancestors(entry.parents))

    def spender_of(self, outpoint: OutPoint) -> bytes | None:
        return self._spenders.get(outpoint)

    def orphan_count(self) -> int:
        return len(self._orphans)

    def has_orphan(self, txid: bytes) -> bool:
        return txid in self._orphans

    def snapshot(self) -> list[tuple[bytes, int]]:
        """(encoded tx, entry time) in dependency order, for persisting across restarts."""
        return [(e.tx.encode(), e.time) for e in self._entries.values()]

    # ----------------------------------------------------------------- acceptance

    def accept(
        self, tx: Transaction, chain: ChainView, now: int, *, entry_time: int | None = None
    ) -> AcceptOutcome:
        """Validate `tx` against the tip plus the pool and add it, or park it as an orphan.

        Raises `ConsensusError` on rejection. `entry_time` restores a persisted entry's age.
        """
        self._expire_orphans(now)
        self._decay_floor(now)
        outcome = AcceptOutcome()
        missing = self._accept_one(
            tx, chain, now if entry_time is None else entry_time, outcome.evicted,
            orphan_time=now, replaced=outcome,
        )
        if missing:
            outcome.orphan, outcome.missing_parents = True, missing
            return outcome
        outcome.accepted.append(tx.txid)
        self._retry_orphans(
            [tx.txid], chain, now, outcome.accepted, outcome.orphans_rejected, outcome.evicted,
            outcome,
        )
        return outcome

    def _accept_one(
        self,
        tx: Transaction,
        chain: ChainView,
        entry_time: int,
        evicted: list[bytes],
        *,
        orphan_time: int | None,
        bypass_limits: bool = False,
        replaced: ReplacementRecord | None = None,
    ) -> list[bytes]:
        """Add `tx` (returns []) or park it as an orphan (returns its missing parents; only when
        `orphan_time` is given). Raises `ConsensusError` otherwise. Only with `replaced` may it
        replace conflicting entries under the pool's policy; what it evicts so goes in there."""
        params = self.params
        entries = self._entries
        txid = tx.txid
        if txid in entries:
            raise ConsensusError("txn-already-in-mempool", txid.hex())
        check_transaction(tx, params)
        if tx.size > self.max_standard_size and not bypass_limits:
            # A transaction near the block size would crowd out everything else, or fit in no
            # template at all beside the coinbase, and sit in the pool for ever.
            raise ConsensusError(
                TX_SIZE, f"{tx.size} bytes, the most relayed is {self.max_standard_size}"
            )
        if tx.is_coinbase:
            raise ConsensusError("coinbase", "a coinbase is only valid in a block")
        if chain.tx_block(txid) is not None:
            raise ConsensusError("txn-already-known", "already confirmed in the active chain")
        if tx.locktime:
            # Final in the next block, or not at all: a block may only hold final transactions,
            # so everything in the pool can go into the next one (Bitcoin Core's CheckFinalTx).
            lock_height, lock_clock = chain.lock_time_clock()
            if not is_final_tx(tx, lock_height, lock_clock):
                raise ConsensusError(
                    NON_FINAL, nonfinal_detail(tx, lock_height, lock_clock, "the next block")
                )

        spend_height = chain.height + 1
        found, parents, conflicts, missing = self._find_inputs(tx, chain, spend_height)
        if conflicts and (replaced is None or not self._may_replace(conflicts)):
            raise MempoolConflict(conflicts)
        if missing and orphan_time is not None:
            # An orphan only if no parent is known: a confirmed parent means the output is
            # spent (or never existed), which no later arrival can fix.
            unknown = [
                op.txid for op in missing
                if op.txid not in entries and chain.tx_block(op.txid) is None
            ]
            if len(unknown) == len(missing):
                return self._add_orphan(tx, orphan_time, list(dict.fromkeys(unknown)))

        fee, coins = check_tx_inputs(tx, found.get, spend_height, params)
        size = tx.size
        if not bypass_limits:
            self._check_fee_rate(fee, size)
        doomed = self._check_replacement(txid, fee, size, conflicts, parents)

        ancestors = self._ancestors(parents)
        plan: set[bytes] = set()
        plan_score = 0.0
        if not bypass_limits:
            self._check_chain_limits(ancestors, doomed)
            doomed_bytes = sum(entries[t].size for t in doomed)
            if self._bytes - doomed_bytes + size > self.max_bytes:
                plan, plan_score = self._plan_eviction(fee, size, ancestors, doomed)

        # Last, as the most expensive check: cheap policy refusals must not cost a verification.
        check_tx_signatures(tx, coins, params.genesis_hash, self.signature_cache)

        if replaced is not None and doomed:
            removed = [entries[t] for t in sorted(doomed, key=lambda t: entries[t].seq)]
            self._remove_set(doomed)
            replaced.note(removed, txid)
        self._insert(tx, txid, fee, size, entry_time, parents, ancestors)
        if plan:
            evicted.extend(self._remove_set(plan))
            self._raise_floor(plan_score)
        return []

    def _find_inputs(
        self, tx: Transaction, chain: ChainView, spend_height: int
    ) -> tuple[dict[OutPoint, Coin], set[bytes], list[bytes], list[OutPoint]]:
        """Look up what `tx` spends, in the pool first, then in the chain: the coins found, the
        pool transactions it spends from, the pool transactions already spending one of its
        inputs (conflicts) and the outpoints found nowhere."""
        entries = self._entries
        spenders = self._spenders
        found: dict[OutPoint, Coin] = {}
        parents: set[bytes] = set()
        conflicts: list[bytes] = []
        missing: list[OutPoint] = []
        for outpoint in tx.outpoints:
            spender = spenders.get(outpoint)
            if spender is not None and spender not in conflicts:
                conflicts.append(spender)
            parent = entries.get(outpoint.txid)
            if parent is not None:
                parents.add(outpoint.txid)
                outs = parent.tx.outputs
                if outpoint.index < len(outs):
                    out = outs[outpoint.index]
                    # Pool outputs are never coinbase outputs, so their height is moot.
                    found[outpoint] = Coin(out.amount, out.pkh, spend_height, False)
                continue
            coin = chain.coin(outpoint)
            if coin is None:
                missing.append(outpoint)
            else:
                found[outpoint] = coin
        return found, parents, conflicts, missing

    def _may_replace(self, conflicts: list[bytes]) -> bool:
        """Whether the policy lets a newcomer try to replace these direct conflicts at all."""
        policy = self.replacement_policy
        if policy == FULL:
            return True
        if policy == FIRST_SEEN:
            return False
        return all(self.signals_replaceable(c) for c in conflicts)

    def _check_replacement(
        self, txid: bytes, fee: int, size: int, conflicts: list[bytes], parents: set[bytes]
    ) -> set[bytes]:
        """BIP125 rules 2 to 5 and Core's fee rate check, in Core's order: what the replacement
        would evict (its direct conflicts and their descendants), or `ConsensusError`."""
        if not conflicts:
            return set()
        entries = self._entries
        direct = [(c, entries[c].fee, entries[c].size) for c in conflicts]
        # Core's order: the fee rate first, so that the loser of a race (not charged to the peer
        # that relays it) costs no walk either.
        check_pays_more_than_conflicts(txid, fee, size, direct)
        # Rule 5 before any walk of descendants, on the (over-)count the entries carry, so that
        # a refused replacement costs O(conflicts) however big the pool.
        bound = sum(entries[c].descendant_count for c in conflicts)
        if bound > MAX_REPLACEMENT_CANDIDATES:
            raise too_many_replacements(txid, bound)
        doomed: set[bytes] = set()
        for c in conflicts:
            doomed |= self._descendants(c)
        # Rule 2: no unconfirmed input that one of the replaced transactions did not spend.
        spent_by_conflicts: set[bytes] = set()
        for c in conflicts:
            spent_by_conflicts |= entries[c].parents
        added = sorted(parents - spent_by_conflicts)
        if added:
            raise ConsensusError(
                ADDS_UNCONFIRMED,
                f"replacement {txid.hex()} adds an unconfirmed input, from pool transaction "
                f"{added[0].hex()}",
            )
        if not parents.isdisjoint(doomed):
            raise ConsensusError(
                SPENDS_CONFLICTING,
                f"{txid.hex()} spends an output of a transaction it would replace",
            )
        check_replacement(
            txid=txid,
            fee=fee,
            size=size,
            direct=direct,
            replaced_fee=sum(entries[t].fee for t in doomed),
            incremental_fee_rate=self.incremental_fee_rate,
        )
        return doomed

    def _check_fee_rate(self, fee: int, size: int) -> None:
        """The relay minimum and, while the pool is full, its current floor."""
        if fee < self.min_relay_fee_rate * size:
            raise ConsensusError(
                "min-relay-fee-not-met",
                f"fee rate {fee / size:.3f} < minimum {self.min_relay_fee_rate} units/byte",
            )
        if fee < self._floor * size:
            raise ConsensusError(
                "mempool-full",
                f"fee rate {fee / size:.3f} < current mempool minimum {self._floor:.3f}",
            )

    def _check_chain_limits(self, ancestors: set[bytes], leaving: set[bytes]) -> None:
        """A new entry with these ancestors stays within max_ancestors and leaves each of them
        within max_descendants, not counting the descendants `leaving` (being replaced)."""
        entries = self._entries
        if len(ancestors) + 1 > self.max_ancestors:
            raise ConsensusError(
                "too-long-mempool-chain",
                f"{len(ancestors) + 1} ancestors > limit {self.max_ancestors}",
            )
        for a in ancestors:
            count = entries[a].descendant_count
            if leaving and count + 1 > self.max_descendants:
                count -= len(self._descendants(a) & leaving)
            if count + 1 > self.max_descendants:
                raise ConsensusError(
                    "too-long-mempool-chain",
                    f"{a.hex()} would exceed {self.max_descendants} descendants",
                )

    def _insert(
        self,
        tx: Transaction,
        txid: bytes,
        fee: int,
        size: int,
        entry_time: int,
        parents: set[bytes],
        ancestors: set[bytes],
    ) -> None:
        entries = self._entries
        entry = MempoolEntry(
            tx, txid, fee, size, entry_time, parents, set(), self._next_seq,
            1, size, fee,
        )
        self._next_seq += 1
        entries[txid] = entry
        # Its merkle leaf hashed now, not while the block that confirms it is being relayed.
        tx.merkle_leaf  # noqa: B018
        for p in parents:
            entries[p].children.add(txid)
        spenders = self._spenders
        for outpoint in tx.outpoints:
            spenders[outpoint] = txid
        for a in ancestors:
            ae = entries[a]
            ae.descendant_count += 1
            ae.descendant_size += size
            ae.descendant_fee += fee
            self._push_evict(ae)
        self._push_evict(entry)
        self._bytes += size
        self._usage += _entry_usage(tx)

    def _ancestors(self, parents: Iterable[bytes]) -> set[bytes]:
        entries = self._entries
        found: set[bytes] = set()
        stack = list(parents)
        while stack:
            txid = stack.pop()
            if txid not in found:
                found.add(txid)
                stack.extend(entries[txid].parents)
        return found

    def _descendants(self, txid: bytes) -> set[bytes]:
        """`txid` and everything in the pool that depends on it."""
        entries = self._entries
        found: set[bytes] = set()
        stack = [txid]
        while stack:
            t = stack.pop()
            if t not in found:
                found.add(t)
                stack.extend(entries[t].children)
        return found

    # ----------------------------------------------------------------- size limit

    def _push_evict(self, entry: MempoolEntry) -> None:
        key = (entry.descendant_score, -entry.seq, entry.txid)
        entry._evict_key = key
        heap = self._evict_heap
        heapq.heappush(heap, key)
        if len(heap) > 2 * len(self._entries) + 64:
            self._evict_heap = [
                e._evict_key for e in self._entries.values() if e._evict_key is not None
            ]
            heapq.heapify(self._evict_heap)

    def _pop_evict(self) -> tuple[float, int, bytes] | None:
        """The lowest-score live entry's key (newest first among equals), or None."""
        heap, entries = self._evict_heap, self._entries
        while heap:
            key = heapq.heappop(heap)
            entry = entries.get(key[2])
            if entry is not None and entry._evict_key is key:
                return key
        return None

    def _plan_eviction(
        self, fee: int, size: int, ancestors: set[bytes], replacing: set[bytes]
    ) -> tuple[set[bytes], float]:
        """What to evict to fit a newcomer (and the best score among it), or `mempool-full` if
        that would give up fees. What it replaces (`replacing`) leaves anyway: it frees its
        bytes and is not part of the plan."""
        if size > self.max_bytes:
            raise ConsensusError("mempool-full", f"{size} bytes exceed the whole pool")
        entries = self._entries
        # The newcomer is worth to a miner no more than its own rate nor its package's rate.
        package_fee = fee + sum(entries[a].fee for a in ancestors)
        package_size = size + sum(entries[a].size for a in ancestors)
        newcomer_rate = min(fee / size, package_fee / package_size)
        need = self._bytes + size - self.max_bytes
        doomed: set[bytes] = set(replacing)
        freed = sum(entries[t].size for t in replacing)
        best = 0.0
        popped: list[tuple[float, int, bytes]] = []
        try:
            while freed < need:
                key = self._pop_evict()
                if key is None:
                    break
                popped.append(key)
                txid = key[2]
                if txid in ancestors or txid in doomed:
                    continue  # evicting a parent would evict the newcomer with it
                if not newcomer_rate > key[0]:
                    raise ConsensusError(
                        "mempool-full",
                        f"fee rate {newcomer_rate:.3f} is not above the {key[0]:.3f} "
                        "of the entries it would evict",
                    )
                best = max(best, key[0])
                for d in self._descendants(txid):
                    if d not in doomed:
                        doomed.add(d)
                        freed += entries[d].size
        finally:
            for key in popped:
                heapq.heappush(self._evict_heap, key)
        if freed < need:
            raise ConsensusError("mempool-full", "not enough evictable entries")
        return doomed - replacing, best

    def _trim(self, evicted: list[bytes]) -> None:
        """Evict lowest descendant scores (with their descendants) until within the budget."""
        while self._bytes > self.max_bytes:
            key = self._pop_evict()
            if key is None:
                break
            self._raise_floor(key[0])
            evicted.extend(self._remove_set(self._descendants(key[2])))

    def _raise_floor(self, evicted_score: float) -> None:
        self._floor = max(self._floor, evicted_score + self.incremental_fee_rate)

    def _decay_floor(self, now: int) -> None:
        if self._floor > 0 and now > self._floor_time:
            self._floor *= 0.5 ** ((now - self._floor_time) / self.fee_halflife)
            if self._floor < self.min_relay_fee_rate / 2:
                self._floor = 0.0
        self._floor_time = max(self._floor_time, now)

    # ----------------------------------------------------------------- removal

    def _remove_entry(self, txid: bytes) -> MempoolEntry:
        """Drop one entry that is either a root (confirmed: children stay, minus a parent) or
        has no children left (removed leaves first); other shapes would corrupt the totals."""
        entries = self._entries
        entry = entries.pop(txid)
        spenders = self._spenders
        for outpoint in entry.tx.outpoints:
            if spenders.get(outpoint) == txid:
                del spenders[outpoint]
        for c in entry.children:
            entries[c].parents.discard(txid)
        for p in entry.parents:
            entries[p].children.discard(txid)
        # A confirmed entry is a root (no parents): no ancestors' totals to lower.
        for a in self._ancestors(entry.parents) if entry.parents else ():
            ae = entries[a]
            ae.descendant_count -= 1
            ae.descendant_size -= entry.size
            ae.descendant_fee -= entry.fee
            self._push_evict(ae)
        self._bytes -= entry.size
        self._usage -= _entry_usage(entry.tx)
        return entry

    def _remove_set(self, txids: set[bytes]) -> list[bytes]:
        """Remove a descendant-closed set, children first; returns them parents first."""
        order = sorted(txids, key=lambda t: self._entries[t].seq, reverse=True)
        for t in order:
            self._remove_entry(t)
        order.reverse()
        return order

    def _clear(self) -> list[MempoolEntry]:
        old = list(self._entries.values())
        self._entries = {}
        self._spenders = {}
        self._evict_heap = []
        self._bytes = self._usage = 0
        return old

    # ----------------------------------------------------------------- orphans

    def _add_orphan(self, tx: Transaction, time: int, missing: list[bytes]) -> list[bytes]:
        txid = tx.txid
        if txid in self._orphans:
            return missing
        if tx.size > self.max_orphan_size:
            raise ConsensusError(
                "orphan-tx-too-large", f"{tx.size} bytes > {self.max_orphan_size} for an orphan"
            )
        self._orphans[txid] = _Orphan(tx, time, tuple(missing))
        if len(self._orphans) == 1 or time + self.orphan_expiry < self._orphan_scan_at:
            self._orphan_scan_at = time + self.orphan_expiry
        for parent in missing:
            self._orphans_by_parent.setdefault(parent, set()).add(txid)
        while len(self._orphans) > self.max_orphans:
            self._drop_orphan(next(iter(self._orphans)))
        return missing

    def _drop_orphan(self, txid: bytes) -> _Orphan:
        orphan = self._orphans.pop(txid)
        for parent in orphan.missing:
            waiting = self._orphans_by_parent.get(parent)
            if waiting is not None:
                waiting.discard(txid)
                if not waiting:
                    del self._orphans_by_parent[parent]
        return orphan

    def _expire_orphans(self, now: int) -> None:
        if now < self._orphan_scan_at or not self._orphans:
            return
        expired = [t for t, o in self._orphans.items() if o.time + self.orphan_expiry <= now]
        for txid in expired:
            self._drop_orphan(txid)
        self._orphan_scan_at = min(
            (o.time + self.orphan_expiry for o in self._orphans.values()), default=0
        )

    def _retry_orphans(
        self,
        parents: list[bytes],
        chain: ChainView,
        now: int,
        accepted: list[bytes],
        rejected: list[tuple[bytes, str]],
        evicted: list[bytes],
        replaced: ReplacementRecord | None,
    ) -> None:
        if not self._orphans:
            return  # nobody waits on anything (a block's thousand txids need no look-ups)
        queue = deque(parents)
        while queue:
            parent = queue.popleft()
            waiting = self._orphans_by_parent.get(parent)
            if not waiting:
                continue
            # Oldest first, so that among conflicting orphans the first seen wins.
            for txid in [t for t in self._orphans if t in waiting]:
                if txid not in self._orphans:
                    continue
                orphan = self._drop_orphan(txid)
                try:
                    missing = self._accept_one(
                        orphan.tx, chain, now, evicted, orphan_time=orphan.time,
                        replaced=replaced,
                    )
                except ConsensusError as exc:
                    rejected.append((txid, exc.reason))
                    continue
                if not missing:
                    accepted.append(txid)
                    queue.append(txid)

    # ----------------------------------------------------------------- chain changes

    def update_for_chain(
        self, result: AcceptResult, chain: ChainView, now: int
    ) -> MempoolUpdate:
        """Follow the chain after `chain.accept_block` (or invalidate/reconsider) returned
        `result` (an `AcceptResult`): drop what got confirmed or double-spent, and on a reorg put
        the disconnected blocks' transactions back and drop what the new chain made invalid."""
        self._expire_orphans(now)
        self._decay_floor(now)
        update = MempoolUpdate()
        if not result.connected and not result.disconnected:
            return update
        if not self._entries and not self._orphans and not result.disconnected:
            return update  # nothing to confirm, conflict or retry (a sync, a quiet network)
        if result.disconnected:
            self._reorg(result, chain, now, update)
        else:
            self._connect(result.connected, update)
        retry = [tx.txid for _, block in result.connected for tx in block.txs]
        retry += update.returned
        self._drop_orphans_for_blocks([block for _, block in result.connected])
        self._retry_orphans(
            retry, chain, now, update.orphans_accepted, update.orphans_rejected, update.evicted,
            update,
        )
        return update

    def _connect(
        self, connected: list[tuple[BlockIndex, Block]], update: MempoolUpdate
    ) -> None:
        entries, spenders = self._entries, self._spenders
        for _, block in connected:
            for tx in block.txs[1:]:
                txid = tx.txid
                for outpoint in tx.outpoints:
                    spender = spenders.get(outpoint)
                    if spender is not None and spender != txid:
                        for t in self._remove_set(self._descendants(spender)):
                            update.conflicted.append(t)
                            update.conflicted_with[t] = txid
                if txid in entries:
                    # Its in-pool parents were confirmed before it, so it is a root by now.
                    self._remove_entry(txid)
                    update.included.append(txid)

    def _reorg(
        self, result: AcceptResult, chain: ChainView, now: int, update: MempoolUpdate
    ) -> None:
        """Rebuild the pool against the new tip: the disconnected blocks' transactions first
        (oldest block first, so parents come first), then the old entries in arrival order."""
        candidates: list[tuple[Transaction, int, bool]] = [
            (tx, now, True)
            for _, block in reversed(result.disconnected)
            for tx in block.txs[1:]
        ]
        candidates += [(e.tx, e.time, False) for e in self._clear()]
        failed: dict[bytes, tuple[str, bytes | None]] = {}
        for tx, entry_time, returned in candidates:
            txid = tx.txid
            if chain.tx_block(txid) is not None:
                if not returned:
                    update.included.append(txid)
                continue
            try:
                # Limits are waived as in Bitcoin Core: these were fine before the reorg, and
                # dropping a confirmed payment for policy reasons would surprise its owner.
                self._accept_one(
                    tx, chain, entry_time, update.evicted, orphan_time=None, bypass_limits=True
                )
            except ConsensusError as exc:
                cause = self._removal_cause(tx, exc.reason, chain, failed)
                failed[txid] = cause
                reason, block_txid = cause
                if block_txid is not None:
                    update.conflicted.append(txid)
                    update.conflicted_with[txid] = block_txid
                else:
                    update.removed.append(txid)
                    update.removed_reasons[txid] = reason
                continue
            if returned:
                update.returned.append(txid)
        self._trim(update.evicted)

    @staticmethod
    def _removal_cause(
        tx: Transaction,
        reason: str,
        chain: ChainView,
        failed: dict[bytes, tuple[str, bytes | None]],
    ) -> tuple[str, bytes | None]:
        """Why a transaction could not go back in: its parent's fate, a double spend in the new
        chain (with the spending txid), or the rule it now breaks."""
        for txin in tx.inputs:
            if txin.prev_txid in failed:
                return failed[txin.prev_txid]
        if reason == MISSING_INPUTS:
            for txin in tx.inputs:
                spender = chain.spender(txin.outpoint)
                if spender is not None:
                    return reason, spender
        return reason, None

    def _drop_orphans_for_blocks(self, blocks: list[Block]) -> None:
        """Orphans that got confirmed, or whose inputs a block spent, can never get in."""
        if not self._orphans:
            return
        confirmed: set[bytes] = set()
        spent: set[OutPoint] = set()
        for block in blocks:
            for tx in block.txs:
                confirmed.add(tx.txid)
                spent.update(txin.outpoint for txin in tx.inputs)
        doomed = [
            txid for txid, o in self._orphans.items()
            if txid in confirmed or any(txin.outpoint in spent for txin in o.tx.inputs)
        ]
        for txid in doomed:
            self._drop_orphan(txid)

    # ----------------------------------------------------------------- block templates

    def select_for_block(
        self, max_bytes: int, final_at: tuple[int, int] | None = None
    ) -> tuple[list[Transaction], int]:
        """Transactions for a block template, taking at most `max_bytes` of the block's encoding
        (`tx_space_in_block`: each with its framing), and their fees.

        Ancestor-package selection as in Bitcoin Core: repeatedly take the entry whose package
        (itself plus its not-yet-selected ancestors) pays the best fee rate, with that package,
        parents first. A high-fee child thereby pulls in its low-fee parent. With `final_at`
        (the block's height and lock-time clock, `ChainState.lock_time_clock`) a package with a
        transaction not final there is left out, as Core's TestPackageTransactions does: the
        pool only holds transactions final on its tip, but a template may be for another block.
        """
        entries = self._entries
        if not entries:
            return [], 0
        locked: set[bytes] = set()
        if final_at is not None:
            locked = {
                txid
                for txid, e in entries.items()
                if e.tx.locktime and not is_final_tx(e.tx, *final_at)
            }
        ancestors: dict[bytes, set[bytes]] = {}
        pkg_fee: dict[bytes, int] = {}
        pkg_size: dict[bytes, int] = {}
        space = {txid: tx_space_in_block(e.size) for txid, e in entries.items()}
        heap: list[tuple[float, int, bytes]] = []
        for txid, e in entries.items():
            anc = self._ancestors(e.parents) if e.parents else set()
            ancestors[txid] = anc
            fee = e.fee + sum(entries[a].fee for a in anc)
            size = space[txid] + sum(space[a] for a in anc)
            pkg_fee[txid], pkg_size[txid] = fee, size
            heap.append((-fee / size, e.seq, txid))
        heapq.heapify(heap)
        smallest = min(space.values())
        selected: set[bytes] = set()
        chosen: list[MempoolEntry] = []
        total_size = total_fee = 0
        while heap and max_bytes - total_size >= smallest:
            neg_rate, _, txid = heapq.heappop(heap)
            if txid in selected or neg_rate != -pkg_fee[txid] / pkg_size[txid]:
                continue  # taken already, or a stale key from before an ancestor was taken
            if total_size + pkg_size[txid] > max_bytes:
                continue
            if locked and (txid in locked or not locked.isdisjoint(ancestors[txid])):
                continue
            package = sorted(
                (entries[t] for t in ancestors[txid] | {txid} if t not in selected),
                key=lambda e: e.seq,
            )
            for e in package:
                selected.add(e.txid)
                chosen.append(e)
                total_size += space[e.txid]
                total_fee += e.fee
                for d in self._descendants(e.txid):
                    if d in selected:
                        continue
                    pkg_fee[d] -= e.fee
                    pkg_size[d] -= space[e.txid]
                    heapq.heappush(heap, (-pkg_fee[d] / pkg_size[d], entries[d].seq, d))
        return [e.tx for e in chosen], total_fee


    # Last in the class body so that `bytes` in the annotations above means the builtin.
    @property
    def bytes(self) -> int:
        """Total encoded size of the entries."""
        return self._bytes


def _entry_usage(tx: Transaction) -> int:
    return (
        tx.size + _ENTRY_OVERHEAD
        + _INPUT_OVERHEAD * len(tx.inputs) + _OUTPUT_OVERHEAD * len(tx.outputs)
    )
