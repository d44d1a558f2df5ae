"""A full disk under a paying node: its datadir on an 8 MiB tmpfs, a peer on the ordinary
disk watching what goes out. Nothing reported as failed goes out, nothing reported as sent is
lost, a store that fills stops the node cleanly (runtime files gone, one clear line, the
blocks committed before the failure named), and a restart after freeing space resubmits."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus.params import REGTEST
from lab.client import RPCError
from lab.testnet.processes import NodeProcess
from node.rpc.errors import RPC_WALLET_ERROR
from tests import subnets
from tests.daemon_harness import wait_for
from tests.helpers import key

pytestmark = pytest.mark.slow

DISK_SIZE = "8m"
PIECE = 16 * 1024  # filler file size
PAGE = 4096  # then pages, down to a disk that has no room for even a small file
PAYMENTS = 48  # attempted while the disk is full or has room, at random (more often full)
ROOM = 64 * 1024  # freed to make room for wallet writes (a journal append, a new wallet.dat)
RUNTIME_FILES = (".cookie", "rpc.url", "p2p.addr")


@contextlib.contextmanager
def small_disk(mountpoint: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


class Filler:
    """Fills the disk with small files, down to the last page, so that freeing some makes a
    measured room."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self.pieces: list[tuple[Path, int]] = []

    def fill(self) -> None:
        for size in (PIECE, PAGE):
            while self._add(size):
                pass

    def _add(self, size: int) -> bool:
        path = self.directory / f"{len(self.pieces)}.fill"
        try:
            with open(path, "wb") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        self.pieces.append((path, size))
        return True

    def free(self, size: int) -> None:
        freed = 0
        while freed < size and self.pieces:
            path, piece = self.pieces.pop()
            path.unlink()
            freed += piece

    def free_all(self) -> None:
        self.free(sum(size for _, size in self.pieces))


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_disk_full_while_paying(tmp_path: Path) -> None:
    rng = random.Random(28)
    with small_disk(tmp_path / "disk") as disk:
        host_a = subnets.host(0, subnets.WALLET_DISK_FULL)
        host_b = subnets.host(1, subnets.WALLET_DISK_FULL)
        port = free_port(host_b)
        watcher = NodeProcess(tmp_path / "watcher", args=["--p2p-bind", f"{host_b}:{port}"])
        payer = NodeProcess(
            disk / "payer",
            log=tmp_path / "payer.log",
            args=["--p2p-bind", f"{host_a}:{port}", "--connect", f"{host_b}:{port}"],
        )
        filler = Filler(disk / "filler")
        try:
            watcher.start()
            payer.start()
            wait_for(lambda: watcher.rpc("getconnectioncount") == 1, 30, "peers")
            payer.rpc(
                "generatetoaddress", REGTEST.coinbase_maturity + 60, payer.rpc("getnewaddress")
            )
            height = payer.rpc("getblockcount")
            wait_for(lambda: watcher.rpc("getblockcount") == height, 60, "sync")
            payees = [key(6).address(REGTEST.address_prefix), payer.rpc("getnewaddress")]

            # Payments while the disk is full, or has room for a wallet write, at random.
            sent: list[str] = []
            failed = 0
            filler.fill()
            for n in range(PAYMENTS):
                if rng.random() < 0.25:
                    filler.free(ROOM)
                else:
                    filler.fill()
                before = len(payer.rpc("getrawmempool"))
                try:
                    sent.append(payer.rpc("sendtoaddress", payees[n % 2], 10_000 + n))
                except RPCError as exc:
                    assert exc.code == RPC_WALLET_ERROR, exc
                    assert "nothing was sent" in exc.message and "No space left" in exc.message
                    failed += 1
                    assert len(payer.rpc("getrawmempool")) == before
            assert sent and failed, (len(sent), failed)
            print(f"disk full: {len(sent)} payments sent, {failed} refused with nothing sent")
            # What was reported sent went out, and only that.
            wait_for(lambda: set(watcher.rpc("getrawmempool")) == set(sent), 30, "relay")
            assert set(payer.rpc("getrawmempool")) == set(sent)

            # A stop on the full disk: the mempool cannot be saved, the runtime files go.
            filler.fill()
            assert payer.stop() == 1
            last_line = (tmp_path / "payer.log").read_text().strip().splitlines()[-1]
            assert last_line.startswith("powlab node: stopped, could not save"), last_line
            assert "mempool ([Errno 28] No space left on device)" in last_line
            for name in RUNTIME_FILES:
                assert not (payer.datadir / name).exists(), name

            # Space again: a clean start resubmits what the mempool file does not hold.
            filler.free_all()
            payer.start()
            assert set(payer.rpc("getrawmempool")) == set(sent)
            assert payer.rpc("getblockchaininfo")["warnings"] == ""

            # The store fills: the node stops itself, saying which blocks it committed.
            filler.fill()
            miner = key(7).address(REGTEST.address_prefix)
            error = None
            for _ in range(200):
                try:
                    payer.rpc("generatetoaddress", 5, miner)
                except RPCError as exc:
                    error = exc
                    break
                filler.fill()
            assert error is not None, "the store never filled"
            assert "blocks were committed before a failure" in error.message
            committed = error.data["committed"]
            assert error.message.startswith(f"{len(committed)} of 5 ")
            assert payer.proc is not None
            assert payer.proc.wait(60) == 1
            log = (tmp_path / "payer.log").read_text()
            assert "store_write_failed" in log
            last_line = log.strip().splitlines()[-1]
            assert last_line.startswith("powlab node: stopped: could not write the block store")
            assert "could not save" in last_line and "mempool" in last_line
            for name in RUNTIME_FILES:
                assert not (payer.datadir / name).exists(), name

            # Space again: the store holds every block the error named.
            filler.free_all()
            payer.start()
            for block_hash in committed:
                assert payer.rpc("getblock", block_hash)["confirmations"] >= 1
            wait_for(lambda: watcher.rpc("getconnectioncount") == 1, 30, "peers again")
            # The block whose commit failed had been relayed already (relay precedes commit):
            # the payer fetches it back from the watcher before mining on.
            wait_for(
                lambda: payer.rpc("getbestblockhash") == watcher.rpc("getbestblockhash"),
                30,
                "the payer to catch up with the watcher",
            )
            payer.rpc("generatetoaddress", 1, miner)
            for txid in sent:
                assert payer.rpc("gettransaction", txid)["status"] in ("confirmed", "final")
            assert payer.rpc("getrawmempool") == []
            assert payer.stop() == 0
            for name in RUNTIME_FILES:
                assert not (payer.datadir / name).exists(), name
        finally:
            payer.ensure_dead()
            watcher.ensure_dead()
