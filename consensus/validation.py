"""Transaction and block rules. Each failure raises `ConsensusError` with a distinct reason code.

Split as in Bitcoin Core: context-free checks (`check_transaction`, `check_block`), checks against
the parent block (`check_header_context`), and checks against the UTXO set (`check_tx_inputs`,
`check_tx_signatures`), so the mempool and the chain state share exactly the same rules.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from consensus.block import Block, BlockHeader
from consensus.coins import Coin
from consensus.errors import ConsensusError
from consensus.hashing import ZERO_HASH
from consensus.keys import PUBKEY_SIZE, SIGNATURE_SIZE, pubkey_hash, verify_signature
from consensus.params import COIN, ChainParams
from consensus.pow import bits_to_target, hash_meets_target
from consensus.tx import (
    COINBASE_HEIGHT_SIZE,
    LOCKTIME_THRESHOLD,
    MAX_COINBASE_DATA,
    SEQUENCE_FINAL,
    OutPoint,
    Transaction,
    TxIn,
    coinbase_height,
)

MAX_MONEY = 21_000_000 * COIN

CoinLookup = Callable[[OutPoint], Coin | None]


def money_range(amount: int) -> bool:
    return 0 <= amount <= MAX_MONEY


def check_transaction(tx: Transaction, params: ChainParams) -> None:
    """Rules that need nothing but the transaction itself."""
    if tx.checked_with is params:
        return
    _check_transaction(tx, params)
    tx.checked_with = params


def _check_transaction(tx: Transaction, params: ChainParams) -> None:
    if not tx.inputs:
        raise ConsensusError("bad-txns-vin-empty")
    if not tx.outputs:
        raise ConsensusError("bad-txns-vout-empty")
    if tx.size > params.max_block_size:
        raise ConsensusError("bad-txns-oversize", f"{tx.size} bytes")
    total = 0
    for out in tx.outputs:
        if out.amount < 0:
            raise ConsensusError("bad-txns-vout-negative")
        if out.amount > MAX_MONEY:
            raise ConsensusError("bad-txns-vout-toolarge", str(out.amount))
        total += out.amount
        if total > MAX_MONEY:
            raise ConsensusError("bad-txns-txouttotal-toolarge")
    if len(set(tx.outpoints)) != len(tx.inputs):
        raise ConsensusError("bad-txns-inputs-duplicate")
    if tx.is_coinbase:
        # The same bounds decoding enforces: a block held as objects (a local miner's) must not
        # pass with a coinbase that no peer, and no restart, could ever decode.
        if not COINBASE_HEIGHT_SIZE <= len(tx.inputs[0].signature) <= MAX_COINBASE_DATA:
            raise ConsensusError(
                "bad-cb-length",
                f"coinbase data must start with the height and be at most {MAX_COINBASE_DATA}"
                " bytes",
            )
        return
    for txin in tx.inputs:
        if txin.prev_txid == ZERO_HASH:
            raise ConsensusError("bad-txns-prevout-null")
        if txin.multisig is not None:
            _check_multisig_input(txin)
        elif len(txin.pubkey) != PUBKEY_SIZE or len(txin.signature) != SIGNATURE_SIZE:
            raise ConsensusError("bad-txns-unsigned", f"input {txin.outpoint} carries no signature")


def _check_multisig_input(txin: TxIn) -> None:
    """Exactly m signatures, one slot per key: the same bounds decoding enforces, for inputs
    built as objects (a local wallet's) rather than decoded."""
    script = txin.multisig
    assert script is not None
    try:
        script.check()
    except ValueError as exc:
        raise ConsensusError("bad-multisig-script", f"input {txin.outpoint}: {exc}") from None
    if txin.pubkey or txin.signature or len(txin.signature_slots) != script.size:
        raise ConsensusError(
            "bad-multisig-slots", f"input {txin.outpoint}: one signature slot per key is needed"
        )
    signed = 0
    for slot in txin.signature_slots:
        if len(slot) not in (0, SIGNATURE_SIZE):
            raise ConsensusError("bad-multisig-slots", f"input {txin.outpoint}: bad signature size")
        signed += bool(slot)
    if signed < script.required:
        raise ConsensusError(
            "bad-multisig-too-few-signatures",
            f"input {txin.outpoint} has {signed} of the {script.required} signatures required",
        )
    if signed > script.required:
        raise ConsensusError(
            "bad-multisig-too-many-signatures",
            f"input {txin.outpoint} has {signed} signatures, exactly {script.required} required",
        )


def is_final_tx(tx: Transaction, height: int, block_time: int) -> bool:
    """Bitcoin's IsFinalTx: may `tx` be in a block at `height` whose lock-time clock reads
    `block_time` (the median time past of its parent, BIP113)? A lock time names the first
    height or time at which the transaction may be mined; inputs all at `SEQUENCE_FINAL`
    disable it."""
    if tx.locktime == 0:
        return True
    clock = height if tx.locktime < LOCKTIME_THRESHOLD else block_time
    if tx.locktime < clock:
        return True
    return all(txin.sequence == SEQUENCE_FINAL for txin in tx.inputs)


def nonfinal_detail(
    tx: Transaction, height: int, block_time: int, block: str = "this block"
) -> str:
    """Why `tx` may not be in `block` (at `height`, lock-time clock `block_time`), and from
    when it may: a lock time is the last height (or time) at which it is still locked."""
    if tx.locktime < LOCKTIME_THRESHOLD:
        return (
            f"locktime {tx.locktime} is a block height: mined from height {tx.locktime + 1} "
            f"on; {block} is at height {height}"
        )
    return (
        f"locktime {tx.locktime} is a time: mined once the median time past of the block's "
        f"parent is above it; for {block} it is {block_time}"
    )


def check_final(tx: Transaction, height: int, block_time: int) -> None:
    if not is_final_tx(tx, height, block_time):
        raise ConsensusError(
            "bad-txns-nonfinal", f"non-final: {nonfinal_detail(tx, height, block_time)}"
        )


def check_block_final(block: Block, height: int, median_time_past: Callable[[], int]) -> None:
    """Every transaction of a block at `height`, coinbase included, must be final with the
    median time past of its parent as the clock (BIP113). `median_time_past` is only asked
    for when some transaction has a lock time at all."""
    if all(tx.locktime == 0 for tx in block.txs):
        return
    clock = median_time_past()
    for tx in block.txs:
        if not is_final_tx(tx, height, clock):
            raise ConsensusError(
                "bad-txns-nonfinal",
                f"non-final: tx {tx.txid.hex()}: {nonfinal_detail(tx, height, clock)}",
            )


def check_tx_inputs(
    tx: Transaction, lookup: CoinLookup, spend_height: int, params: ChainParams
) -> tuple[int, list[Coin]]:
    """Check a non-coinbase transaction's inputs against a UTXO view.

    Returns (fee, spent coins in input order). `spend_height` is the height of the block that
    would include the transaction (tip height + 1 for the mempool).
    """
    coins = []
    value_in = 0
    for outpoint in tx.outpoints:
        coin = lookup(outpoint)
        if coin is None:
            raise ConsensusError("bad-txns-inputs-missingorspent", f"input {outpoint}")
        if coin.is_coinbase and spend_height - coin.height < params.coinbase_maturity:
            raise ConsensusError(
                "bad-txns-premature-spend-of-coinbase",
                f"tried to spend coinbase at depth {spend_height - coin.height}",
            )
        value_in += coin.amount
        if not money_range(coin.amount) or not money_range(value_in):
            raise ConsensusError("bad-txns-inputvalues-outofrange")
        coins.append(coin)
    value_out = tx.total_out()
    if value_in < value_out:
        raise ConsensusError(
            "bad-txns-in-belowout", f"value in ({value_in}) < value out ({value_out})"
        )
    return value_in - value_out, coins


class SignatureCache:
    """Txids whose signatures were already verified (bounded, least recently used out first).

    Keying by txid is sound because the txid commits to every byte of the transaction, including
    the public keys and signatures, and the sighash commits to the network; whether each key
    matches the coin it spends is fixed by the outpoint, which the txid commits to as well.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, txid: bytes) -> bool:
        return txid in self._entries

    def add(self, txid: bytes) -> None:
        self._entries[txid] = None
        self._entries.move_to_end(txid)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


SignatureJob = tuple[bytes, bytes, bytes]  # (public key, signature, signed digest)
BatchVerifier = Callable[[Sequence[SignatureJob]], list[bool]]


def verify_sequentially(jobs: Sequence[SignatureJob]) -> list[bool]:
    """The default batch verifier; the node may inject a parallel one (same answers)."""
    return [verify_signature(pubkey, sig, digest) for pubkey, sig, digest in jobs]


def signature_jobs(
    tx: Transaction, coins: Sequence[Coin], genesis_hash: bytes
) -> list[SignatureJob]:
    """Check each input's key owns the spent coin; return the signatures left to verify."""
    digest = tx.sighash(genesis_hash)
    jobs = []
    for n, (txin, coin) in enumerate(zip(tx.inputs, coins, strict=True)):
        script = txin.multisig
        if script is None:
            if pubkey_hash(txin.pubkey) != coin.pkh:
                raise ConsensusError(
                    "bad-txns-pubkey-mismatch", f"input {n} key does not own the coin"
                )
            jobs.append((txin.pubkey, txin.signature, digest))
            continue
        if script.script_hash != coin.pkh:
            raise ConsensusError(
                "bad-txns-pubkey-mismatch", f"input {n} multisig script does not own the coin"
            )
        jobs.extend(
            (key, slot, digest)
            for key, slot in zip(script.pubkeys, txin.signature_slots, strict=True)
            if slot
        )
    return jobs


def check_tx_signatures(
    tx: Transaction,
    coins: Sequence[Coin],
    genesis_hash: bytes,
    cache: SignatureCache | None = None,
) -> None:
    """Each input's key must hash to the spent coin's address and sign the sighash."""
    if cache is not None and tx.txid in cache:
        return
    for n, (pubkey, signature, digest) in enumerate(signature_jobs(tx, coins, genesis_hash)):
        if not verify_signature(pubkey, signature, digest):
            raise ConsensusError("bad-txns-bad-signature", f"signature {n}")
    if cache is not None:
        cache.add(tx.txid)


def check_header_pow(header: BlockHeader, params: ChainParams) -> None:
    target = bits_to_target(header.bits)
    if target <= 0 or target > params.pow_limit:
        raise ConsensusError("bad-diffbits", "target outside the allowed range")
    if not hash_meets_target(header.hash, target):
        raise ConsensusError("high-hash", "proof of work failed")


def check_header_context(
    header: BlockHeader,
    expected_bits: int,
    median_time_past: int,
    now: int,
    params: ChainParams,
) -> None:
    """Rules that need the parent: difficulty, and the timestamp window."""
    if header.bits != expected_bits:
        raise ConsensusError(
            "bad-diffbits", f"bits {header.bits:08x}, expected {expected_bits:08x}"
        )
    if header.timestamp <= median_time_past:
        raise ConsensusError(
            "time-too-old", f"{header.timestamp} <= median time past {median_time_past}"
        )
    if header.timestamp > now + params.max_future_drift:
        raise ConsensusError(
            "time-too-new", f"{header.timestamp} is more than {params.max_future_drift}s ahead"
        )


def is_window_start(height: int, params: ChainParams) -> bool:
    """Whether the block at `height` is the first of a retarget window (its bits may change)."""
    return not params.no_retarget and height > 0 and height % params.retarget_window == 0


def timewarp_floor(height: int, prev_timestamp: int, params: ChainParams) -> int | None:
    """The earliest timestamp the timewarp fix allows at `height` (None: no such limit).

    The retarget measures each window from its own first block to its own last one, so the step
    from a window's last block to the next window's first is in no window: without this rule
    a window could end in the future and the next begin back in the past, and the time never
    be paid back (Bitcoin's timewarp). BIP54's fix: a window's first block may be at most
    `timewarp_grace` seconds earlier than its parent.
    """
    if not is_window_start(height, params):
        return None
    return prev_timestamp - params.timewarp_grace


def check_timewarp(
    header: BlockHeader, height: int, prev_timestamp: int, params: ChainParams
) -> None:
    floor = timewarp_floor(height, prev_timestamp, params)
    if floor is not None and header.timestamp < floor:
        raise ConsensusError(
            "time-timewarp-attack",
            f"{header.timestamp} is more than {params.timewarp_grace}s before its parent "
            f"({prev_timestamp}) at the start of a retarget window",
        )


def check_block_merkle(block: Block) -> None:
    """A merkle mismatch means these are not the transactions the header commits to: the
    block may have been mangled in transit, so this failure must not mark the header invalid."""
    if block.header.merkle_root != block.computed_merkle_root():
        raise ConsensusError("bad-merkle-root", "merkle root mismatch")
    if len({tx.txid for tx in block.txs}) != len(block.txs):
        raise ConsensusError("bad-txns-duplicate", "duplicate transaction")


def check_block(block: Block, params: ChainParams) -> None:
    """Context-free block rules (the header's proof of work is checked separately)."""
    if block.checked_with is params:
        return
    if block.size > params.max_block_size:
        raise ConsensusError("bad-blk-length", f"{block.size} > {params.max_block_size} bytes")
    if not block.txs or not block.txs[0].is_coinbase:
        raise ConsensusError("bad-cb-missing", "first transaction is not a coinbase")
    if any(tx.is_coinbase for tx in block.txs[1:]):
        raise ConsensusError("bad-cb-multiple", "more than one coinbase")
    for tx in block.txs:
        try:
            check_transaction(tx, params)
        except ConsensusError as exc:
            raise ConsensusError(exc.reason, f"tx {tx.txid.hex()}: {exc.detail}") from None
    block.checked_with = params


def check_coinbase_height(block: Block, height: int) -> None:
    if coinbase_height(block.txs[0]) != height:
        raise ConsensusError("bad-cb-height", f"coinbase does not start with height {height}")
