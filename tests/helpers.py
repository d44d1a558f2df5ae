"""Shared builders for consensus tests: keys, params and a `ChainBuilder`.

Typical use::

    b = ChainBuilder(regtest(coinbase_maturity=1))
    b.mine(3)                                   # three blocks on the tip, delivered
    tx = b.spend([coinbase_outpoint(b.block_at(1))], fee=100)
    blk = b.block(txs=[tx])                     # built (and solved) but not delivered
    result = b.accept(blk)                      # chain.accept_block + store.apply(take_update())

The builder keeps its *own* record of every header it has built (height, time, bits, chainwork),
so it can mine on any parent: a block the chain has not seen yet (to deliver children first), a
block the chain rejected (to test `bad-prevblk`), or a stale branch. Expected `bits` and the
median time past are computed here independently of `ChainState`, from `consensus.pow` only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consensus.block import Block, BlockHeader
from consensus.blockbuild import BLOCK_VERSION
from consensus.chainstate import AcceptResult, BlockIndex, ChainState
from consensus.coins import Coin
from consensus.errors import ConsensusError
from consensus.hashing import merkle_root
from consensus.keys import PrivateKey, pubkey_hash
from consensus.params import REGTEST, TESTNET, ChainParams
from consensus.pow import (
    bits_to_target,
    hash_meets_target,
    retarget,
    target_to_bits,
    work_from_target,
)
from consensus.tx import OutPoint, Transaction, TxIn, TxOut, make_coinbase, sign_transaction
from storage import MemoryStore

# ------------------------------------------------------------------------------------ keys

KEYS: tuple[PrivateKey, ...] = tuple(
    PrivateKey(hashlib.sha256(b"powlab-test-key-%d" % i).digest()) for i in range(8)
)
_KEY_BY_PKH: dict[bytes, PrivateKey] = {pubkey_hash(k.public_key): k for k in KEYS}


def key(n: int = 0) -> PrivateKey:
    """The n-th fixed test key (deterministic seeds, never random)."""
    return KEYS[n]


def pkh(n: int = 0) -> bytes:
    """The pubkey hash (address payload) of `key(n)`."""
    return pubkey_hash(KEYS[n].public_key)


def owner(address_hash: bytes) -> PrivateKey:
    """The test key whose pubkey hashes to `address_hash`."""
    return _KEY_BY_PKH[address_hash]


# ------------------------------------------------------------------------------------ params

#: A fixed "wall clock" for accepting blocks: far enough after genesis that no default-spaced
#: block is ever too new, but explicit so tests stay deterministic.
CLOCK_OFFSET = 1_000_000


def regtest(**overrides: Any) -> ChainParams:
    """REGTEST with `overrides` (e.g. ``coinbase_maturity=1``)."""
    return REGTEST.with_overrides(overrides) if overrides else REGTEST


def retargeting(window: int = 4, **overrides: Any) -> ChainParams:
    """TESTNET's rules (difficulty retargets) with a `window`-block window and REGTEST's easy
    pow limit.

    Blocks stay cheap to mine (the limit is ~2**255, so the hardest target a few fast windows
    reach needs only hundreds of tries) while blocks on different branches can carry different
    amounts of work: exactly what most-work-vs-longest tests need.
    """
    return TESTNET.with_overrides(
        {"pow_limit_bits": REGTEST.pow_limit_bits, "retarget_window": window, **overrides}
    )


# ------------------------------------------------------------------------------------ store


class NullReader:
    """A reader with nothing committed: fine while the chain state's cache holds every block."""

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        return None

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        return None


# ------------------------------------------------------------------------------------ mining


def solve(header: BlockHeader) -> BlockHeader:
    """The first nonce whose hash meets `header.bits` (a few tries at regtest difficulty)."""
    target = bits_to_target(header.bits)
    nonce = 0
    while True:
        candidate = header.with_nonce(nonce)
        if hash_meets_target(candidate.hash, target):
            return candidate
        nonce += 1


def unsolve(header: BlockHeader) -> BlockHeader:
    """The first nonce whose hash does NOT meet `header.bits` (for high-hash tests)."""
    target = bits_to_target(header.bits)
    nonce = 0
    while True:
        candidate = header.with_nonce(nonce)
        if not hash_meets_target(candidate.hash, target):
            return candidate
        nonce += 1


def coinbase_outpoint(block: Block, n: int = 0) -> OutPoint:
    return OutPoint(block.txs[0].txid, n)


def outpoint(tx: Transaction, n: int = 0) -> OutPoint:
    return OutPoint(tx.txid, n)


@dataclass(frozen=True)
class HeaderInfo:
    """What the builder remembers of each header it built (independently of the chain)."""

    hash: bytes
    prev: bytes | None
    height: int
    timestamp: int
    bits: int
    chainwork: int


ParentRef = bytes | Block | BlockIndex | HeaderInfo | None


class ChainBuilder:
    """Builds blocks on any parent and feeds them to a `ChainState` backed by a `MemoryStore`.

    ``builder.chain`` is the chain state under test, ``builder.store`` its store (kept in sync by
    `accept` and `sync`). ``builder.now`` is the clock passed to `accept_block` by default.
    Every block built gets a unique coinbase (a counter in the coinbase data), so two blocks on
    the same parent never collide unless a test asks for it.
    """

    def __init__(
        self,
        params: ChainParams | None = None,
        *,
        store: Any = None,
        now: int | None = None,
        **chain_kwargs: Any,
    ) -> None:
        self.params = params or regtest()
        self.store = store if store is not None else MemoryStore()
        self.chain = ChainState(self.params, self.store, **chain_kwargs)
        self.sync()
        self.now = now if now is not None else self.params.genesis_timestamp + CLOCK_OFFSET
        genesis = self.params.genesis_block
        self.genesis = genesis
        self.headers: dict[bytes, HeaderInfo] = {
            genesis.hash: HeaderInfo(
                genesis.hash, None, 0, genesis.header.timestamp, genesis.header.bits,
                work_from_target(bits_to_target(genesis.header.bits)),
            )
        }
        self.blocks: dict[bytes, Block] = {genesis.hash: genesis}
        self.outputs: dict[OutPoint, TxOut] = {}
        self._counter = 0

    # ---------------------------------------------------------------- header bookkeeping

    def info(self, ref: ParentRef = None) -> HeaderInfo:
        """The builder's record of `ref` (a hash, block, index entry; None = the chain's tip)."""
        if ref is None:
            return self.headers[self.chain.tip.hash]
        if isinstance(ref, HeaderInfo):
            return ref
        if isinstance(ref, Block | BlockIndex):
            return self.headers[ref.hash]
        return self.headers[ref]

    def ancestors(self, ref: ParentRef = None) -> list[HeaderInfo]:
        """`ref` and its ancestors, newest first, down to genesis."""
        found, cursor = [], self.info(ref)
        while True:
            found.append(cursor)
            if cursor.prev is None:
                return found
            cursor = self.headers[cursor.prev]

    def median_time_past(self, ref: ParentRef = None) -> int:
        times = sorted(h.timestamp for h in self.ancestors(ref)[: self.params.median_time_span])
        return times[len(times) // 2]

    def next_bits(self, ref: ParentRef = None) -> int:
        """The bits a child of `ref` must carry (Bitcoin's rule, without the off-by-one)."""
        params, prev = self.params, self.info(ref)
        height = prev.height + 1
        if params.no_retarget or height % params.retarget_window:
            return prev.bits
        first = self.ancestors(prev)[params.retarget_window - 1]
        assert first.height == height - params.retarget_window
        new_target = retarget(
            bits_to_target(prev.bits),
            prev.timestamp - first.timestamp,
            params.target_spacing * params.retarget_window,
            params.retarget_clamp,
            params.pow_limit,
        )
        return target_to_bits(new_target)

    # ---------------------------------------------------------------- building

    def block(
        self,
        parent: ParentRef = None,
        txs: Sequence[Transaction] = (),
        *,
        timestamp: int | None = None,
        gap: int | None = None,
        bits: int | None = None,
        fees: int | None = None,
        reward_delta: int = 0,
        payout: bytes | None = None,
        coinbase: Transaction | None = None,
        all_txs: Sequence[Transaction] | None = None,
        merkle: bytes | None = None,
        solved: bool = True,
    ) -> Block:
        """A block on `parent` (default: the chain's tip), mined unless ``solved=False``.

        By default the coinbase pays the reward plus the fees of `txs` (inputs the builder knows
        of) plus `reward_delta` to `payout` (default ``pkh(0)``), the timestamp is the parent's
        plus `gap` (default: the target spacing), and bits are what the rules expect. Override
        `coinbase`, `all_txs` (the whole list, coinbase included), `merkle`, `timestamp` or
        `bits` to build an invalid block. The block is recorded so children can be built on it.
        """
        prev = self.info(parent)
        height = prev.height + 1
        if all_txs is None:
            if coinbase is None:
                if fees is None:
                    fees = sum(self.fee(tx) for tx in txs)
                self._counter += 1
                coinbase = make_coinbase(
                    height,
                    [
                        TxOut(
                            self.params.block_reward(height) + fees + reward_delta,
                            payout if payout is not None else pkh(0),
                        )
                    ],
                    self._counter.to_bytes(8, "big"),
                )
            all_txs = [coinbase, *txs]
        if timestamp is None:
            timestamp = prev.timestamp + (gap if gap is not None else self.params.target_spacing)
        header = BlockHeader(
            version=BLOCK_VERSION,
            prev_hash=prev.hash,
            merkle_root=merkle if merkle is not None else merkle_root([t.txid for t in all_txs]),
            timestamp=timestamp,
            bits=bits if bits is not None else self.next_bits(prev),
            nonce=0,
        )
        if solved:
            header = solve(header)
        block = Block(header, all_txs)
        self.record(block)
        return block

    def record(self, block: Block) -> None:
        """Remember `block`'s header and outputs (done by `block` and `accept`).

        The first block recorded under a hash is kept: a mangled copy of an honest block (same
        header, other transactions) never replaces it in ``self.blocks``.
        """
        prev = self.headers.get(block.header.prev_hash)
        if prev is not None and block.hash not in self.headers:
            try:
                work = work_from_target(bits_to_target(block.header.bits))
            except ConsensusError:  # negative or overflowing bits: never valid anyway
                work = 0
            self.headers[block.hash] = HeaderInfo(
                block.hash, prev.hash, prev.height + 1, block.header.timestamp,
                block.header.bits, prev.chainwork + work,
            )
        self.blocks.setdefault(block.hash, block)
        for tx in block.txs:
            for n, out in enumerate(tx.outputs):
                self.outputs[OutPoint(tx.txid, n)] = out

    def branch(self, n: int, parent: ParentRef = None, **kwargs: Any) -> list[Block]:
        """`n` blocks, each on the previous, starting on `parent`: built, not delivered."""
        blocks: list[Block] = []
        prev: ParentRef = parent if parent is not None else self.chain.tip.hash
        for _ in range(n):
            blocks.append(self.block(prev, **kwargs))
            prev = blocks[-1].hash
        return blocks

    def mine(self, n: int = 1, parent: ParentRef = None, **kwargs: Any) -> list[Block]:
        """Build `n` blocks on `parent` (default tip) and deliver each; all must be accepted."""
        blocks = self.branch(n, parent, **kwargs)
        for blk in blocks:
            result = self.accept(blk)
            assert result.status in ("connected", "side-branch"), (result.status, result.reason)
        return blocks

    # ---------------------------------------------------------------- transactions

    def fee(self, tx: Transaction) -> int:
        """What `tx` leaves for the miner, counting only inputs the builder knows (never < 0)."""
        if tx.is_coinbase:
            return 0
        known = [self.outputs.get(i.outpoint) for i in tx.inputs]
        if any(o is None for o in known):
            return 0
        return max(0, sum(o.amount for o in known if o is not None) - tx.total_out())

    def spend(
        self,
        inputs: Iterable[OutPoint],
        amounts: Sequence[int] | None = None,
        *,
        fee: int = 0,
        to: bytes | None = None,
        keys: Sequence[PrivateKey] | None = None,
        genesis_hash: bytes | None = None,
        outputs: Sequence[TxOut] | None = None,
    ) -> Transaction:
        """A signed transaction spending `inputs` (outputs the builder created).

        Default: one output to `to` (default ``pkh(1)``) of everything minus `fee`; or give
        `amounts` (all to `to`) or full `outputs`. Keys default to each coin's owner; pass
        `keys` or another network's `genesis_hash` to sign wrongly.
        """
        inputs = list(inputs)
        dest = to if to is not None else pkh(1)
        if outputs is None:
            if amounts is None:
                total = sum(self.outputs[op].amount for op in inputs)
                amounts = [total - fee]
            outputs = [TxOut(a, dest) for a in amounts]
        if keys is None:
            keys = [owner(self.outputs[op].pkh) for op in inputs]
        unsigned = Transaction([TxIn(op.txid, op.index, b"", b"") for op in inputs], outputs)
        signed = sign_transaction(unsigned, keys, genesis_hash or self.params.genesis_hash)
        for n, out in enumerate(signed.outputs):
            self.outputs[OutPoint(signed.txid, n)] = out
        return signed

    # ---------------------------------------------------------------- delivery

    def accept(self, block: Block, now: int | None = None) -> AcceptResult:
        """`chain.accept_block(block, now)`, then commit the chain's update to the store."""
        self.record(block)
        result = self.chain.accept_block(block, self.now if now is None else now)
        self.sync()
        return result

    def sync(self) -> None:
        """Hand the chain state's pending update to the store (what the node does)."""
        self.store.apply(self.chain.take_update())

    def entry(self, block: Block | bytes) -> BlockIndex:
        """The chain's index entry for `block` (which must be indexed)."""
        found = self.chain.get(block if isinstance(block, bytes) else block.hash)
        assert found is not None, "block not in the chain's index"
        return found

    def block_at(self, height: int) -> Block:
        """The active chain's block at `height`."""
        entry = self.chain.at_height(height)
        assert entry is not None, f"no active block at height {height}"
        return self.blocks[entry.hash]

    def active_hashes(self) -> list[bytes]:
        return [e.hash for e in self.chain.active]


def replay(params: ChainParams, blocks: Sequence[Block], now: int) -> ChainState:
    """A fresh chain state fed `blocks` in order (each must connect): the reference UTXO set."""
    store = MemoryStore()
    chain = ChainState(params, store)
    for blk in blocks:
        result = chain.accept_block(blk, now)
        assert result.status == "connected", (result.status, result.reason)
        store.apply(chain.take_update())
    return chain


ChainView = tuple[dict[OutPoint, Coin], dict[bytes, bytes], dict[OutPoint, bytes]]


def chain_view(chain: ChainState) -> ChainView:
    """Copies of the UTXO set, the tx index and the spends index, for comparisons."""
    return dict(chain.utxo), dict(chain.tx_index), dict(chain.spends)
