"""Mining: block templates from the mempool, hashed by the worker-process pool.

Continuous mining (`--mine`, RPC `setmining`) keeps one job in the pool and replaces it whenever
the tip changes, the mempool has changed for a while, or the template's timestamp grows old.
`generate` (RPC `generatetoaddress`/`generateblock`) mines at once in a thread, whatever the
continuous miner is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import structlog

from consensus.block import NONCE_OFFSET, Block
from consensus.blockbuild import assemble_block
from consensus.errors import ConsensusError
from consensus.pow import bits_to_target
from consensus.tx import OutPoint, Transaction
from consensus.validation import check_final
from node.interface import MiningHost
from node.miner.hashing import NONCE_SPACE, make_scanner
from node.miner.pool import Exhausted, Found, MinerPool, fork_is_safe

log = structlog.get_logger("powlab.miner")

COINBASE_RESERVE = 1_000  # bytes of the block size limit kept for the coinbase
MEMPOOL_REFRESH_DELAY = 1.0  # seconds: batch mempool changes into one new template
TEMPLATE_MAX_AGE = 30.0  # seconds before the timestamp is refreshed
MAX_GENERATE_TRIES = 16  # extra-nonce rounds before generate gives up


class MinerError(Exception):
    pass


class GenerateFailed(MinerError):
    """`generate` stopped partway: `committed` holds the hashes of the blocks it had already
    submitted (they stay in the chain)."""

    def __init__(self, message: str, committed: list[bytes]) -> None:
        super().__init__(message)
        self.committed = committed


def solve_fast(template: Block) -> Block | None:
    """The template with the lowest winning nonce, searched with the pool's midstate scanner
    (about 20x `consensus.blockbuild.solve_block`, so `generate` copes with testnet
    difficulty); None when no nonce wins."""
    header = template.header
    scan = make_scanner(header.encode()[:NONCE_OFFSET], bits_to_target(header.bits))
    nonce, _ = scan(0, NONCE_SPACE)
    return None if nonce is None else Block(header.with_nonce(nonce), template.txs)


class Miner:
    def __init__(self, node: MiningHost, payout_pkh: bytes, processes: int | None) -> None:
        self.node = node
        self.payout_pkh = payout_pkh
        self.processes = processes
        self.hashrate: float | None = None
        self.enabled = False
        self.pool: MinerPool | None = None
        self.blocks_found = 0
        self._task: asyncio.Task[None] | None = None
        self._refresh = asyncio.Event()
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._job_id = 0
        self._extra_nonce = 0

    # ----------------------------------------------------------------- control

    def prestart(self, hashrate: float | None = None) -> bool:
        """Start the worker pool now, by fork, if this process is still single-threaded (the
        daemon calls this before it opens any socket or thread): the workers then share the
        daemon's pages instead of each loading an interpreter. Returns whether it did; if
        not, `set_mining` later spawns the workers as before."""
        if self.pool is not None:
            return False
        if not fork_is_safe():
            log.info("miner_prefork_skipped", reason="threads",
                     threads=[t.name for t in threading.enumerate()])
            return False
        if hashrate is not None and hashrate > 0:
            self.hashrate = hashrate
        pool = MinerPool(self.processes, self.hashrate, start_method="fork")
        pool.start()
        self.pool = pool
        return True

    async def set_mining(self, enabled: bool, hashrate: float | None = None) -> None:
        if hashrate is not None:
            if hashrate == 0:
                raise MinerError("hashrate must be positive (or -1 to lift the cap)")
            # -1 lifts the cap, as genproclimit -1 meant "no limit" in bitcoind's setgenerate.
            self.hashrate = hashrate if hashrate > 0 else None
            if self.pool is not None:
                self.pool.set_hashrate(self.hashrate)
        if enabled and not self.enabled:
            if self.pool is None:
                pool = MinerPool(self.processes, self.hashrate)
                await asyncio.to_thread(pool.start)
                self.pool = pool
            self.enabled = True
            self._task = asyncio.create_task(self._run())
            log.info("mining_started", processes=self.pool.processes, hashrate=self.hashrate)
        elif not enabled and self.enabled:
            # First, so that a result arriving while the task is cancelled is discarded.
            self.enabled = False
            self._job_id += 1  # every job handed out so far is stale
            await self._cancel_task()
            if self.pool is not None:
                self.pool.clear_job()
            log.info("mining_stopped")

    async def close(self) -> None:
        self.enabled = False
        await self._cancel_task()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
            self.pool = None

    async def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def hashrate_measured(self) -> float:
        return self.pool.hashrate_measured() if self.pool is not None and self.enabled else 0.0

    def on_new_tip(self) -> None:
        self._refresh.set()

    def on_mempool_changed(self) -> None:
        if self.enabled and self._refresh_handle is None:
            loop = asyncio.get_running_loop()
            self._refresh_handle = loop.call_later(MEMPOOL_REFRESH_DELAY, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh_handle = None
        self._refresh.set()

    # ----------------------------------------------------------------- templates

    def template(self, payout_pkh: bytes | None = None, extra_nonce: int = 0) -> Block:
        node = self.node
        txs, fees = node.mempool.select_for_block(
            node.params.max_block_size - COINBASE_RESERVE, node.chain.lock_time_clock()
        )
        return assemble_block(
            node.chain, txs, fees, payout_pkh or self.payout_pkh, node.now(), extra_nonce
        )

    async def _run(self) -> None:
        assert self.pool is not None
        pool = self.pool
        result_task: asyncio.Future[Any] | None = None
        try:
            while self.enabled:
                self._refresh.clear()
                template = self.template(extra_nonce=self._extra_nonce)
                self._job_id += 1
                job_id = self._job_id
                header76 = template.header.encode()[:NONCE_OFFSET]
                pool.submit_job(job_id, header76, bits_to_target(template.header.bits))
                refresh_task = asyncio.ensure_future(self._refresh.wait())
                if result_task is None:
                    result_task = asyncio.ensure_future(pool.next_result())
                done, _ = await asyncio.wait(
                    {refresh_task, result_task},
                    timeout=TEMPLATE_MAX_AGE,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                refresh_task.cancel()
                if result_task not in done:
                    continue
                result = result_task.result()
                result_task = None
                if isinstance(result, Exhausted) and result.job_id == job_id:
                    self._extra_nonce += 1
                elif isinstance(result, Found) and result.job_id == job_id:
                    self._extra_nonce = 0
                    self._submit_found(template, result.nonce, job_id)
        finally:
            if result_task is not None:
                result_task.cancel()

    def _submit_found(self, template: Block, nonce: int, job_id: int) -> bool:
        """Connect a found block, unless its job is stale: mining was switched off since
        (no block may appear after `setmining false` returned), a newer job replaced it, or
        the tip moved (the block would only be a stale side branch)."""
        stale = (not self.enabled or job_id != self._job_id
                 or template.header.prev_hash != self.node.chain.tip.hash)
        if stale:
            log.info("miner_stale_result_discarded", job_id=job_id, enabled=self.enabled)
            return False
        block = Block(template.header.with_nonce(nonce), template.txs)
        result = self.node.submit_block(block)
        if result.status == "connected":
            self.blocks_found += 1
            log.info("block_mined", hash=block.hash.hex(), height=self.node.chain.height)
        else:
            log.warning("mined_block_not_connected", status=result.status, reason=result.reason)
        return result.status == "connected"

    # ----------------------------------------------------------------- generate now

    async def generate(
        self, count: int, payout_pkh: bytes, txs: Sequence[Transaction] | None = None
    ) -> list[bytes]:
        """Mine `count` blocks now; with `txs`, one block of exactly those transactions."""
        hashes: list[bytes] = []
        for _ in range(count):
            try:
                block = await self._solve(payout_pkh, txs)
                result = self.node.submit_block(block)
                # Commits are written off the loop: wait for this one, so that on a failure
                # `hashes` names exactly the blocks on disk.
                await self.node.committed()
            except Exception as exc:
                # A store write that fails (a full disk) stops the node; the caller must
                # still learn which blocks made it before.
                raise GenerateFailed(f"{type(exc).__name__}: {exc}", hashes) from exc
            # A peer's block may win the race while we solve: ours is then a valid stale block,
            # still returned (as bitcoind does); only a rejected block is an error.
            if result.status not in ("connected", "side-branch"):
                raise GenerateFailed(
                    f"generated block rejected: {result.reason or result.status}", hashes
                )
            hashes.append(block.hash)
        return hashes

    async def solve(self, payout_pkh: bytes, txs: Sequence[Transaction] | None) -> Block:
        """A solved block on the current tip, not submitted (the caller may withhold it)."""
        return await self._solve(payout_pkh, txs)

    async def _solve(self, payout_pkh: bytes, txs: Sequence[Transaction] | None) -> Block:
        node = self.node
        if txs is not None:
            # Refused before any hashing, with the reason: the block would be invalid.
            lock_height, lock_clock = node.chain.lock_time_clock()
            for tx in txs:
                check_final(tx, lock_height, lock_clock)
        for extra_nonce in range(MAX_GENERATE_TRIES):
            if txs is None:
                template = self.template(payout_pkh, extra_nonce)
            else:
                template = assemble_block(
                    node.chain, txs, self.fees_of(txs), payout_pkh, node.now(), extra_nonce
                )
            block = await asyncio.to_thread(solve_fast, template)
            if block is not None:
                return block
        raise MinerError("no nonce found: the difficulty is too high to generate on demand")

    def fees_of(self, txs: Sequence[Transaction]) -> int:
        """Fees of transactions mined as given (they need not be in the mempool)."""
        created: dict[OutPoint, int] = {}
        fees = 0
        for tx in txs:
            value_in = 0
            for txin in tx.inputs:
                amount = created.pop(txin.outpoint, None)
                if amount is None:
                    coin = self.node.chain.coin(txin.outpoint)
                    if coin is None:
                        raise ConsensusError(
                            "bad-txns-inputs-missingorspent", f"input {txin.outpoint}"
                        )
                    amount = coin.amount
                value_in += amount
            fees += value_in - tx.total_out()
            for n, out in enumerate(tx.outputs):
                created[OutPoint(tx.txid, n)] = out.amount
        return fees
