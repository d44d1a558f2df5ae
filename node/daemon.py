"""The node: composes chain state, store, mempool, wallet, miner and RPC, and owns the clock.

`Node` implements `node.interface.NodeAPI`, through which the RPC methods and the miner see it.

Every change to the chain goes through `Node.submit_block` (or invalidate/reconsider), which
asks the pure `ChainState` what to do, relays new blocks to peers, logs and publishes the
chain change, commits its update to the store as one transaction, then tells the mempool, the
wallet watchers and the miner.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import structlog

from consensus.block import Block
from consensus.chainstate import AcceptResult, ChainState
from consensus.coins import Coin
from consensus.errors import ConsensusError
from consensus.keys import PrivateKey
from consensus.mempool import Mempool, MempoolConflict, ReplacementRecord
from consensus.params import DEFAULT_SIGNATURE_CACHE_SIZE, ChainParams
from consensus.replacement import REFUSED_REPLACEMENT_REASONS
from consensus.tx import OutPoint, Transaction, decode_transaction
from consensus.txstatus import TxStatus, transaction_status
from consensus.update import AddressIndexReader
from consensus.validation import (
    SignatureCache,
    check_transaction,
    check_tx_signatures,
)
from node.addressindex import sync_address_index
from node.config import NodeConfig, parse_host_port, parse_peer
from node.datadir import DataDirLock
from node.events import EventHub
from node.gcpolicy import freeze_loaded_state
from node.loadblock import load_block_files
from node.metrics import NodeMetrics
from node.miner.miner import Miner
from node.replacements import ReplacementLog
from node.rpc.cookie import delete_cookie, write_cookie
from node.rpc.methods import build_registry
from node.rpc.server import RPCServer
from node.storewriter import StoreWriter, WrittenAddressIndex
from node.verify import ParallelVerifier
from node.wallet import Wallet, WalletWriteError
from node.wallet_sync import note_block, rescan, resubmit
from p2p.compact import CATCHING_UP_BLOCKS
from p2p.config import P2PConfig
from p2p.protocol import DoubleSpendSeen, Event, P2PProtocol, PeerConnected, PeerDisconnected
from p2p.transport import P2PService
from storage import StorageError, open_store
from storage.files import write_atomic

log = structlog.get_logger("powlab.node")

MEMPOOL_FILE = "mempool.dat"
MEMPOOL_FILE_VERSION = 1
# The address book (Bitcoin Core's peers.dat): kept across restarts, so a restarted node dials
# the addresses it had learnt; which also means addresses an attacker got into it survive.
PEERS_FILE = "peers.json"
PEERS_FILE_VERSION = 1
PEER_NAME_RETRY = 2.0  # seconds between attempts to resolve a peer's host name
PEER_NAME_RECHECK = 15.0  # seconds between re-resolving names that did resolve
MAX_WATCHED_TXS = 10_000
MAX_RECENT_TXS = 10_000
MEMPOOL_SAVE_INTERVAL = 60.0  # seconds: bounds what a SIGKILL can lose
# While catching up, the chain's changes are handed to the store writer once per received batch
# (one stream read) or once this many blocks have piled up, whichever comes first: fewer, larger
# transactions, and a kill -9 loses at most that many blocks more (docs/storage.md).
MAX_BLOCKS_PER_COMMIT = 64


class NodeError(Exception):
    pass


class Node:
    def __init__(
        self,
        config: NodeConfig,
        params: ChainParams,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.params = params
        self.clock = clock
        self.datadir = Path(config.datadir)
        self.started_at = clock()
        self.mock_time: int | None = None  # setmocktime: `now()` fixed here (None: the clock)
        self.events = EventHub()
        self.metrics = NodeMetrics()
        self.p2p: P2PService | None = None
        self.p2p_addr = ""
        self.rng = random.Random()
        self.verifier = ParallelVerifier()
        self.finality_depth = config.finality_depth or params.finality_depth
        self._lock = DataDirLock(self.datadir)
        self._stop_event = asyncio.Event()
        self._watched: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        # txid -> txids proven to double-spend it (from our own mempool or peers' alerts).
        self._double_spends: OrderedDict[bytes, set[bytes]] = OrderedDict()
        self._alerted: OrderedDict[OutPoint, None] = OrderedDict()
        self._double_spend_seen_at: dict[bytes, float] = {}  # txid -> first proof, clock time
        self._recent: OrderedDict[bytes, Transaction] = OrderedDict()
        self.replacements = ReplacementLog(MAX_WATCHED_TXS)
        self._tasks: list[asyncio.Task[Any]] = []
        self.store: Any = None
        # Applies the chain's updates to `store` in its own thread (node/storewriter.py).
        self.writer: StoreWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._commit_scheduled = False  # a deferred commit (catching up) waits in the loop
        self._handed_height = 0  # the chain's height at the last hand-over to the writer
        # The store, when --addressindex keeps the address index current (else None).
        self.address_index: AddressIndexReader | None = None
        self.chain: ChainState
        self.mempool: Mempool
        self.wallet: Wallet
        self.miner: Miner
        self.rpc: RPCServer | None = None
        self.rpc_url = ""
        # What the node could not save, by name (wallet, mempool, ...): shown in
        # getblockchaininfo.warnings until a later save succeeds.
        self._save_failures: dict[str, str] = {}
        # Why the node stopped itself (a store write failed), for the exit message.
        self.failure: str | None = None
        self.unsaved: list[str] = []  # what the last stop could not save

    # ----------------------------------------------------------------- lifecycle

    def now(self) -> int:
        """The consensus clock: block templates' time and the future limit of validation (and
        the mempool's entry times). `setmocktime` fixes it; P2P timers, metrics and uptime
        keep the real clock, so a mocked node still talks to its peers normally."""
        if self.mock_time is not None:
            return self.mock_time
        return int(self.clock())

    def set_mock_time(self, timestamp: int | None) -> None:
        """Fix `now()` at `timestamp` (Unix seconds), or give it back to the clock with None.
        Only this node's clock: its peers validate its blocks against their own."""
        self.mock_time = timestamp
        log.info("mocktime_set" if timestamp is not None else "mocktime_cleared",
                 mocktime=timestamp, clock=int(self.clock()))
        self.miner.on_new_tip()  # a fresh template, with the new time

    async def start(self) -> None:
        self._lock.acquire()
        try:
            self._open_state()
            if self.config.mine or self.config.miner_prefork:
                # Before any socket or thread exists: fork the workers, sharing our pages.
                self.miner.prestart(self.config.hashrate)
            await self._start_p2p()
            if self.config.mine:
                await self.miner.set_mining(True, self.config.hashrate)
            await self._start_rpc()
        except BaseException:
            miner = getattr(self, "miner", None)
            if miner is not None:
                await miner.close()
            if self.p2p is not None:
                await self.p2p.close()
            self._close_state()
            self._remove_runtime_files()
            self._lock.release()
            raise
        self._tasks.append(asyncio.create_task(self._save_mempool_periodically()))
        self._tasks.append(asyncio.create_task(self._rebroadcast_wallet_periodically()))
        if self.config.loadblock:
            self._tasks.append(asyncio.create_task(
                load_block_files(self, self.config.loadblock, self.params.max_block_size)
            ))
        log.info(
            "node_started",
            network=self.params.name,
            height=self.chain.height,
            tip=self.chain.tip.hash.hex(),
            rpc=self.rpc_url,
            datadir=str(self.datadir),
        )

    def _open_state(self) -> None:
        sigcache = SignatureCache(DEFAULT_SIGNATURE_CACHE_SIZE)
        self.store = open_store(self.datadir, self.params)
        with contextlib.suppress(RuntimeError):  # None only for callers outside a loop
            self._loop = asyncio.get_running_loop()
        self.writer = StoreWriter(self.store, self._on_store_failure)
        self.chain = ChainState(
            self.params,
            self.writer,  # reads blocks and undo data still queued from the queue
            self.store.load(),
            finality_depth=self.finality_depth,
            enforce_finality=self.config.enforce_finality,
            signature_cache=sigcache,
            verify_batch=self.verifier,
        )
        # Written here, without the writer's thread: the miner may fork its workers next, which
        # is only safe in a single-threaded process (the thread starts with the first commit).
        self.store.apply(self.chain.take_update())
        self._handed_height = self.chain.height
        if self.config.addressindex or self.config.reindex_addresses:
            sync_address_index(self.store, self.chain, rebuild=self.config.reindex_addresses)
            self.chain.address_index = True
            self.address_index = WrittenAddressIndex(self.writer, self.store, self._commit_now)
        self.mempool = Mempool(
            self.params,
            max_bytes=self.config.max_mempool_bytes,
            max_orphans=self.config.max_orphan_txs,
            signature_cache=sigcache,
            replacement_policy=self.config.mempool_replacement,
        )
        self.wallet = Wallet.open(self.datadir, self.params)
        self.wallet.replaced = lambda txid: self.replacement_holder(txid) is not None
        for txid in self.wallet.history.records:
            self._watch(txid)
        self._load_mempool()
        payout = (
            self.wallet.decode(self.config.mining_address)
            if self.config.mining_address
            else self.wallet.default_pkh()
        )
        self.miner = Miner(self, payout, self.config.miner_processes)
        self._sync_wallet_at_start()

    def _sync_wallet_at_start(self) -> None:
        """After the mempool file: catch up on blocks the wallet missed (a kill -9 can leave
        its scan marker behind), then resubmit its unconfirmed payments, which the mempool
        file may not hold (it is written only every MEMPOOL_SAVE_INTERVAL)."""
        scanned, found = rescan(self.wallet, self.chain)
        self._save_wallet("wallet")
        counts = resubmit(self)
        log.info("wallet_synced", rescanned_blocks=scanned, found=found, **counts)

    def _save_wallet(self, what: str) -> bool:
        """Flush the wallet, turning a write failure into a logged, visible warning: used
        where the change is already done (a block connected, a payment went out)."""
        try:
            self.wallet.flush()
        except WalletWriteError as exc:
            self.note_save_failure(what, str(exc))
            return False
        self._save_failures.pop(what, None)
        return True

    def note_save_failure(self, what: str, error: str) -> None:
        """Log a failed save and show it in getblockchaininfo.warnings until one succeeds."""
        log.error("save_failed", what=what, error=error)
        self._save_failures[what] = f"could not save the {what}: {error}"

    def storage_warnings(self) -> list[str]:
        """Saves that failed and have not succeeded since (a full disk)."""
        return list(self._save_failures.values())

    def resubmit_wallet_transactions(self) -> dict[str, int]:
        """bitcoind's ResubmitWalletTransactions: what the periodic task does, on demand."""
        counts = resubmit(self)
        log.info("wallet_resubmitted", **counts)
        return counts

    async def _rebroadcast_wallet_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.wallet_rebroadcast_interval)
            try:
                self.resubmit_wallet_transactions()
            except Exception:
                # One bad round must not end rebroadcasting for the life of the node.
                log.exception("wallet_rebroadcast_failed")

    async def _start_p2p(self) -> None:
        cfg = self.config
        listen = not cfg.no_listen
        host, port = parse_host_port(cfg.p2p_bind)
        if not listen:
            port = 0  # still a UDP socket to talk from, but nobody is told about it
        service = P2PService((host, port), listen, self.clock, self.rng, self._on_p2p_event)
        bound = await service.bind()
        connect = [parse_peer(a) for a in cfg.connect]
        addnode = [parse_peer(a) for a in cfg.addnode]
        # The protocol keys peers by the IP their datagrams come from, so names (docker
        # compose service names, say) are resolved here, retrying until they resolve.
        named = [(a, pin) for pin, a in connect + addnode if not _is_ip(a[0])]
        p2p_config = P2PConfig(
            listen=listen,
            listen_port=bound if listen else 0,
            connect=tuple(a for _, a in connect if _is_ip(a[0])),
            addnode=tuple(a for _, a in addnode if _is_ip(a[0])),
            connect_only=bool(connect),
            peer_ids=tuple((a, pin) for pin, a in connect + addnode if pin and _is_ip(a[0])),
            max_inbound=cfg.max_inbound,
            max_outbound=cfg.max_outbound,
            allow_peers=frozenset(bytes.fromhex(n) for n in cfg.allow_peer),
            ban_seconds=cfg.ban_seconds,
        )
        protocol = P2PProtocol(
            self.params, load_node_key(self.datadir), p2p_config, self, self.rng, self.clock()
        )
        self._load_peers(protocol)
        service.attach(protocol)
        self.p2p = service
        self.metrics.watch_p2p(lambda: self.p2p.protocol if self.p2p else None)
        if named:
            self._tasks.append(asyncio.create_task(self._resolve_peer_names(named)))
        self.p2p_addr = f"{host}:{bound}"
        write_atomic(self.datadir / "p2p.addr", self.p2p_addr.encode(), 0o600)
        log.info("p2p_listening" if listen else "p2p_outbound_only", addr=self.p2p_addr,
                 node_id=protocol.node_id.hex())

    async def _resolve_peer_names(
        self, named: list[tuple[tuple[str, int], bytes | None]]
    ) -> None:
        """Keep named peers resolved: retry until a name resolves, then re-check it now and
        then, since a restarted container may come back with another address."""
        loop = asyncio.get_running_loop()
        current: dict[tuple[str, int], tuple[str, int]] = {}
        while True:
            for addr, pin in named:
                try:
                    infos = await loop.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)
                except OSError as exc:
                    log.debug("peer_name_unresolved", host=addr[0], error=str(exc))
                    continue
                resolved = (infos[0][4][0], addr[1])
                previous = current.get(addr)
                if previous == resolved:
                    continue
                if previous is not None:
                    self.protocol.forget_persistent(previous)
                log.info("peer_name_resolved", host=addr[0], ip=resolved[0])
                current[addr] = resolved
                self.protocol.connect(resolved, self.clock(), persistent=True, node_id=pin)
                self.p2p_flush()
            resolved_all = len(current) == len(named)
            await asyncio.sleep(PEER_NAME_RECHECK if resolved_all else PEER_NAME_RETRY)

    @property
    def protocol(self) -> P2PProtocol:
        assert self.p2p is not None and self.p2p.protocol is not None
        return self.p2p.protocol

    def _on_p2p_event(self, event: Event) -> None:
        if isinstance(event, PeerConnected):
            self.events.publish({"type": "peer_connected", "id": event.peer_id,
                                 "addr": f"{event.addr[0]}:{event.addr[1]}",
                                 "inbound": event.inbound, "node_id": event.node_id.hex()})
        elif isinstance(event, DoubleSpendSeen):
            self._on_double_spend_alert(event.tx_a, event.tx_b)
        elif isinstance(event, PeerDisconnected):
            self.events.publish({"type": "peer_disconnected", "id": event.peer_id,
                                 "addr": f"{event.addr[0]}:{event.addr[1]}",
                                 "reason": event.reason})

    def p2p_flush(self) -> None:
        if self.p2p is not None:
            self.p2p.flush()

    def accept_header(self, header: Any) -> Any:
        """Headers-first sync: index a header; it is stored with the next commit."""
        return self.chain.accept_header(header, self.now())

    async def _start_rpc(self) -> None:
        if self.config.rpc_user:
            auth = (self.config.rpc_user, self.config.rpc_password or "")
        else:
            auth = write_cookie(self.datadir)
        self.rpc = RPCServer(
            build_registry(self),
            self.events,
            auth,
            max_body_bytes=self.config.max_rpc_body_bytes,
            max_batch=self.config.max_rpc_batch,
            header_timeout=self.config.rpc_header_timeout,
            max_connections=self.config.max_rpc_connections,
            metrics=lambda: self.metrics.render(self),
        )
        host, port = parse_host_port(self.config.rpc_bind)
        host, port = await self.rpc.start(host, port)
        self.rpc_url = f"http://{host}:{port}/"
        write_atomic(self.datadir / "rpc.url", self.rpc_url.encode(), 0o600)

    def request_stop(self) -> None:
        self._stop_event.set()

    async def wait_stopped(self) -> None:
        await self._stop_event.wait()

    async def stop(self) -> None:
        """Close everything; a save that fails (a full disk) is logged and listed in
        `unsaved`, and the runtime files (.cookie, rpc.url, p2p.addr) go whatever happens."""
        log.info("node_stopping")
        self.unsaved = []
        self._stopping = True  # a commit failing from here on is reported in `unsaved`
        try:
            await self.miner.close()
            if self.p2p is not None:
                self._save_at_stop("peers", self._save_peers)
                await self.p2p.close()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.rpc is not None:
                await self.rpc.stop()
            self.events.close()
            self._save_at_stop("mempool", self._save_mempool)
            self._save_at_stop("wallet", self.wallet.flush)
            await self._drain_store()
            self._save_at_stop("block store", self._close_state)
        finally:
            self._remove_runtime_files()
            self._lock.release()
        log.info("node_stopped", unsaved=self.unsaved, failure=self.failure)

    def _save_at_stop(self, what: str, save: Callable[[], None]) -> None:
        try:
            save()
        except (OSError, WalletWriteError, StorageError) as exc:
            log.error("save_failed_at_stop", what=what, error=str(exc))
            self.unsaved.append(f"{what} ({exc})")

    def _remove_runtime_files(self) -> None:
        if not self.config.rpc_user:
            delete_cookie(self.datadir)
        for name in ("rpc.url", "p2p.addr"):
            with contextlib.suppress(FileNotFoundError):
                (self.datadir / name).unlink()

    def _close_state(self) -> None:
        self.verifier.close()
        self.address_index = None
        writer, self.writer = self.writer, None
        store, self.store = self.store, None
        if writer is not None:
            writer.close()  # writes what is queued, then closes the store
        elif store is not None:
            store.close()

    async def _drain_store(self) -> None:
        """Hand over what the chain holds back and wait, off the loop, until it is written;
        a failure is reported by `_close_state` (in `unsaved`)."""
        if self.writer is None:
            return
        with contextlib.suppress(StorageError):
            self._commit_now()
            await self.writer.wait_written()

    def _commit(self) -> None:
        """After a chain change: hand the update to the store writer. While the node is catching
        up, once per received batch instead (the deferred commit runs when the loop has handled
        the current input), or every MAX_BLOCKS_PER_COMMIT blocks."""
        chain = self.chain
        if (
            self._loop is not None
            and self.p2p is not None
            and chain.best_header.height - chain.height > CATCHING_UP_BLOCKS
            and abs(chain.height - self._handed_height) < MAX_BLOCKS_PER_COMMIT
        ):
            if not self._commit_scheduled:
                self._commit_scheduled = True
                self._loop.call_soon(self._deferred_commit)
            return
        self._hand_over()

    def _deferred_commit(self) -> None:
        self._commit_scheduled = False
        if self.writer is not None and not self.writer.failed:
            self._hand_over()

    def _hand_over(self) -> None:
        """`_commit_now` after a chain change. A failed store is reported there (the node
        stops) and not raised into whoever changed the chain: a peer's message handler, the
        block import task (whose exception `stop` would re-raise), the miner, a loop callback."""
        with contextlib.suppress(StorageError):
            self._commit_now()

    def _commit_now(self) -> None:
        """Queue the chain's update behind the earlier ones (waiting if MAX_PENDING_COMMITS are
        queued already). StorageError once a commit failed: the node is stopping then."""
        update = self.chain.take_update()
        self._handed_height = self.chain.height
        if update.is_empty() or self.writer is None:
            return
        try:
            self.writer.submit(update)
        except StorageError:
            self._store_failed()  # now, should the writer's callback still be on its way
            raise

    async def committed(self) -> None:
        """Until everything the chain accepted so far is on disk; StorageError if a commit
        failed (generatetoaddress reports which of its blocks were written)."""
        if self.writer is None:
            raise StorageError("the block store is closed")
        self._commit_now()
        try:
            await self.writer.wait_written()
        except StorageError:
            self._store_failed()  # the node stops before the caller hears of the failure
            raise

    def _on_store_failure(self, exc: BaseException) -> None:
        """In the writer thread: a commit failed; the loop learns it next."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: close() reports it
                self._loop.call_soon_threadsafe(self._store_failed)

    def _store_failed(self) -> None:
        writer = self.writer
        if self._stopping or writer is None:
            return  # reported by _close_state, in `unsaved`
        error = writer.take_error()
        if error is None:
            return
        # Memory is now ahead of disk: carrying on would serve a state that a restart
        # cannot reproduce. Stop; the store still holds the last committed tip.
        log.critical("store_write_failed", error=str(error))
        self.failure = f"could not write the block store ({error})"
        self.request_stop()

    # ----------------------------------------------------------------- mempool persistence

    def _load_mempool(self) -> None:
        path = self.datadir / MEMPOOL_FILE
        if not path.exists():
            return
        try:
            data = msgpack.unpackb(path.read_bytes())
            if data.get("version") != MEMPOOL_FILE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            entries = data["txs"]
        except Exception as exc:
            log.warning("mempool_file_unreadable", path=str(path), error=str(exc))
            return
        accepted = 0
        for raw, entry_time in entries:
            try:
                tx = decode_transaction(raw, self.params.max_block_size)
                self.mempool.accept(tx, self.chain, self.now(), entry_time=entry_time)
                accepted += 1
            except ConsensusError as exc:
                log.info("mempool_tx_dropped_at_load", reason=exc.reason)
        log.info("mempool_loaded", accepted=accepted, stored=len(entries))

    def _save_mempool(self) -> None:
        data = {"version": MEMPOOL_FILE_VERSION, "txs": self.mempool.snapshot()}
        write_atomic(self.datadir / MEMPOOL_FILE, msgpack.packb(data, use_bin_type=True))

    async def _save_mempool_periodically(self) -> None:
        while True:
            await asyncio.sleep(MEMPOOL_SAVE_INTERVAL)
            saves = (
                ("mempool", self._save_mempool),
                ("peers", self._save_peers),
                ("wallet", self.wallet.flush),
            )
            for what, save in saves:
                try:
                    save()
                except (OSError, WalletWriteError) as exc:
                    self.note_save_failure(what, str(exc))
                else:
                    self._save_failures.pop(what, None)

    # ----------------------------------------------------------------- address book persistence

    def _load_peers(self, protocol: P2PProtocol) -> None:
        path = self.datadir / PEERS_FILE
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            if data.get("version") != PEERS_FILE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            records = list(data["addresses"])
        except Exception as exc:
            log.warning("peers_file_unreadable", path=str(path), error=str(exc))
            return
        loaded = protocol.book.load_records(records)
        log.info("peers_loaded", addresses=loaded, stored=len(records))

    def _save_peers(self) -> None:
        protocol = self.p2p.protocol if self.p2p is not None else None
        if protocol is None:
            return
        data = {"version": PEERS_FILE_VERSION, "addresses": protocol.book.records()}
        write_atomic(self.datadir / PEERS_FILE, json.dumps(data).encode(), 0o600)

    # ----------------------------------------------------------------- chain changes

    def submit_block(self, block: Block) -> AcceptResult:
        self.p2p_flush()  # a block passed on before validation (BIP152) leaves first
        result = self.chain.accept_block(block, self.now())
        self._after_chain_change(result)
        if result.status == "invalid":
            log.info("block_rejected", hash=block.hash.hex(), reason=result.reason)
        return result

    def invalidate_block(self, block_hash: bytes) -> AcceptResult:
        result = self.chain.invalidate_block(block_hash)
        self._after_chain_change(result)
        return result

    def reconsider_block(self, block_hash: bytes) -> AcceptResult:
        result = self.chain.reconsider_block(block_hash)
        self._after_chain_change(result)
        return result

    def _after_chain_change(self, result: AcceptResult) -> None:
        if result.connected and self.p2p is not None:
            # Relay first (the blocks are fully validated already): every millisecond spent on
            # the commit and bookkeeping here would be added at every hop.
            self.protocol.announce_blocks(result, self.clock())
            self.p2p.flush()
        # Logged and published at connect time, then committed (bitcoind's UpdateTip also
        # precedes its flush): the in-memory chain that RPC answers from has already moved.
        # Should the commit fail, the node stops; what it announced is re-fetched from peers.
        for entry, block in result.disconnected:
            self.metrics.blocks_disconnected.inc()
            for tx in block.txs[1:]:
                self._remember_tx(tx)
            log.info("block_disconnected", height=entry.height, hash=entry.hash.hex())
            self.events.publish(
                {"type": "block_disconnected", "hash": entry.hash.hex(), "height": entry.height}
            )
        if result.disconnected and result.old_tip and result.new_tip and result.fork:
            depth = len(result.disconnected)
            self.metrics.reorg_depth.observe(depth)
            log.warning(
                "reorg",
                old_tip=result.old_tip.hash.hex(),
                new_tip=result.new_tip.hash.hex(),
                fork_height=result.fork.height,
                depth=depth,
            )
            self.events.publish(
                {
                    "type": "reorg",
                    "old_tip": result.old_tip.hash.hex(),
                    "new_tip": result.new_tip.hash.hex(),
                    "fork_height": result.fork.height,
                    "depth": depth,
                }
            )
        for entry, block in result.connected:
            self.metrics.blocks_connected.inc()
            log.info(
                "block_connected", height=entry.height, hash=entry.hash.hex(), txs=len(block.txs)
            )
            self.events.publish(
                {
                    "type": "block_connected",
                    "hash": entry.hash.hex(),
                    "height": entry.height,
                    "txs": len(block.txs),
                }
            )
        if result.finality_refused:
            self._report_refused_reorgs(result.finality_refused)
        self._commit()
        self._wallet_note_blocks(result)
        if result.connected or result.disconnected:
            update = self.mempool.update_for_chain(result, self.chain, self.now())
            for txid in update.conflicted:
                self._watch(txid)
            self._note_replacements(update)
            for txid in update.removed:
                # No longer valid on the new tip (non-final there, say): watched, so that its
                # status event says it left the mempool.
                log.info("mempool_tx_removed", txid=txid.hex(), reason=update.removed_reasons[txid])
                self._watch(txid)
            self._prove_reorg_conflicts(update.conflicted_with)
            if self.p2p is not None:
                # Transactions back from disconnected blocks may be news to peers that were on
                # the other branch: announce them like new arrivals.
                for txid in update.returned:
                    entry = self.mempool.get(txid)
                    if entry is not None:
                        self.protocol.announce_tx(entry.tx, self.clock())
            self._publish_tx_statuses()
            self.miner.on_new_tip()
            if self.p2p is not None:
                self.p2p.flush()

    def _wallet_note_blocks(self, result: AcceptResult) -> None:
        """Note the connected blocks' wallet transactions; the wallet's journal is appended to
        only when one concerns it (the scan marker is flushed with the mempool, and a start-up
        rescans from it)."""
        found = False
        for _entry, block in result.connected:
            found = note_block(self.wallet, block, self.chain) or found
        if result.connected or result.disconnected:
            self.wallet.scanned = (self.chain.height, self.chain.tip.hash)
        if found:
            self._save_wallet("wallet")

    # ----------------------------------------------------------------- transactions

    def submit_transaction(self, tx: Transaction) -> Any:
        try:
            outcome = self.mempool.accept(tx, self.chain, self.now())
        except ConsensusError as exc:
            # A conflict the policy does not replace, or a replacement its rules refused: a
            # double spend of the pool transactions either way.
            if isinstance(exc, MempoolConflict) or exc.reason in REFUSED_REPLACEMENT_REASONS:
                for txid in self.mempool.conflicts_of(tx):
                    entry = self.mempool.get(txid)
                    if entry is not None:
                        self._record_double_spend(entry.tx, tx, relay=True)
            raise
        self._note_replacements(outcome)
        for txid in outcome.accepted:
            entry = self.mempool.get(txid)
            if entry is not None:
                self._remember_tx(entry.tx)
                # In memory only: what a crash loses here comes back when it confirms.
                self.wallet.note_tx(entry.tx, self.now(), self.chain)
                if self.p2p is not None:
                    self.protocol.announce_tx(entry.tx, self.clock())
        if self.p2p is not None:
            self.p2p.flush()
        # Only the new arrival changed: report it, not every watched transaction. As its status
        # says: `conflicted` rather than `mempool` when the node holds proof of its double spend
        # (a replacement, with alerts on).
        status = self.tx_status(tx.txid)
        self.events.publish({"type": "tx_status", "txid": tx.txid.hex(), "status": status.status,
                             "confirmations": status.confirmations})
        if tx.txid in self._watched:
            self._watched[tx.txid] = (status.status, status.confirmations)
        self.miner.on_mempool_changed()
        return outcome

    def _note_replacements(self, record: ReplacementRecord) -> None:
        """Pool transactions a replacement pushed out: status `replaced`, a double-spend proof
        saying which policy let the replacement in, and the body kept for gettransaction."""
        if not record.replaced:
            return
        self.replacements.note(record.replaced)
        policy = self.mempool.replacement_policy
        for txid, by in record.replaced.items():
            self._remember_tx(record.replaced_txs[txid])
            self._watch(txid)
            log.info("mempool_tx_replaced", txid=txid.hex(), replaced_by=by.hex(), policy=policy)
        for txid, by in record.replaced.items():
            replacement = self.mempool.get(by)
            if replacement is not None:
                # A descendant shares no input with the replacement: only direct conflicts
                # make a proof, the others are skipped inside.
                self._record_double_spend(
                    record.replaced_txs[txid], replacement.tx, relay=True, replaced_under=policy
                )
        self._publish_tx_statuses()  # the replaced ones' `replaced`, proof or not

    def replacement_holder(self, txid: bytes) -> bytes | None:
        """The replacement of `txid` (or of that one, and so on) that is in the mempool or
        confirmed, if `txid` was replaced in our mempool."""
        chain, mempool = self.chain, self.mempool
        return self.replacements.holder(
            txid, lambda t: t in mempool or chain.tx_block(t) is not None
        )

    # ----------------------------------------------------------------- double spends

    def _proves_double_spend(self, tx_a: Transaction, tx_b: Transaction) -> bool:
        """Both signed and valid on their own against our view, and spending a common coin:
        proof rather than rumour."""
        if tx_a.txid == tx_b.txid or not (
            {i.outpoint for i in tx_a.inputs} & {i.outpoint for i in tx_b.inputs}
        ):
            return False
        return self._validly_signed(tx_a) and self._validly_signed(tx_b)

    def _validly_signed(self, tx: Transaction) -> bool:
        """Well formed, and each input signed by the owner of the coin it spends, whether
        that coin is unspent, spent already (by the other side of a double spend) or still
        unconfirmed. A transaction confirmed in our chain is valid by definition."""
        if self.chain.tx_block(tx.txid) is not None:
            return True
        try:
            check_transaction(tx, self.params)
            coins = []
            for txin in tx.inputs:
                coin = self._coin_anywhere(txin.outpoint)
                if coin is None:
                    return False
                coins.append(coin)
            if sum(c.amount for c in coins) < tx.total_out():
                return False
            check_tx_signatures(tx, coins, self.params.genesis_hash, self.chain.signature_cache)
        except ConsensusError:
            return False
        return True

    def _coin_anywhere(self, outpoint: OutPoint) -> Coin | None:
        coin = self.chain.coin(outpoint)
        if coin is not None:
            return coin
        parent = self.find_transaction(outpoint.txid)
        if parent is None or outpoint.index >= len(parent.outputs):
            return None
        out = parent.outputs[outpoint.index]
        return Coin(out.amount, out.pkh, self.chain.height + 1, parent.is_coinbase)

    def _record_double_spend(
        self, tx_a: Transaction, tx_b: Transaction, relay: bool, replaced_under: str | None = None
    ) -> None:
        """`replaced_under`: the replacement policy that let `tx_b` replace `tx_a` in our
        mempool (a replacement is still a double spend), named in the log and the event."""
        if not self._proves_double_spend(tx_a, tx_b):
            return
        new = tx_b.txid not in self._double_spends.get(tx_a.txid, set())
        for x, y in ((tx_a, tx_b), (tx_b, tx_a)):
            self._double_spend_seen_at.setdefault(x.txid, self.clock())
            self._double_spends.setdefault(x.txid, set()).add(y.txid)
            self._double_spends.move_to_end(x.txid)
            self._remember_tx(x)
            self._watch(x.txid)
        while len(self._double_spends) > MAX_WATCHED_TXS:
            forgotten, _ = self._double_spends.popitem(last=False)
            self._double_spend_seen_at.pop(forgotten, None)
        if new:
            replacement = {} if replaced_under is None else {"replaced_under": replaced_under}
            log.warning("double_spend_seen", txid=tx_a.txid.hex(), conflicting=tx_b.txid.hex(),
                        **replacement)
            self.events.publish({"type": "double_spend", "txid": tx_a.txid.hex(),
                                 "conflicting": tx_b.txid.hex(), **replacement})
        shared = {i.outpoint for i in tx_a.inputs} & {i.outpoint for i in tx_b.inputs}
        fresh = [op for op in shared if op not in self._alerted]
        if relay and fresh and self.config.double_spend_alerts and self.p2p is not None:
            for op in fresh:
                self._alerted[op] = None
            while len(self._alerted) > MAX_WATCHED_TXS:
                self._alerted.popitem(last=False)
            self.protocol.broadcast_double_spend(tx_a, tx_b)
            self.p2p.flush()
        self._publish_tx_statuses()

    def _prove_reorg_conflicts(self, conflicted_with: dict[bytes, bytes]) -> None:
        """A spend pushed out by a conflicting one in the new chain: nodes that only ever saw
        the winning branch cannot know the loser existed, so (with alerts on) send them both."""
        if not self.config.double_spend_alerts:
            return
        for loser_txid, winner_txid in conflicted_with.items():
            loser = self._recent.get(loser_txid)
            winner = self.find_transaction(winner_txid)
            if loser is not None and winner is not None:
                self._record_double_spend(winner, loser, relay=True)

    def _on_double_spend_alert(self, tx_a: Transaction, tx_b: Transaction) -> None:
        if not self.config.double_spend_alerts:
            return
        # Whichever of the two we hold is the payment at risk; relay the proof onward once.
        first, second = (tx_b, tx_a) if tx_b.txid in self.mempool else (tx_a, tx_b)
        self._record_double_spend(first, second, relay=True)

    def double_spends_of(self, txid: bytes) -> set[bytes]:
        return set(self._double_spends.get(txid, ()))

    def _remember_tx(self, tx: Transaction) -> None:
        self._recent[tx.txid] = tx
        self._recent.move_to_end(tx.txid)
        while len(self._recent) > MAX_RECENT_TXS:
            self._recent.popitem(last=False)

    def find_transaction(self, txid: bytes) -> Transaction | None:
        """The body of `txid` from wherever the node knows it: mempool, chain, wallet, recent."""
        entry = self.mempool.get(txid)
        if entry is not None:
            return entry.tx
        block_entry = self.chain.tx_block(txid)
        if block_entry is not None:
            block = self.chain.get_block(block_entry.hash)
            if block is not None:
                for tx in block.txs:
                    if tx.txid == txid:
                        return tx
        if txid in self._recent:
            return self._recent[txid]
        raw = self.wallet.known_tx(txid)
        if raw is not None:
            return decode_transaction(raw, self.params.max_block_size)
        return None

    def _report_refused_reorgs(self, refused: list[bytes]) -> None:
        """A heavier branch refused beyond finality: log, `reorg_refused` event, metric."""
        conflicts = {c.tip.hash: c for c in self.chain.finality_conflicts()}
        for block_hash in refused:
            self.metrics.reorgs_refused.inc()
            conflict = conflicts.get(block_hash)
            details = conflict.to_json() if conflict is not None else {"hash": block_hash.hex()}
            log.warning("reorg_refused_beyond_finality", finality_depth=self.finality_depth,
                        **details)
            self.events.publish({"type": "reorg_refused", "finality_depth": self.finality_depth,
                                 **details})

    def finality_conflicts_of(self, txid: bytes, status: TxStatus) -> list[dict[str, Any]]:
        """The refused heavier branches that concern `txid`: it is in one of their blocks, or
        in our own blocks above their fork point (which they would revert)."""
        found = []
        for conflict in self.chain.finality_conflicts():
            ours = status.blockheight is not None and status.blockheight > conflict.fork.height
            if ours or self.chain.branch_has_tx(conflict, txid):
                found.append({**conflict.to_json(),
                              "branch": "active" if ours else "refused",
                              "warning": conflict.warning()})
        return found

    def tx_status(self, txid: bytes) -> TxStatus:
        tx = None if self.chain.tx_block(txid) else self.find_transaction(txid)
        alerts = self._double_spends.get(txid, ()) if self.config.double_spend_alerts else ()
        by = self.replacements.replaced_by(txid)
        return transaction_status(
            txid, tx, self.chain, self.mempool, self.finality_depth, known_conflicts=alerts,
            replaced_by=None if by is None else (by, self.replacement_holder(txid)),
        )

    def accepted_zero_conf(self, status: TxStatus) -> bool:
        """Merchant policy: confirmed, or unconfirmed and unchallenged until the end of the
        listening period (0 s by default: accepted at once, as most wallets do). A conflict
        seen after that came too late: the payment had been accepted."""
        if status.status in ("confirmed", "final"):
            return True
        entry = self.mempool.get(status.txid)
        if entry is None:
            return False
        deadline = entry.time + self.config.listening_period
        if self.clock() < deadline:
            return False
        challenged = self._double_spend_seen_at.get(status.txid)
        return challenged is None or challenged > deadline

    def watch(self, txid: bytes) -> None:
        """Report `txid`'s status changes on the event stream from now on (bounded)."""
        self._watch(txid)

    def _watch(self, txid: bytes) -> None:
        if txid not in self._watched:
            self._watched[txid] = ("", 0)
        self._watched.move_to_end(txid)
        while len(self._watched) > MAX_WATCHED_TXS:
            self._watched.popitem(last=False)

    def _publish_tx_statuses(self) -> None:
        for txid, previous in list(self._watched.items()):
            status = self.tx_status(txid)
            current = (status.status, status.confirmations)
            if current != previous:
                self._watched[txid] = current
                replaced = (
                    {"replaced_by_txid": status.replaced_by.hex()} if status.replaced_by else {}
                )
                self.events.publish(
                    {
                        "type": "tx_status",
                        "txid": txid.hex(),
                        "status": status.status,
                        "confirmations": status.confirmations,
                        **replaced,
                    }
                )


async def run_node(config: NodeConfig, params: ChainParams) -> int:
    """Run until SIGINT/SIGTERM or RPC `stop`; returns the process exit code."""
    node = Node(config, params)
    await node.start()
    # Here, not in Node.start: the process lives exactly as long as this node (node/gcpolicy.py).
    log.info("loaded_state_frozen", objects=freeze_loaded_state())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.request_stop)
    print(f"powlab node running: rpc {node.rpc_url} datadir {node.datadir}", flush=True)
    try:
        await node.wait_stopped()
    finally:
        await node.stop()
    if node.failure is None and not node.unsaved:
        return 0
    print(f"powlab node: {stop_message(node.failure, node.unsaved)}", file=sys.stderr, flush=True)
    return 1


def stop_message(failure: str | None, unsaved: list[str]) -> str:
    """The one line a node that stopped on a storage failure leaves on stderr."""
    parts = [f"stopped: {failure}" if failure else "stopped"]
    if unsaved:
        parts.append("could not save " + "; ".join(unsaved))
    return ", ".join(parts) + "; the store holds the last committed tip"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


NODE_KEY_FILE = "node_key"


def load_node_key(datadir: Path) -> PrivateKey:
    """The node's P2P identity (an Ed25519 key), created on first start, private to the user."""
    path = datadir / NODE_KEY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise NodeError(f"{path} is not a 32-byte key; move it aside to make a new identity")
        return PrivateKey(seed)
    key = PrivateKey(os.urandom(32))
    write_atomic(path, key.seed, 0o600)
    return key


def default_datadir(network: str) -> Path:
    return Path(os.path.expanduser("~/.powlab")) / network
