"""The P2P network end to end: real `powlab node` processes on distinct loopback addresses.

Every node binds its own address (A.B.C.2, A.B.C.3, ... in this run's loopback range,
tests/subnets.py) and a port picked per test, so
bans and peer tables that work by host see distinct hosts, as on a real network.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lab.client import RPCError
from lab.testnet.processes import NodeProcess
from tests import subnets
from tests.daemon_harness import wait_for

pytestmark = pytest.mark.slow

MATURITY = 100
PORT_RANGE = (20_000, 32_000)  # below Linux's ephemeral range, so outgoing sockets never take it


# ----------------------------------------------------------------------------------- helpers


def free_port(host: str) -> int:
    """A port free for both TCP and UDP on `host` (the node binds both to the same number)."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            try:
                tcp.bind((host, port))
                udp.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on {host}")


def host_of(index: int) -> str:
    return subnets.host(index, subnets.P2P_TESTS)


class Net:
    """The nodes of one test; kills every one of them on exit, whatever happened."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes: list[NodeProcess] = []

    def make(self, name: str, host: str, *args: str) -> tuple[NodeProcess, str]:
        """A node (not yet started) bound to `host` and a fresh port; returns it and its
        HOST:PORT."""
        addr = f"{host}:{free_port(host)}"
        node = NodeProcess(self.base / name, args=["--p2p-bind", addr, *args])
        self.nodes.append(node)
        return node, addr

    def start(self, *nodes: NodeProcess) -> None:
        """Start several nodes at once (they boot in parallel), then wait for each RPC."""
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()

    def close(self) -> None:
        for node in self.nodes:
            node.ensure_dead()


@contextlib.contextmanager
def network(base: Path) -> Iterator[Net]:
    net = Net(base)
    try:
        yield net
    except BaseException:
        for node in net.nodes:
            if node.proc is not None:
                print(f"--- {node.datadir.name} log tail ---\n{node.log_tail(15)}")
        raise
    finally:
        net.close()


def peers(node: NodeProcess, established: bool = True) -> list[dict[str, Any]]:
    info: list[dict[str, Any]] = node.rpc("getpeerinfo")
    return [p for p in info if not established or p["status"] == "established"]


def peer_addrs(node: NodeProcess) -> set[str]:
    return {p["addr"] for p in peers(node)}


def stays(predicate: Callable[[], bool], duration: float, what: str) -> None:
    """Assert `predicate` holds on every poll for `duration` seconds (a 'never happens' check)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(0.2)


def tips(nodes: Sequence[NodeProcess]) -> list[str]:
    return [n.rpc("getbestblockhash") for n in nodes]


def mempools(nodes: Sequence[NodeProcess]) -> list[list[str]]:
    return [sorted(n.rpc("getrawmempool")) for n in nodes]


def converged(nodes: Sequence[NodeProcess]) -> bool:
    return len(set(tips(nodes))) == 1 and all(
        m == mempools(nodes[:1])[0] for m in mempools(nodes)
    )


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run blocking calls (RPCs to different nodes) at the same time; re-raise any failure."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            results[i] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def mine_burst(node: NodeProcess, count: int, address: str) -> int:
    """`count` generatetoaddress calls of one block each, while other miners race this one;
    returns how many of our blocks landed on a side branch (a peer's block won the race)."""
    stale = 0
    for _ in range(count):
        try:
            node.rpc("generatetoaddress", 1, address)
        except RPCError as exc:
            # Miner.generate refuses a solved block that lost the race to a relayed one.
            if "side-branch" not in exc.message:
                raise
            stale += 1
    return stale


# ----------------------------------------------------------------------------------- a line


class Line:
    """Six nodes in a line, node i `--connect`ing to node i-1; two halves [0,1,2] and [3,4,5]."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.nodes: list[NodeProcess] = []
        self.addrs: list[str] = []
        for i in range(6):
            # Node 0 connects to nobody and must not dial what gossip tells it either, or the
            # line would turn into a star around it.
            # Alerts on: after the split heals, the losing spend reaches the winning half as
            # proof of the double spend, so every node can report it conflicted.
            args = ["--miner-processes", "1", "--double-spend-alerts"]
            args += ["--connect", self.addrs[i - 1]] if i else ["--max-outbound", "0"]
            node, addr = net.make(f"line{i}", host_of(i), *args)
            self.nodes.append(node)
            self.addrs.append(addr)
        net.start(*self.nodes)
        self.wait_linked()
        self.wallet = [n.rpc("getnewaddress") for n in self.nodes]

    def wait_linked(self, timeout: float = 40) -> None:
        def linked() -> bool:
            for i, node in enumerate(self.nodes):
                want = {self.addrs[j] for j in (i - 1, i + 1) if 0 <= j < len(self.nodes)}
                if not want <= peer_addrs(node):
                    return False
            return True

        self.wait(linked, timeout, "every node of the line linked to its neighbours")

    def wait_converged(self, timeout: float = 60) -> str:
        try:
            wait_for(lambda: converged(self.nodes), timeout, "one tip and one mempool everywhere")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None
        return str(self.nodes[0].rpc("getbestblockhash"))

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        """`wait_for`, describing every node when it times out."""
        try:
            wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def describe(self) -> str:
        """Height, tip, mempool and peers of every node, for failure messages."""
        lines = []
        for i, node in enumerate(self.nodes):
            info = node.rpc("getpeerinfo")
            tip = node.rpc("getbestblockhash")[:12]
            lines.append(
                f"node{i}: height {node.rpc('getblockcount')} tip {tip}"
                f" mempool {[t[:8] for t in node.rpc('getrawmempool')]} peers "
                + ", ".join(f"{p['addr']}/{p['status']}/h{p['height']}" for p in info)
            )
        return "\n".join(lines)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    with network(tmp_path_factory.mktemp("line")) as net:
        line = Line(net)
        first, *_ = line.nodes
        # Mature coins for the wallets of nodes 0, 2 and 4 (each mined into its own address by
        # node 0), then maturity; everyone must follow node 0 through five hops.
        for i in (2, 4, 0, 0, 0):
            first.rpc("generatetoaddress", 2, line.wallet[i])
        first.rpc("generatetoaddress", MATURITY, line.wallet[0])
        line.wait_converged()
        assert first.rpc("getblockcount") == 10 + MATURITY
        yield line


# ----------------------------------------------------------------------------------- tests


def test_line_of_six_with_two_miners_converges(line: Line) -> None:
    nodes = line.nodes
    start_height = nodes[0].rpc("getblockcount")

    # Transactions from three different nodes reach all six mempools through the line.
    sent = sorted(
        [
            nodes[0].rpc("sendtoaddress", line.wallet[5], 1_000_000),
            nodes[2].rpc("sendtoaddress", line.wallet[3], 2_000_000),
            nodes[4].rpc("sendtoaddress", line.wallet[1], 3_000_000),
        ]
    )
    wait_for(lambda: all(m == sent for m in mempools(nodes)), 30, "the same mempool on all six")

    # Two miners at the ends of the line race each other (forks are expected), continuously
    # and in bursts at the same time.
    for i in (1, 4):
        nodes[i].rpc("setmining", True, 4)
    try:
        wait_for(
            lambda: min(n.rpc("getblockcount") for n in nodes) >= start_height + 6,
            60,
            "continuous mining to advance every node",
        )
        # Bursts at both ends of the line on top of the continuous miners.
        in_parallel(
            lambda: mine_burst(nodes[0], 5, line.wallet[0]),
            lambda: mine_burst(nodes[5], 5, line.wallet[5]),
        )
    finally:
        for i in (1, 4):
            nodes[i].rpc("setmining", False)
    # Branches of equal work may survive the race (each node keeps the one it saw first, as in
    # Bitcoin); one more block on top of one of them breaks the tie for everyone.
    nodes[2].rpc("generatetoaddress", 1, line.wallet[2])
    tip = line.wait_converged()

    height = nodes[0].rpc("getblockcount")
    assert height >= start_height + 6
    assert all(n.rpc("getblockcount") == height for n in nodes)
    assert nodes[5].rpc("getrawmempool") == []
    for txid in sent:
        for node in (nodes[0], nodes[5]):
            status = node.rpc("gettransaction", txid)
            assert status["status"] in ("confirmed", "final"), status
            assert status["confirmations"] >= 1
    # Every node has the tip as its active chain tip.
    for node in nodes:
        active = [t for t in node.rpc("getchaintips") if t["status"] == "active"]
        assert [t["hash"] for t in active] == [tip]


def test_every_peer_on_the_line_pushes_blocks_to_its_neighbours(line: Line) -> None:
    # At most three high-bandwidth peers (BIP152): on a line every node has two at most, so
    # each asks both neighbours to push and pushes to both, as before bandwidth modes.
    nodes = line.nodes
    line.wait_converged()
    for node in nodes:
        rows = peers(node)
        assert rows and all(p["bip152_hb_from"] and p["bip152_hb_to"] for p in rows), rows
    block = nodes[0].rpc("generatetoaddress", 1, line.wallet[0])[0]
    line.wait(lambda: all(n.rpc("getbestblockhash") == block for n in nodes), 30,
              "the block at the far end of the line")
    # Relayed ahead of validation along the way: valid, so nobody was penalised for it.
    reasons = {x["reason"] for n in nodes for p in peers(n) for x in p["penalties"]}
    assert "invalid-block" not in reasons


def test_partition_both_halves_mine_then_heal(line: Line) -> None:
    nodes = line.nodes
    left, right = nodes[:3], nodes[3:]
    host2, host3 = host_of(2), host_of(3)
    line.wait_converged()
    fork_height = nodes[0].rpc("getblockcount")

    # The coin both halves will see spent differently: a mature coinbase of node 0's wallet.
    coin = next(
        u for u in nodes[0].rpc("listunspent", 1) if u["coinbase"] and u["spendable"]
    )
    spend = [{"txid": coin["txid"], "vout": coin["vout"]}]

    def double_spend(payee: str, fee: int) -> str:
        raw = nodes[0].rpc("createrawtransaction", spend, {payee: coin["amount"] - fee})
        signed = nodes[0].rpc("signrawtransactionwithwallet", raw)
        assert signed["complete"]
        return str(signed["hex"])

    pay_left = double_spend(line.wallet[1], 10_000)
    pay_right = double_spend(line.wallet[4], 20_000)

    # Split: each boundary node bans the other's host, which also disconnects them.
    nodes[2].rpc("setban", host3, "add", 3600)
    nodes[3].rpc("setban", host2, "add", 3600)
    line.wait(
        lambda: peer_addrs(nodes[2]) == {line.addrs[1]} and peer_addrs(nodes[3]) == {line.addrs[4]},
        20,
        "the boundary link to drop",
    )
    assert {b["address"] for b in nodes[2].rpc("listbanned")} == {host3}

    # During the split each half gets one side of the double spend and one ordinary payment.
    txid_left = nodes[1].rpc("sendrawtransaction", pay_left)
    txid_right = nodes[4].rpc("sendrawtransaction", pay_right)
    plain_left = nodes[2].rpc("sendtoaddress", line.wallet[0], 4_000_000)
    plain_right = nodes[4].rpc("sendtoaddress", line.wallet[5], 5_000_000)
    line.wait(
        lambda: all(m == sorted([txid_left, plain_left]) for m in mempools(left))
        and all(m == sorted([txid_right, plain_right]) for m in mempools(right)),
        30,
        "each half to share its own mempool",
    )

    # Both halves mine; the right one mines more, so it holds the most work.
    nodes[0].rpc("generatetoaddress", 2, line.wallet[0])
    nodes[5].rpc("generatetoaddress", 4, line.wallet[5])
    line.wait(
        lambda: len(set(tips(left))) == 1 and len(set(tips(right))) == 1
        and all(n.rpc("getblockcount") == fork_height + 2 for n in left)
        and all(n.rpc("getblockcount") == fork_height + 4 for n in right),
        30,
        "each half to agree on its own branch",
    )
    assert tips(left)[0] != tips(right)[0]
    assert nodes[0].rpc("gettransaction", txid_left)["status"] == "confirmed"
    assert nodes[5].rpc("gettransaction", txid_right)["status"] == "confirmed"
    winning_tip = tips(right)[0]

    # Heal: lift the bans and dial across the boundary again.
    nodes[2].rpc("clearbanned")
    nodes[3].rpc("clearbanned")
    assert nodes[2].rpc("listbanned") == []
    nodes[3].rpc("addnode", line.addrs[2], "onetry")
    line.wait_linked()

    line.wait(lambda: set(tips(nodes)) == {winning_tip}, 60, "all six on the most-work chain")
    for node in nodes:
        assert node.rpc("getblockcount") == fork_height + 4

    # The nodes of the losing half put its ordinary payment back in their mempools, and know
    # that its double spend lost to one buried 4 blocks deep.
    line.wait(
        lambda: all(m == [plain_left] for m in mempools(left)),
        30,
        "the losing branch's non-conflicting payment back in the losing half's mempools",
    )
    for node in left:
        status = node.rpc("gettransaction", txid_left)
        assert status["status"] == "conflicted", (node.datadir.name, status)
        assert status["confirmations"] == -4
        assert status["conflicts"] == [txid_right]
    for node in nodes:
        status = node.rpc("gettransaction", txid_right)
        assert status["status"] == "confirmed" and status["confirmations"] == 4
        assert status["blockheight"] == fork_height + 1

    # Every node, winners included, ends up with the same: the payment in its mempool and the
    # losing spend reported conflicted (the winners learn it from the alert).
    def gaps() -> list[str]:
        found = []
        for i, node in enumerate(nodes):
            if plain_left not in node.rpc("getrawmempool"):
                found.append(f"node{i} lacks the returned payment")
            status = node.rpc("gettransaction", txid_left)
            if status["status"] != "conflicted" or status["confirmations"] >= 0:
                found.append(f"node{i} reports the losing spend {status['status']}")
        return found

    with contextlib.suppress(AssertionError):
        wait_for(lambda: not gaps(), 20, "the winning half to learn the losing half's txs")
    missing = gaps()

    # The healed network works as one: a block on the losing side's end confirms the
    # returned payment everywhere.
    nodes[0].rpc("generatetoaddress", 1, line.wallet[0])
    line.wait_converged()
    assert nodes[5].rpc("gettransaction", plain_left)["status"] == "confirmed"
    assert nodes[5].rpc("getrawmempool") == []

    assert not missing, missing


def test_fresh_node_syncs_two_thousand_blocks(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        source, source_addr = net.make("source", host_of(0))
        net.start(source)
        payout = source.rpc("getnewaddress")
        source.rpc("generatetoaddress", 2000, payout, timeout=300)
        tip = source.rpc("getbestblockhash")

        fresh, _ = net.make("fresh", host_of(1), "--connect", source_addr)
        started = time.monotonic()
        net.start(fresh)
        wait_for(lambda: fresh.rpc("getbestblockhash") == tip, 240, "the fresh node to sync")
        elapsed = time.monotonic() - started
        assert fresh.rpc("getblockcount") == 2000
        assert fresh.rpc("getblockhash", 1000) == source.rpc("getblockhash", 1000)
        print(f"synced 2000 blocks in {elapsed:.1f}s")


def test_connect_talks_only_to_that_peer(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        hub, hub_addr = net.make("hub", host_of(0))
        other, other_addr = net.make("other", host_of(1), "--connect", hub_addr)
        only, only_addr = net.make("only", host_of(2), "--connect", hub_addr)
        net.start(hub)
        net.start(other, only)
        # The hub knows both and would tell anyone who asks for addresses.
        wait_for(lambda: peer_addrs(hub) == {other_addr, only_addr}, 30, "hub has both peers")
        # Longer than a ping interval and many dial rounds: `only` never dials `other`.
        stays(lambda: peer_addrs(only) == {hub_addr}, 7, "`only` having just the hub")
        assert [p["addr"] for p in only.rpc("getpeerinfo")] == [hub_addr]
        assert only.rpc("getconnectioncount") == 1

        # Control: a node that is not connect-only does learn `other` by gossip and dials it.
        roamer, _ = net.make("roamer", host_of(3), "--addnode", hub_addr)
        net.start(roamer)
        wait_for(lambda: other_addr in peer_addrs(roamer), 40, "gossip to lead roamer to other")
        outbound = [p["addr"] for p in peers(only) if not p["inbound"]]
        assert outbound == [hub_addr]


def test_no_listen_accepts_no_inbound_but_dials_out(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        hub, hub_addr = net.make("hub", host_of(0))
        quiet, _ = net.make("quiet", host_of(1), "--no-listen", "--connect", hub_addr)
        caller, _ = net.make("caller", host_of(2))
        net.start(hub, caller)
        net.start(quiet)
        quiet_addr = quiet.rpc("getnetworkinfo")["p2p"]
        assert quiet_addr.startswith(host_of(1) + ":")

        wait_for(lambda: peer_addrs(quiet) == {hub_addr}, 30, "quiet's outbound link")
        payout = hub.rpc("getnewaddress")
        hub.rpc("generatetoaddress", 3, payout)
        wait_for(lambda: quiet.rpc("getblockcount") == 3, 30, "quiet to sync over its outbound")

        caller.rpc("addnode", quiet_addr, "onetry")
        stays(
            lambda: quiet_addr not in peer_addrs(caller) and peer_addrs(quiet) == {hub_addr},
            6,
            "no inbound link to the --no-listen node",
        )
        assert all(not p["inbound"] for p in quiet.rpc("getpeerinfo"))
        # The hub never advertises the quiet node: it told nobody a port to dial.
        assert quiet.rpc("getconnectioncount") == 1


def test_allowlist_refuses_others(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        friend, friend_addr = net.make("friend", host_of(0))
        stranger, stranger_addr = net.make("stranger", host_of(1))
        net.start(friend, stranger)
        friend_id = friend.rpc("getnetworkinfo")["node_id"]
        guarded, guarded_addr = net.make("guarded", host_of(2), "--allow-peer", friend_id)
        net.start(guarded)

        stranger.rpc("addnode", guarded_addr, "onetry")
        friend.rpc("addnode", guarded_addr, "onetry")
        wait_for(lambda: peer_addrs(guarded) == {friend_addr}, 30, "the allowed peer to connect")
        assert [p["node_id"] for p in peers(guarded)] == [friend_id]
        assert guarded_addr in peer_addrs(friend)

        # The stranger keeps trying (addnode add redials) and is refused every time.
        stranger.rpc("addnode", guarded_addr, "add")
        stays(
            lambda: guarded_addr not in peer_addrs(stranger)
            and stranger_addr not in peer_addrs(guarded),
            6,
            "the stranger refused",
        )
        assert guarded.rpc("getconnectioncount") == 1


def test_connect_pins_the_identity_the_peer_must_prove(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        target, target_addr = net.make("target", host_of(0))
        net.start(target)
        target_id = target.rpc("getnetworkinfo")["node_id"]
        wrong_id = "ab" * 32
        pinned, _ = net.make("pinned", host_of(1), "--connect", f"{target_id}@{target_addr}")
        impostor_check, _ = net.make(
            "mispinned", host_of(2), "--connect", f"{wrong_id}@{target_addr}"
        )
        net.start(pinned, impostor_check)

        wait_for(lambda: peer_addrs(pinned) == {target_addr}, 30, "the pinned peer to connect")
        (row,) = peers(pinned)
        assert row["node_id"] == target_id
        session = row["session"]
        assert session["cipher"] == "Noise_XX_25519_ChaChaPoly_SHA256"
        assert session["state"] == "established" and session["auth_failures"] == 0
        # The same address under another pinned id: the handshake proves target's identity,
        # which is not the one asked for, so nothing is established, however often it redials.
        stays(lambda: peers(impostor_check) == [], 4, "no link to a peer with another identity")
        assert len(peers(target)) == 1


def test_the_address_book_survives_a_restart(tmp_path: Path) -> None:
    """peers.json (Bitcoin Core's peers.dat): a restarted node still knows, and dials, the
    addresses it had learnt; `getnodeaddresses` shows them."""
    with network(tmp_path) as net:
        hub, hub_addr = net.make("hub", host_of(0))
        other, other_addr = net.make("other", host_of(1), "--addnode", hub_addr)
        net.start(hub)
        net.start(other)
        roamer, _ = net.make("roamer", host_of(2), "--max-outbound", "0")
        net.start(roamer)
        roamer.rpc("addnode", hub_addr, "onetry")

        def known(node: NodeProcess) -> set[str]:
            return {f"{a['address']}:{a['port']}" for a in node.rpc("getnodeaddresses", 0)}

        wait_for(lambda: {hub_addr, other_addr} <= known(roamer), 30, "roamer to learn both")
        roamer.stop()
        # Restarted with no peer on its command line, and free to dial: it goes by its book.
        roamer.args = [a for a in roamer.args if a not in ("--max-outbound", "0")]
        net.start(roamer)
        assert {hub_addr, other_addr} <= known(roamer)
        wait_for(lambda: peer_addrs(roamer) == {hub_addr, other_addr}, 40,
                 "roamer to dial the addresses it remembered")
