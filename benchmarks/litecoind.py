"""Debian's `litecoind` (0.21.2.1) as the benchmarks' reference: one regtest node process, a
line of them on loopback, its log's tip changes, and the keys and raw transactions the
transaction benchmarks spend.

Nothing here talks to the outside: every node binds one 127.x address, connects only to the
addresses given, and runs with DNS seeds, discovery, onion and UPnP off.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench_p2p import KeepAliveRPC, parse_iso

from lab.waiting import wait_until

LITECOIND = "litecoind"
RPC_USER, RPC_PASSWORD = "bench", "bench"
# A regtest P2PKH address (version byte 111, shared with Bitcoin's testnet); nobody spends it.
LTC_ADDRESS = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"
UPDATE_TIP = re.compile(rb"^(\S+) UpdateTip: new best=([0-9a-f]{64}) height=(\d+)")
LOOPBACK = "127.0.0.0/8"
MWEB_HEIGHT = 431  # the last regtest block before MWEB activation
COINBASE_MATURITY = 100
# Each funded output, and the fee its spend pays: far above the 1 sat/vB relay minimum for a
# one-input, one-output transaction (about 110 vB for the wallet's bech32 keys).
OUTPUT_VALUE = Decimal("0.01")
SPEND_FEE = Decimal("0.00001")
# Fan-outs made before a block confirms them: well under the 25-ancestor chain limit that
# the wallet's unconfirmed change would otherwise hit.
FANOUTS_PER_BLOCK = 10


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LitecoinNode:
    datadir: Path
    host: str
    connect: list[str] = field(default_factory=list)
    wallet: bool = False
    # `-whitelist=noban,relay@127.0.0.0/8`: lifts litecoind's transaction trickle (an inv to an
    # inbound peer on average every 5 s, at most 35 txids each) and its in-flight request
    # throttle, which otherwise cap relay at about 7 transactions per second per link. All of
    # loopback, not the node's range: a connection's source address is 127.0.0.1, whatever
    # address its node binds.
    noban: bool = False
    port: int = 0
    onion_port: int = 0
    rpc_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    client: KeepAliveRPC | None = None
    connected: dict[str, float] = field(default_factory=dict)
    heights: dict[int, float] = field(default_factory=dict)
    _offset: int = 0
    _partial: bytes = b""

    @property
    def p2p_addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}/"

    @property
    def log_path(self) -> Path:
        return self.datadir / "regtest" / "debug.log"

    def command(self) -> list[str]:
        return [
            LITECOIND, "-regtest", f"-datadir={self.datadir}",
            f"-bind={self.host}:{self.port}",
            # Without an explicit onion bind every node would take 127.0.0.1:<default port>.
            f"-bind={self.host}:{self.onion_port}=onion",
            "-listen=1", "-listenonion=0", "-dnsseed=0", "-discover=0", "-upnp=0",
            "-server=1", f"-rpcbind=127.0.0.1:{self.rpc_port}", f"-rpcport={self.rpc_port}",
            "-rpcallowip=127.0.0.1", f"-rpcuser={RPC_USER}", f"-rpcpassword={RPC_PASSWORD}",
            *(["-fallbackfee=0.0001"] if self.wallet else ["-disablewallet"]),
            *([f"-whitelist=noban,relay@{LOOPBACK}"] if self.noban else []),
            "-logtimemicros", "-printtoconsole=0",
            *(f"-connect={c}" for c in self.connect),
        ]

    def start(self) -> LitecoinNode:
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self.onion_port = free_port(self.host)
        self.rpc_port = free_port("127.0.0.1")
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"litecoind exited with {self.proc.returncode}: {err}")
            client = KeepAliveRPC(self.url, (RPC_USER, RPC_PASSWORD))
            try:
                client.call("getblockcount")
            except (OSError, RuntimeError, ValueError):
                client.close()
                return False
            self.client = client
            return True

        wait_until(ready, timeout, "litecoind's RPC", interval=0.1, error=RuntimeError)

    def new_client(self) -> KeepAliveRPC:
        """A second connection, for a thread of its own."""
        return KeepAliveRPC(self.url, (RPC_USER, RPC_PASSWORD))

    def call(self, method: str, *params: object) -> Any:
        assert self.client is not None
        return self.client.call(method, *params)

    def poll_log(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            match = UPDATE_TIP.match(line)
            if match:
                at = parse_iso(match.group(1).decode())
                self.connected[match.group(2).decode()] = at
                self.heights[int(match.group(3))] = at

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.call("stop")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.client is not None:
            self.client.close()


@contextlib.contextmanager
def litecoin_line(
    workdir: Path, count: int, subnet: str, wallet: bool = False, noban: bool = False,
    tag: str = "ltc-line",
) -> Iterator[list[LitecoinNode]]:
    """`count` nodes on SUBNET.2, SUBNET.3, …, node i `-connect`ing to node i-1 only; node 0
    has a wallet when asked. Every process is stopped on the way out, however it is left."""
    nodes: list[LitecoinNode] = []
    try:
        for i in range(count):
            node = LitecoinNode(workdir / f"{tag}-{i}", f"{subnet}.{2 + i}",
                                [nodes[i - 1].p2p_addr] if i else [], wallet=wallet and i == 0,
                                noban=noban)
            nodes.append(node)  # before start(): a node that fails to come up is stopped too
            node.start()
        for i, node in enumerate(nodes):
            want = 1 if i in (0, count - 1) else 2
            wait_until(lambda n=node, w=want: n.call("getconnectioncount") >= w, 60,
                       f"litecoind {i} connections", interval=0.02, error=RuntimeError)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def ltc_wait_block(nodes: Sequence[LitecoinNode], block_hash: str, timeout: float) -> None:
    def everywhere() -> bool:
        for node in nodes:
            node.poll_log()
        return all(block_hash in n.connected for n in nodes)

    wait_until(everywhere, timeout, f"block {block_hash[:16]} everywhere", interval=0.02,
               error=RuntimeError)


def ltc_wait_height(nodes: Sequence[LitecoinNode], height: int, timeout: float) -> None:
    for i, node in enumerate(nodes):
        wait_until(lambda n=node: n.call("getblockcount") >= height, timeout,
                   f"litecoind {i} at height {height}", interval=0.05, error=RuntimeError)


def _address_of(script: dict[str, Any]) -> str:
    # 0.21 lists `addresses`; later versions give one `address`.
    return str(script.get("address") or (script.get("addresses") or [""])[0])


@dataclass(frozen=True)
class Coin:
    """One funded output and the key that spends it."""

    txid: str
    vout: int
    wif: str


@dataclass
class LtcWallet:
    """Node 0's wallet keys (`getnewaddress` + `dumpprivkey`) and the fan-outs paying them."""

    node: LitecoinNode
    addresses: list[str] = field(default_factory=list)
    wifs: dict[str, str] = field(default_factory=dict)

    def make_keys(self, count: int) -> None:
        assert self.node.client is not None
        self.addresses = self.node.client.batch([("getnewaddress", [])] * count)
        wifs = self.node.client.batch([("dumpprivkey", [a]) for a in self.addresses])
        self.wifs = dict(zip(self.addresses, wifs, strict=True))

    def mine_coinbases(self, count: int) -> None:
        """`count` spendable coinbases (plus maturity), staying below the MWEB height."""
        height = self.node.call("getblockcount") + count + COINBASE_MATURITY
        if height >= MWEB_HEIGHT:
            raise RuntimeError(f"litecoind regtest would reach height {height}: past "
                               f"{MWEB_HEIGHT} it needs an MWEB peg-in; use fewer transactions")
        own = self.node.call("getnewaddress")
        self.node.call("generatetoaddress", count, own)
        self.node.call("generatetoaddress", COINBASE_MATURITY, LTC_ADDRESS)

    def fan_outs(self, count: int, width: int) -> list[list[Coin]]:
        """`count` `sendmany`s to the first `width` keys, mined; the coins of each."""
        if count == 0:
            return []
        payees = {a: str(OUTPUT_VALUE) for a in self.addresses[:width]}
        batches: list[list[Coin]] = []
        for n in range(count):
            txid = self.node.call("sendmany", "", payees)
            # Read from the wallet: without -txindex a mined transaction is not served.
            tx = self.node.call("decoderawtransaction",
                                self.node.call("gettransaction", txid)["hex"])
            coins = [
                Coin(txid, out["n"], self.wifs[address])
                for out in tx["vout"]
                if (address := _address_of(out["scriptPubKey"])) in self.wifs
            ]
            # Or the next sendmany's coin selection would spend them.
            self.node.call("lockunspent", False, [{"txid": c.txid, "vout": c.vout}
                                                  for c in coins])
            batches.append(coins)
            if (n + 1) % FANOUTS_PER_BLOCK == 0:
                self.node.call("generatetoaddress", 1, LTC_ADDRESS)
        self.node.call("generatetoaddress", 1, LTC_ADDRESS)
        return batches

    def sign_spends(self, coins: Sequence[Coin], chunk: int = 250) -> list[str]:
        """One raw transaction per coin (`createrawtransaction` +
        `signrawtransactionwithkey`), paying the coin minus the fee to an unspent address."""
        assert self.node.client is not None
        amount = str(OUTPUT_VALUE - SPEND_FEE)
        hexes: list[str] = []
        for i in range(0, len(coins), chunk):
            part = coins[i : i + chunk]
            unsigned = self.node.client.batch([
                ("createrawtransaction", [[{"txid": c.txid, "vout": c.vout}],
                                          {LTC_ADDRESS: amount}])
                for c in part
            ])
            signed = self.node.client.batch([
                ("signrawtransactionwithkey", [u, [c.wif]])
                for u, c in zip(unsigned, part, strict=True)
            ])
            for s in signed:
                if not s.get("complete"):
                    raise RuntimeError(f"signrawtransactionwithkey: {s.get('errors')}")
                hexes.append(s["hex"])
        return hexes
