"""A pool of miner worker processes, driven from an asyncio daemon.

Design notes (the why):

* Workers are processes started with "spawn" (or "forkserver"), or with "fork" only while the
  calling process has a single thread (checked in `start()`): forking a threaded process can
  copy held locks into the child. The daemon forks its workers before it starts any thread or
  socket (`fork_is_safe()`), so that they share its pages instead of each importing a fresh
  interpreter (~20 MB each, plus multiprocessing's resource tracker); a forked worker closes
  the parent's pipe ends it inherited, resets inherited signal handlers and freezes the
  garbage collector's view of the inherited objects (so collections do not copy their pages).
* Each worker has its own job pipe (parent -> worker) and result pipe (worker -> parent), so no
  pipe ever has two writers and no multiprocessing lock sits on the hot path.
* Preemption: the parent writes the new job into every job pipe and *then* bumps a shared
  generation counter. Hashing workers compare the counter (a plain shared-memory read) and poll
  their pipe between batches of ~1 ms, so a job switch takes effect within a couple of ms.
  Idle workers block in `recv()` and burn no CPU.
* Pacing: each worker runs a token bucket at `hashrate / processes` and sleeps in
  `Connection.poll(timeout)`, so a sleeping worker still wakes at once for a new job, a rate
  change or shutdown.
* Orphan safety: the parent holds the only write end of every job pipe, so if the parent dies
  (even by SIGKILL) the workers see EOF on their next poll/recv and exit; they also compare
  `os.getppid()` between batches. Workers ignore SIGINT so that Ctrl-C in a terminal reaches
  only the daemon, which then closes the pool; the processes are also daemonic, so
  multiprocessing's exit hook terminates them if the daemon exits without `close()`.
* A reader thread in the parent drains the result pipes continuously (so workers can never
  block on a full pipe) and hands results to asyncio via `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

import structlog

from node.miner.hashing import NONCE_SPACE, PREFIX_SIZE, Scanner, make_scanner

log = structlog.get_logger(__name__)

# Nonces per batch when unthrottled: ~1 ms at ~2 MH/s, which bounds job-switch latency while
# the per-batch bookkeeping (counter read, pipe poll, getppid) stays well under 1%.
UNLIMITED_BATCH = 2048
# A throttled worker hashes in bursts of about this much wall time's worth of tokens, so it
# wakes ~100 times a second instead of once per hash.
PACE_QUANTUM_S = 0.01
# How often the reader thread samples the hash counters for `hashrate_measured`.
SAMPLE_INTERVAL_S = 0.25
_MAX_SAMPLES = 512  # > 2 minutes of history at SAMPLE_INTERVAL_S
_READY_TIMEOUT_S = 60.0
_JOIN_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Found:
    """A worker found `nonce` whose header hash meets the job's target."""

    job_id: int
    nonce: int
    worker: int


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Every worker has tried its whole nonce range for `job_id` without success."""

    job_id: int


MinerResult = Found | Exhausted


class MinerPoolError(RuntimeError):
    """The pool is closed or a worker died; no further results will arrive."""


def nonce_ranges(space: int, parts: int) -> list[tuple[int, int]]:
    """Split `0..space` into `parts` disjoint, contiguous half-open ranges covering it."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    return [(space * i // parts, space * (i + 1) // parts) for i in range(parts)]


def default_processes() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- worker side


class HashBudget:
    """The hash-rate cap of one worker: a token bucket that only fills while hashing.

    Mining must be a Poisson process from the moment it is switched on, so credit never
    accumulates while the worker is idle (no job), paused (rate 0) or waiting for the next
    template after a find: `restart()` (called when a job starts after idleness) and every
    rate change empty the bucket and restart its clock. While hashing, the bucket holds at
    most two quanta, enough that scheduler oversleep does not pull the achieved rate below
    the cap. `clock` is injectable so the tests can run it in virtual time.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate = rate
        self.tokens = 0.0
        self.refilled_at = clock()

    def restart(self) -> None:
        self.tokens = 0.0
        self.refilled_at = self.clock()

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate
        self.restart()

    def capacity(self) -> float:
        assert self.rate is not None
        return 2.0 * self.quantum() + 1.0

    def quantum(self) -> float:
        assert self.rate is not None
        return max(1.0, self.rate * PACE_QUANTUM_S)

    def grant(self) -> tuple[int, float]:
        """(hashes allowed now, 0.0) or (0, seconds to wait for a whole quantum)."""
        rate = self.rate
        if rate is None:
            return UNLIMITED_BATCH, 0.0
        if rate <= 0:
            return 0, PACE_QUANTUM_S
        now = self.clock()
        tokens = min(self.tokens + (now - self.refilled_at) * rate, self.capacity())
        self.tokens = tokens
        self.refilled_at = now
        if tokens >= 1.0 - 1e-6:  # a wait of exactly one quantum may refill to 0.9999...
            return min(max(1, int(tokens + 1e-6)), UNLIMITED_BATCH), 0.0
        # Wait for a whole quantum (not just one hash) to keep wakeups rare.
        return 0, (self.quantum() - tokens) / rate

    def spend(self, hashes: int) -> None:
        if self.rate is not None:
            self.tokens -= hashes



class _Worker:
    """State of one worker process; only ever instantiated inside the child."""

    def __init__(
        self,
        wid: int,
        job_conn: Connection,
        res_conn: Connection,
        generation: Any,
        counts: Any,
        rate: float | None,
        parent_pid: int,
    ) -> None:
        self.wid = wid
        self.job_conn = job_conn
        self.res_conn = res_conn
        self.generation = generation
        self.counts = counts
        self.parent_pid = parent_pid
        self.running = True
        self.total = 0
        # Current job.
        self.job_gen = 0
        self.job_id = 0
        self.scan: Scanner | None = None
        self.next_nonce = 0
        self.end = 0
        self.ack_pending = False
        self.bucket = HashBudget(rate)

    @property
    def rate(self) -> float | None:
        return self.bucket.rate

    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "job":
            _, gen, job_id, header76, target, lo, hi = msg
            if self.scan is None:
                # Switching on (from idle or after a found block): no credit carried over.
                self.bucket.restart()
            self.job_gen = gen
            self.job_id = job_id
            self.scan = make_scanner(header76, target)
            self.next_nonce = lo
            self.end = hi
            self.ack_pending = True
        elif kind == "clear":
            self.job_gen = msg[1]
            self.scan = None
            self.ack_pending = False
        elif kind == "rate":
            self.bucket.set_rate(msg[1])
        elif kind == "stop":
            self.running = False

    def drain(self) -> None:
        """Apply every queued control message; only the newest job is ever started."""
        conn = self.job_conn
        while self.running and conn.poll():
            self.handle(conn.recv())
        # The parent writes the job before bumping the counter, so this only blocks if we read
        # the counter mid-submit; it guarantees we never keep hashing a superseded job.
        while self.running and self.job_gen < self.generation.value:
            self.handle(conn.recv())
        if self.ack_pending and self.scan is not None and self.running:
            self.ack_pending = False
            self.res_conn.send(("started", self.wid, self.job_gen, time.monotonic()))

    def paced_batch(self) -> int:
        """How many hashes to do now; 0 means slept (or was woken) and the caller re-checks."""
        n, wait = self.bucket.grant()
        if n == 0:
            # poll() doubles as the sleep so a new job or shutdown interrupts it.
            self.job_conn.poll(wait)
        return n

    def run(self) -> None:
        job_conn = self.job_conn
        generation = self.generation
        counts = self.counts
        wid = self.wid
        parent_pid = self.parent_pid
        getppid = os.getppid
        self.res_conn.send(("ready", wid))
        while self.running:
            scan = self.scan
            if scan is None or self.rate == 0:
                self.handle(job_conn.recv())  # idle: block, no spinning
                self.drain()
                continue
            if generation.value != self.job_gen or job_conn.poll():
                self.drain()
                continue
            if getppid() != parent_pid:
                return
            remaining = self.end - self.next_nonce
            if remaining <= 0:
                self.res_conn.send(("exhausted", wid, self.job_gen, self.job_id))
                self.scan = None
                continue
            n = self.paced_batch()
            if n == 0:
                continue
            nonce, done = scan(self.next_nonce, min(n, remaining))
            self.total += done
            counts[wid] = self.total
            self.bucket.spend(done)
            if nonce is None:
                self.next_nonce += done
            else:
                self.res_conn.send(("found", wid, self.job_gen, self.job_id, nonce))
                # The block is solved; wait for the daemon's next template instead of
                # producing more (stale) solutions for this one.
                self.scan = None


def fork_is_safe() -> bool:
    """Whether a pool may start its workers with "fork" now: the platform has it and this
    process runs a single thread (no lock of another thread can be copied mid-use)."""
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def _after_fork(close_fds: Sequence[int]) -> None:
    """A forked worker's hygiene: drop the parent's ends of every pool pipe (so EOF still means
    "parent gone"), leave the parent's signal wake-up fd and handlers alone, and keep the
    collector off the inherited objects' pages."""
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    gc.freeze()


def _worker_main(
    wid: int,
    job_conn: Connection,
    res_conn: Connection,
    generation: Any,
    counts: Any,
    rate: float | None,
    parent_pid: int,
    close_fds: Sequence[int] = (),
) -> None:
    if close_fds:
        _after_fork(close_fds)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = _Worker(wid, job_conn, res_conn, generation, counts, rate, parent_pid)
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
        worker.run()


# --------------------------------------------------------------------------- parent side


@dataclass(slots=True)
class _PendingSwitch:
    submitted_at: float
    started: dict[int, float]


class MinerPool:
    """Mine on all cores in worker processes without blocking the daemon's event loop.

    Typical use from the daemon::

        pool = MinerPool(processes=None, hashrate=cfg.hashrate)
        pool.start()
        pool.submit_job(job_id, header76, target)
        while True:
            result = await pool.next_result()   # Found | Exhausted, never stale
            ...
        pool.close()
    """

    def __init__(
        self,
        processes: int | None = None,
        hashrate: float | None = None,
        *,
        nonce_space: int = NONCE_SPACE,
        start_method: str = "spawn",
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("processes must be >= 1")
        if not 1 <= nonce_space <= NONCE_SPACE:
            raise ValueError(f"nonce_space must be in 1..{NONCE_SPACE}")
        _check_hashrate(hashrate)
        self._start_method = start_method
        self._ctx: BaseContext = multiprocessing.get_context(start_method)
        self._processes = processes if processes is not None else default_processes()
        self._hashrate = hashrate
        self._nonce_space = nonce_space
        self._ranges = nonce_ranges(nonce_space, self._processes)

        self._lock = threading.Lock()
        self._state = "new"  # -> "running" -> "closed"
        self._error: MinerPoolError | None = None
        self._procs: list[BaseProcess] = []
        self._job_conns: list[Connection] = []
        self._res_conns: list[Connection] = []
        self._generation: Any = None  # shared c_uint64, created in start()
        self._counts: Any = None  # shared c_uint64[processes]
        self._reader: threading.Thread | None = None
        self._wake_r: Connection | None = None
        self._wake_w: Connection | None = None
        self._ready = threading.Event()
        self._ready_count = 0

        # Everything below is guarded by _lock (shared with the reader thread).
        self._gen = 0
        self._job_gen = 0  # generation whose results are current; 0 = no job
        self._job_id: int | None = None
        self._exhausted: set[int] = set()
        self._pending: dict[int, _PendingSwitch] = {}
        self._latencies: deque[float] = deque(maxlen=100_000)
        self._results: deque[tuple[int, MinerResult]] = deque()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._samples: deque[tuple[float, int]] = deque(maxlen=_MAX_SAMPLES)

    # ----------------------------------------------------------------- lifecycle

    @property
    def processes(self) -> int:
        return self._processes

    @property
    def hashrate(self) -> float | None:
        return self._hashrate

    @property
    def nonce_space(self) -> int:
        return self._nonce_space

    @property
    def current_job_id(self) -> int | None:
        return self._job_id

    @property
    def start_method(self) -> str:
        return self._start_method

    def start(self, wait: bool = True) -> None:
        """Spawn the workers; with `wait`, block until all are ready (spawn takes ~0.2 s).

        Jobs submitted before the workers are ready are simply queued in their pipes.
        With "fork", this process must have a single thread (ValueError otherwise).
        """
        if self._state != "new":
            raise MinerPoolError(f"cannot start a pool that is {self._state}")
        forking = self._start_method == "fork"
        if forking and not fork_is_safe():
            raise ValueError(
                "fork is unsafe once the process has threads; use spawn or forkserver"
            )
        self._state = "running"
        ctx: Any = self._ctx
        self._generation = ctx.RawValue(ctypes.c_uint64, 0)
        self._counts = ctx.RawArray(ctypes.c_uint64, self._processes)
        self._wake_r, self._wake_w = ctx.Pipe(duplex=False)
        per_worker = self._per_worker_rate(self._hashrate)
        try:
            for wid in range(self._processes):
                job_r, job_w = ctx.Pipe(duplex=False)
                res_r, res_w = ctx.Pipe(duplex=False)
                # A forked worker inherits every parent-side pipe end made so far, its own
                # included; it closes them (a spawned one inherits none).
                parent_ends = [*self._job_conns, *self._res_conns, job_w, res_r,
                               self._wake_r, self._wake_w]
                close_fds = (
                    tuple(c.fileno() for c in parent_ends if c is not None) if forking else ()
                )
                proc = ctx.Process(
                    target=_worker_main,
                    args=(
                        wid,
                        job_r,
                        res_w,
                        self._generation,
                        self._counts,
                        per_worker,
                        os.getpid(),
                        close_fds,
                    ),
                    name=f"powlab-miner-{wid}",
                    daemon=True,
                )
                proc.start()
                # Drop our copies of the child's ends: the parent must hold the only write end
                # of each job pipe (EOF = parent gone) and none of the result pipes (EOF =
                # worker gone).
                job_r.close()
                res_w.close()
                self._procs.append(proc)
                self._job_conns.append(job_w)
                self._res_conns.append(res_r)
        except BaseException:
            self.close()
            raise
        with self._lock:
            self._samples.append((time.monotonic(), 0))
        self._reader = threading.Thread(
            target=self._reader_main, name="powlab-miner-results", daemon=True
        )
        self._reader.start()
        log.info(
            "miner_pool_started",
            processes=self._processes,
            hashrate=self._hashrate,
            pids=[p.pid for p in self._procs],
        )
        if wait and not self.wait_ready(_READY_TIMEOUT_S):
            error = self._error or MinerPoolError("miner workers did not start in time")
            self.close()
            raise error

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker has started up; False on timeout or if a worker died."""
        return self._ready.wait(timeout) and self._error is None

    def close(self) -> None:
        """Stop and join all workers (idempotent). Pending `next_result` calls raise."""
        if self._state == "closed":
            return
        self._state = "closed"
        for conn in self._job_conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if self._reader is not None and self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send_bytes(b"")
            self._reader.join()
        for conn in [*self._job_conns, *self._res_conns, self._wake_r, self._wake_w]:
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        for proc in self._procs:
            with contextlib.suppress(ValueError):
                proc.close()
        with self._lock:
            self._wake_waiters()
        log.info("miner_pool_closed", total_hashes=self.total_hashes())

    def __enter__(self) -> MinerPool:
        if self._state == "new":
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- jobs

    def submit_job(self, job_id: int, header76: bytes, target: int) -> None:
        """Replace the current job; every worker switches to it within a few ms.

        `header76` is the 80-byte header without its trailing 4-byte nonce. Results of
        earlier submissions (even with the same job_id) are discarded from now on.
        """
        if len(header76) != PREFIX_SIZE:
            raise ValueError(f"header76 must be {PREFIX_SIZE} bytes, got {len(header76)}")
        header76 = bytes(header76)
        with self._lock:
            self._require_running()
            gen = self._next_generation()
            self._job_gen = gen
            self._job_id = job_id
            self._pending[gen] = _PendingSwitch(time.monotonic(), {})
            # Workers that skip a generation (superseded before they saw it) never complete
            # its entry; bound the leftovers.
            for old in [g for g in self._pending if g < gen - 64]:
                del self._pending[old]
            self._broadcast(
                [("job", gen, job_id, header76, target, lo, hi) for lo, hi in self._ranges], gen
            )
        log.debug("miner_job_submitted", job_id=job_id, generation=gen)

    def clear_job(self) -> None:
        """Stop hashing; workers idle (blocked on their pipes) until the next job."""
        with self._lock:
            self._require_running()
            gen = self._next_generation()
            self._job_gen = gen
            self._job_id = None
            self._broadcast([("clear", gen)] * self._processes, gen)
        log.debug("miner_job_cleared", generation=gen)

    def set_hashrate(self, hashrate: float | None) -> None:
        """Cap the total rate across all workers (None = unlimited, 0 = paused)."""
        _check_hashrate(hashrate)
        with self._lock:
            self._hashrate = hashrate
            if self._state == "running":
                msg = ("rate", self._per_worker_rate(hashrate))
                self._broadcast([msg] * self._processes, None)
        log.info("miner_hashrate_set", hashrate=hashrate)

    def _per_worker_rate(self, hashrate: float | None) -> float | None:
        return None if hashrate is None else hashrate / self._processes

    def _require_running(self) -> None:
        if self._error is not None:
            raise self._error
        if self._state != "running":
            raise MinerPoolError(f"miner pool is {self._state}")

    def _next_generation(self) -> int:
        self._gen += 1
        self._exhausted.clear()
        # Nothing queued can belong to the new generation.
        self._results.clear()
        return self._gen

    def _broadcast(self, msgs: Sequence[tuple[Any, ...]], gen: int | None) -> None:
        try:
            for conn, msg in zip(self._job_conns, msgs, strict=True):
                conn.send(msg)
        except OSError as exc:
            self._fail(MinerPoolError(f"miner worker pipe broken: {exc}"))
            raise self._error from exc  # type: ignore[misc]
        if gen is not None:
            # Only after every pipe holds the message, so a worker that sees the new value
            # can always read the job (see _Worker.drain).
            self._generation.value = gen

    # ----------------------------------------------------------------- results

    async def next_result(self) -> MinerResult:
        """Wait for the next Found/Exhausted of the *current* job without blocking the loop.

        Raises MinerPoolError once the pool is closed or a worker has died.
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                result = self._pop_current()
                if result is not None:
                    return result
                if self._error is not None:
                    raise self._error
                if self._state == "closed":
                    raise MinerPoolError("miner pool is closed")
                fut: asyncio.Future[None] = loop.create_future()
                waiter = (loop, fut)
                self._waiters.append(waiter)
            try:
                await fut
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def result_nowait(self) -> MinerResult | None:
        """Non-async variant of `next_result`: the next current result, if any."""
        with self._lock:
            return self._pop_current()

    def _pop_current(self) -> MinerResult | None:
        while self._results:
            gen, result = self._results.popleft()
            if gen == self._job_gen:
                return result
        return None

    def _push(self, gen: int, result: MinerResult) -> None:
        self._results.append((gen, result))
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        for loop, fut in self._waiters:
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(_resolve, fut)
        self._waiters.clear()

    def _fail(self, error: MinerPoolError) -> None:
        if self._error is None:
            self._error = error
        self._ready.set()  # release wait_ready(); it reports the failure
        self._wake_waiters()

    # ----------------------------------------------------------------- reader thread

    def _reader_main(self) -> None:
        assert self._wake_r is not None
        wake_r = self._wake_r
        owners: dict[Connection, int] = {c: i for i, c in enumerate(self._res_conns)}
        next_sample = time.monotonic() + SAMPLE_INTERVAL_S
        while self._state != "closed":
            timeout = max(0.0, next_sample - time.monotonic())
            ready = multiprocessing.connection.wait([*owners, wake_r], timeout)
            for conn in ready:
                if conn is wake_r:
                    with contextlib.suppress(EOFError, OSError):
                        wake_r.recv_bytes()
                    continue
                assert isinstance(conn, Connection)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    wid = owners.pop(conn)
                    if self._state != "closed":
                        self._on_worker_death(wid)
                    continue
                self._on_message(msg)
            now = time.monotonic()
            if now >= next_sample:
                total = self.total_hashes()
                with self._lock:
                    self._samples.append((now, total))
                next_sample = now + SAMPLE_INTERVAL_S

    def _on_worker_death(self, wid: int) -> None:
        proc = self._procs[wid]
        proc.join(0.5)
        log.error("miner_worker_died", worker=wid, pid=proc.pid, exitcode=proc.exitcode)
        with self._lock:
            self._fail(MinerPoolError(f"miner worker {wid} died (exit code {proc.exitcode})"))

    def _on_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        event: dict[str, Any] | None = None
        with self._lock:
            if kind == "started":
                _, wid, gen, started_at = msg
                pending = self._pending.get(gen)
                if pending is not None:
                    pending.started[wid] = started_at
                    if len(pending.started) == self._processes:
                        latency = max(pending.started.values()) - pending.submitted_at
                        self._latencies.append(latency)
                        for g in [g for g in self._pending if g <= gen]:
                            del self._pending[g]
                        event = {
                            "event": "miner_job_started",
                            "generation": gen,
                            "job_id": self._job_id if gen == self._job_gen else None,
                            "latency_ms": round(latency * 1000, 3),
                        }
            elif kind == "found":
                _, wid, gen, job_id, nonce = msg
                if gen == self._job_gen:
                    self._push(gen, Found(job_id, nonce, wid))
                    event = {
                        "event": "miner_found",
                        "job_id": job_id,
                        "nonce": nonce,
                        "worker": wid,
                    }
            elif kind == "exhausted":
                _, wid, gen, job_id = msg
                if gen == self._job_gen:
                    self._exhausted.add(wid)
                    if len(self._exhausted) == self._processes:
                        self._push(gen, Exhausted(job_id))
                        event = {"event": "miner_job_exhausted", "job_id": job_id}
            elif kind == "ready":
                self._ready_count += 1
                if self._ready_count == self._processes:
                    self._ready.set()
        if event is not None:
            name = event.pop("event")
            if name == "miner_job_started":
                log.debug(name, **event)
            else:
                log.info(name, **event)

    # ----------------------------------------------------------------- statistics

    def total_hashes(self) -> int:
        """Hashes done by all workers since start()."""
        counts = self._counts
        return 0 if counts is None else sum(counts)

    def hashrate_measured(self, window: float = 10.0) -> float:
        """Hashes per second over (about) the last `window` seconds.

        Shorter right after start(), when less history exists.
        """
        now = time.monotonic()
        total = self.total_hashes()
        with self._lock:
            samples = list(self._samples)
        base: tuple[float, int] | None = None
        for sample in samples:
            if sample[0] > now - window:
                break
            base = sample
        if base is None:
            if not samples:
                return 0.0
            base = samples[0]
        elapsed = now - base[0]
        return (total - base[1]) / elapsed if elapsed > 0 else 0.0

    def job_switch_latencies(self) -> list[float]:
        """Seconds from each submit_job until every worker reported hashing that job.

        Submissions superseded before all workers started them have no entry.
        """
        with self._lock:
            return list(self._latencies)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _check_hashrate(hashrate: float | None) -> None:
    if hashrate is not None and not hashrate >= 0:  # also rejects NaN
        raise ValueError("hashrate must be >= 0 or None")
