"""Driving a process testnet over RPC: calls by node, waiting for readiness, connections and
convergence, funding the wallets, starting the miners, partition bans, status rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lab import waiting
from lab.client import (
    CookieError,
    NodeEndpoint,
    RPCAuthError,
    RPCConnectionError,
    RPCError,
    datadir_endpoint,
)
from lab.testnet.manifest import Manifest, NodeEntry, TestnetError, group_index, neighbours
from lab.testnet.nodeconfig import write_node_config
from lab.testnet.processes import NodeProcessError, node_alive, node_process
from lab.testnet.tables import console

FUND_BLOCKS_PER_NODE = 2
# Up to this many nodes every wallet is funded; beyond, the first FUND_LIMIT and the miners.
FUND_ALL_LIMIT = 100
FUND_LIMIT = 16
# Testnets of more nodes than this show progress bars (or lines) while they start.
PROGRESS_FROM = 20
# A partition must outlast any experiment; `heal` lifts it explicitly.
PARTITION_BAN_SECONDS = 10 * 365 * 24 * 3600


def endpoint(entry: NodeEntry) -> NodeEndpoint:
    """The node's URL (as it wrote it, else from the manifest) and its current cookie."""
    return datadir_endpoint(entry.datadir, entry.url)


def call(entry: NodeEntry, method: str, *params: Any, timeout: float = 60) -> Any:
    return endpoint(entry).call(method, *params, timeout=timeout)


def try_call(entry: NodeEntry, method: str, *params: Any, timeout: float = 10) -> Any:
    """Like `call`, but None when the node cannot be reached (it may be restarting)."""
    try:
        return call(entry, method, *params, timeout=timeout)
    except (RPCConnectionError, RPCAuthError, CookieError, OSError):
        return None


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.25) -> Any:
    """lab.waiting's one helper, failing as a TestnetError (reported as one line, not a
    traceback)."""
    return waiting.wait_until(predicate, timeout, what, interval, TestnetError)


# How many nodes are polled at once while waiting (RPC calls are I/O-bound).
POLL_THREADS = 16
Report = Callable[[int], None]


def _poll(items: Sequence[Any], check: Callable[[Any], bool]) -> list[Any]:
    """The items for which `check` is still false, checked POLL_THREADS at a time."""
    if len(items) <= 2:
        return [item for item in items if not check(item)]
    with ThreadPoolExecutor(max_workers=min(POLL_THREADS, len(items))) as pool:
        return [item for item, ok in zip(items, pool.map(check, items), strict=True) if not ok]


def wait_ready(entries: Iterable[NodeEntry], timeout: float, report: Report | None = None) -> None:
    """Until every node answers RPC; `report(n)` is told how many do."""
    pending = [node_process(entry) for entry in entries]
    total = len(pending)

    def ready() -> bool:
        try:
            pending[:] = _poll(pending, lambda node: node.ready())
        except NodeProcessError as exc:
            raise TestnetError(str(exc)) from None
        if report is not None:
            report(total - len(pending))
        return not pending

    wait_until(ready, timeout, "the nodes' RPC servers")


def wait_connected(manifest: Manifest, timeout: float, report: Report | None = None) -> None:
    """Every live node has at least as many established peers as it has live neighbours in
    the topology (partitioned neighbours excluded); `report(n)` is told how many have.
    A node once seen with its peers is not asked again."""
    adj = neighbours(manifest)
    group_of = group_index(manifest)
    live = {e.name for e in manifest.nodes if node_alive(e)}

    def expected(name: str) -> int:
        return sum(1 for other in adj[name]
                   if other in live and group_of.get(other) == group_of.get(name))

    pending = [e for e in manifest.nodes if e.name in live]
    total = len(pending)

    def has_peers(entry: NodeEntry) -> bool:
        count = try_call(entry, "getconnectioncount")
        return count is not None and count >= expected(entry.name)

    def connected() -> bool:
        pending[:] = _poll(pending, has_peers)
        if report is not None:
            report(total - len(pending))
        return not pending

    wait_until(connected, timeout, "the nodes to connect to their neighbours")


def wait_converged(entries: Sequence[NodeEntry], timeout: float,
                   report: Report | None = None) -> str:
    """Until every node reports the same best block; returns its hash. `report(n)` is told
    how many nodes are on the tip most of them have."""
    from collections import Counter

    def same_tip() -> str | None:
        if len(entries) <= 2:
            tips = [try_call(e, "getbestblockhash") for e in entries]
        else:
            with ThreadPoolExecutor(max_workers=min(POLL_THREADS, len(entries))) as pool:
                tips = list(pool.map(lambda e: try_call(e, "getbestblockhash"), entries))
        if report is not None:
            report(Counter(tips).most_common(1)[0][1] if tips else 0)
        if len(set(tips)) == 1:
            return tips[0] or None
        return None

    names = ", ".join(e.name for e in entries[:8]) + (", …" if len(entries) > 8 else "")
    return wait_until(same_tip, timeout, f"{names} to converge")


def hashes_per_block(entry: NodeEntry) -> float:
    """Expected hashes to find a block at the tip's difficulty: 2**256 / (target + 1)."""
    from consensus.pow import bits_to_target

    header = call(entry, "getblockheader", call(entry, "getbestblockhash"))
    target = bits_to_target(int(header["bits"], 16))
    return 2**256 / (target + 1)


def set_mining_rates(manifest: Manifest, funder: NodeEntry) -> None:
    per_block = hashes_per_block(funder)
    total = per_block / manifest.block_time
    for entry in manifest.nodes:
        entry.mining_rate = entry.hashrate_share * total if entry.is_miner else None


def funded_nodes(manifest: Manifest) -> list[NodeEntry]:
    """The nodes whose wallets `fund` gives coins: all of them in a testnet of up to
    FUND_ALL_LIMIT nodes, else the first FUND_LIMIT and the miners (each funded wallet costs
    every node FUND_BLOCKS_PER_NODE more blocks to validate)."""
    if len(manifest.nodes) <= FUND_ALL_LIMIT:
        return list(manifest.nodes)
    return [e for k, e in enumerate(manifest.nodes) if k < FUND_LIMIT or e.is_miner]


def fund(manifest: Manifest, timeout: float, show_progress: bool = True,
         among: Sequence[NodeEntry] | None = None) -> None:
    """A few blocks to each funded node's own wallet (funded_nodes), then enough more that
    they mature, and until every node has them (`among`: only those nodes are up yet)."""
    from consensus.params import network_params
    from lab.testnet.progress import progress

    funder = manifest.nodes[0]
    maturity = network_params(manifest.network).coinbase_maturity
    wallets = funded_nodes(manifest)
    addresses = {e.name: call(e, "getnewaddress") for e in wallets}
    which = ("each node's wallet" if len(wallets) == len(manifest.nodes)
             else f"the wallets of {len(wallets)} nodes ({_names(wallets)})")
    console().print(f"funding: {FUND_BLOCKS_PER_NODE} blocks to {which}, then "
                    f"{maturity} more so they mature (mined on {funder.name})")
    # The maturing blocks are spread too, so every wallet keeps gaining spendable coins as
    # the chain grows.
    base, extra = divmod(maturity, len(wallets))
    batches = [(entry, FUND_BLOCKS_PER_NODE) for entry in wallets]
    batches += [(entry, base + (1 if k < extra else 0)) for k, entry in enumerate(wallets)]
    batches = [(entry, count) for entry, count in batches if count]
    show = show_progress and len(manifest.nodes) > PROGRESS_FROM
    with progress("funding: blocks mined", sum(c for _, c in batches), show) as bar:
        mined = 0
        for entry, count in batches:
            call(funder, "generatetoaddress", count, addresses[entry.name], timeout=600)
            mined += count
            bar.update(mined)
    if among is None:
        converge(manifest.nodes, timeout, show)
    else:
        converge(among, timeout, show, who=f"the {len(among)} nodes up so far")


def converge(entries: Sequence[NodeEntry], timeout: float, show_progress: bool = True,
             who: str | None = None) -> None:
    """Wait until every one of `entries` is on the same tip, and say so."""
    from lab.testnet.progress import progress

    show = show_progress and len(entries) > PROGRESS_FROM
    with progress("nodes on the tip", len(entries), show) as bar:
        tip = wait_converged(entries, timeout, bar.update)
    console().print(f"{who or f'all {len(entries)} nodes'} at {tip[:16]}… "
                    f"(height {call(entries[0], 'getblockcount')})")


def _names(entries: Sequence[NodeEntry]) -> str:
    names = [e.name for e in entries]
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:4])}, …, {names[-1]}"


def start_miners(manifest: Manifest, entries: Iterable[NodeEntry]) -> None:
    for entry in entries:
        if entry.mining_rate is None:
            continue
        call(entry, "setmining", True, entry.mining_rate)
        write_node_config(manifest, entry)


def apply_partition(manifest: Manifest, entries: Iterable[NodeEntry]) -> None:
    group_of = group_index(manifest)
    for entry in entries:
        if not node_alive(entry):
            console().print(f"[yellow]{entry.name} is down; it gets its bans when `up` "
                            "restarts it")
            continue
        for other in manifest.nodes:
            if group_of.get(other.name) != group_of.get(entry.name):
                call(entry, "setban", other.host, "add", PARTITION_BAN_SECONDS)


def clear_bans(manifest: Manifest) -> None:
    for entry in manifest.nodes:
        if node_alive(entry):
            call(entry, "clearbanned")


def node_status(manifest: Manifest, entry: NodeEntry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node": entry.name, "role": entry.role, "rpc": entry.url, "height": None,
        "bestblockhash": None, "peers": None, "mempool": None, "hashrate": None,
        "up": False, "pid": entry.pid, "p2p": entry.p2p, "datadir": entry.datadir,
        "log": entry.log, "mining": None, "hashrate_limit": None,
        "group": group_index(manifest).get(entry.name), "warnings": "",
        "finality_conflicts": [],
    }
    if not node_alive(entry):
        return row
    row["up"] = True
    try:
        info = call(entry, "getblockchaininfo", timeout=10)
        row["height"] = info["blocks"]
        row["bestblockhash"] = info["bestblockhash"]
        row["warnings"] = info.get("warnings", "")
        row["finality_conflicts"] = info.get("finality_conflicts", [])
        row["peers"] = call(entry, "getconnectioncount", timeout=10)
        row["mempool"] = call(entry, "getmempoolinfo", timeout=10)["size"]
        mining = call(entry, "getmininginfo", timeout=10)
        row["hashrate"] = mining.get("hashrate")
        row["hashrate_limit"] = mining.get("hashrate_limit")
        row["mining"] = mining.get("mining")
    except (RPCConnectionError, RPCAuthError, RPCError, CookieError, OSError) as exc:
        row["error"] = str(exc)
    return row


def collect_status(manifest: Manifest) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=min(8, len(manifest.nodes))) as pool:
        return list(pool.map(lambda e: node_status(manifest, e), manifest.nodes))


def resolve_finality_splits(manifest: Manifest) -> list[str]:
    """End chain splits left by reorganisations refused beyond finality (`heal --resolve`)
    on a process testnet: :func:`resolve_splits` over its running nodes."""
    return resolve_splits({
        e.name: (lambda method, *params, e=e: call(e, method, *params))
        for e in manifest.nodes if node_alive(e)
    })


def resolve_splits(nodes: Mapping[str, Callable[..., Any]]) -> list[str]:
    """End chain splits left by reorganisations refused beyond finality (`heal --resolve`).

    `nodes` maps each running node to a function calling its RPC (``(method, *params)``), so
    this works on any testnet, processes, compose or swarm. The target is the most-work valid
    tip among them. Each node whose tip is not it and that knows a heavier branch it refused
    (`getblockchaininfo.finality_conflicts`): `invalidateblock` on its own first block after
    that branch's fork point (so its tip goes back to the fork), then `reconsiderblock` on
    the heavier tip (which un-parks the refused branch and clears any failure on its
    ancestors); the node then follows the heavier branch with a reorganisation of zero
    blocks. Returns one line per action, for the user.
    """
    infos = {name: rpc("getblockchaininfo") for name, rpc in nodes.items()}
    if not infos:
        return []
    best = max(infos.values(), key=lambda i: int(i["chainwork"], 16))
    actions = []
    for name, rpc in nodes.items():
        info = infos[name]
        if info["bestblockhash"] == best["bestblockhash"]:
            continue
        conflicts = info.get("finality_conflicts", [])
        # Only the heaviest refused branch: after one invalidate/reconsider the active chain
        # has changed, and acting on another fork point from the old view could undo it.
        for conflict in sorted(conflicts, key=lambda c: int(c["chainwork"], 16))[-1:]:
            own = rpc("getblockhash", conflict["fork_height"] + 1)
            rpc("invalidateblock", own)
            rpc("reconsiderblock", conflict["hash"])
            actions.append(f"{name}: invalidateblock {own} (own branch above height "
                           f"{conflict['fork_height']}), reconsiderblock {conflict['hash']}")
    return actions
