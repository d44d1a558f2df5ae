"""The JSON-RPC methods, named and shaped as in bitcoind (see ../shared/CONTRACT.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consensus.block import decode_block
from consensus.errors import ConsensusError, DecodeError
from consensus.keys import encode_address
from consensus.mempool import MempoolConflict
from consensus.pow import bits_to_target, difficulty
from consensus.tx import Transaction, TxIn, TxOut, decode_transaction
from node.config import parse_host_port, parse_peer
from node.miner.miner import MinerError
from node.rpc.errors import (
    RPC_CLIENT_NODE_NOT_ADDED,
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPC_VERIFY_ALREADY_IN_CHAIN,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
    RPC_WALLET_INSUFFICIENT_FUNDS,
    RPCError,
)
from node.rpc.registry import MethodRegistry
from node.wallet import InsufficientFunds, WalletError
from p2p.transport import LinkFault

if TYPE_CHECKING:
    from consensus.chainstate import BlockIndex
    from node.daemon import Node

PROTOCOL_VERSION = 1
USER_AGENT = "/powlab:0.1.0/"
RPC_CLIENT_NODE_ALREADY_ADDED = -23
RPC_CLIENT_NODE_NOT_CONNECTED = -29
RPC_CLIENT_INVALID_IP_OR_SUBNET = -30


def _hash_param(value: str, what: str = "hash") -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise RPCError(RPC_INVALID_PARAMETER, f"{what} must be 64 hex characters, got {value!r}")
    return raw


def _hex_param(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RPCError(RPC_DESERIALIZATION_ERROR, f"{what} is not valid hex") from None


def build_registry(node: Node) -> MethodRegistry:
    reg = MethodRegistry()
    params = node.params
    max_size = params.max_block_size

    def chain_entry(block_hash: str) -> BlockIndex:
        entry = node.chain.get(_hash_param(block_hash, "blockhash"))
        if entry is None:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        return entry

    def address_pkh(address: str) -> bytes:
        try:
            return node.wallet.decode(address)
        except WalletError as exc:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid address: {exc}") from None

    def address_of(pkh: bytes) -> str:
        return encode_address(params.address_prefix, pkh)

    def decode_tx(hexstring: str) -> Transaction:
        try:
            return decode_transaction(_hex_param(hexstring, "transaction"), max_size)
        except DecodeError as exc:
            raise RPCError(RPC_DESERIALIZATION_ERROR, f"TX decode failed: {exc}") from None

    def header_json(entry: BlockIndex) -> dict[str, Any]:
        chain = node.chain
        nxt = chain.at_height(entry.height + 1) if chain.is_active(entry) else None
        target = bits_to_target(entry.header.bits)
        return {
            **entry.header.to_json(),
            "confirmations": chain.confirmations(entry),
            "height": entry.height,
            "mediantime": chain.median_time_past(entry),
            "difficulty": difficulty(target, params.pow_limit),
            "chainwork": f"{entry.chainwork:064x}",
            "nextblockhash": nxt.hash.hex() if nxt else None,
        }

    # ----------------------------------------------------------------- blockchain

    def getblockchaininfo() -> dict[str, Any]:
        """Chain, height, best block, work, difficulty, median time and finality depth."""
        chain = node.chain
        tip = chain.tip
        return {
            "chain": params.name,
            "blocks": chain.height,
            "headers": chain.best_header.height,
            "bestblockhash": tip.hash.hex(),
            "chainwork": f"{tip.chainwork:064x}",
            "difficulty": difficulty(bits_to_target(tip.header.bits), params.pow_limit),
            "mediantime": chain.median_time_past(tip),
            "time": tip.header.timestamp,
            "finality_depth": node.finality_depth,
            "enforce_finality": chain.enforce_finality,
            "genesis": params.genesis_hash.hex(),
            "orphan_blocks": chain.orphan_count(),
        }

    def getblockcount() -> int:
        """Height of the active chain's tip."""
        return node.chain.height

    def getbestblockhash() -> str:
        """Hash of the active chain's tip."""
        return node.chain.tip.hash.hex()

    def getblockhash(height: int) -> str:
        """Hash of the active-chain block at `height`."""
        entry = node.chain.at_height(height)
        if entry is None:
            raise RPCError(RPC_INVALID_PARAMETER, "Block height out of range")
        return entry.hash.hex()

    def getblock(blockhash: str, verbosity: int = 1) -> Any:
        """Block as hex (verbosity 0), JSON with txids (1) or with transactions (2)."""
        entry = chain_entry(blockhash)
        block = node.chain.get_block(entry.hash)
        if block is None:
            raise RPCError(RPC_MISC_ERROR, "Block not available (header only)")
        if verbosity == 0:
            return block.encode().hex()
        info = header_json(entry)
        info["size"] = block.size
        info["nTx"] = len(block.txs)
        if verbosity >= 2:
            info["tx"] = [tx.to_json(address_of) for tx in block.txs]
        else:
            info["tx"] = [tx.txid.hex() for tx in block.txs]
        return info

    def getblockheader(blockhash: str, verbose: bool = True) -> Any:
        """Header as JSON (or hex of the 80-byte header when verbose is false)."""
        entry = chain_entry(blockhash)
        return header_json(entry) if verbose else entry.header.encode().hex()

    def getchaintips() -> list[dict[str, Any]]:
        """Every branch tip with its status: active, valid-fork, valid-headers, headers-only,
        invalid."""
        return [
            {"height": t.height, "hash": t.hash.hex(), "branchlen": t.branchlen, "status": t.status}
            for t in node.chain.chain_tips()
        ]

    def invalidateblock(blockhash: str) -> None:
        """Mark a block and its descendants invalid; the node moves to the best other chain."""
        try:
            node.invalidate_block(chain_entry(blockhash).hash)
        except ConsensusError as exc:
            raise RPCError(RPC_MISC_ERROR, str(exc)) from None

    def reconsiderblock(blockhash: str) -> None:
        """Undo invalidateblock on a block, its ancestors and descendants."""
        node.reconsider_block(chain_entry(blockhash).hash)

    def submitblock(hexdata: str) -> str | None:
        """Submit a block (hex). Null when accepted, else the reason."""
        try:
            block = decode_block(_hex_param(hexdata, "block"), max_size)
        except DecodeError as exc:
            raise RPCError(RPC_DESERIALIZATION_ERROR, f"Block decode failed: {exc}") from None
        result = node.submit_block(block)
        if result.status == "connected":
            return None
        if result.status in ("side-branch", "orphan"):
            return "inconclusive"
        return result.reason or result.status

    # ----------------------------------------------------------------- mining

    async def generatetoaddress(nblocks: int, address: str) -> list[str]:
        """Mine `nblocks` blocks to `address` now (whether or not continuous mining is on)."""
        if nblocks < 0 or nblocks > 10_000:
            raise RPCError(RPC_INVALID_PARAMETER, "nblocks must be between 0 and 10000")
        pkh = address_pkh(address)
        try:
            return [h.hex() for h in await node.miner.generate(nblocks, pkh)]
        except MinerError as exc:
            raise RPCError(RPC_MISC_ERROR, str(exc)) from None

    async def generateblock(
        address: str, transactions: list[str], submit: bool = True
    ) -> dict[str, str]:
        """Mine one block with exactly these transactions (mempool txids or raw hex); raw ones
        need not be in the mempool, so a conflicting transaction can be mined on purpose. With
        submit=false the block is returned as {hash, hex} and not announced (withheld)."""
        pkh = address_pkh(address)
        txs = []
        for item in transactions:
            if len(item) == 64:
                entry = node.mempool.get(_hash_param(item, "txid"))
                if entry is None:
                    raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool")
                txs.append(entry.tx)
            else:
                txs.append(decode_tx(item))
        try:
            if not submit:
                block = await node.miner.solve(pkh, txs)
                return {"hash": block.hash.hex(), "hex": block.encode().hex()}
            hashes = await node.miner.generate(1, pkh, txs)
        except (MinerError, ConsensusError) as exc:
            raise RPCError(RPC_VERIFY_ERROR, f"block not valid: {exc}") from None
        return {"hash": hashes[0].hex()}

    def getmininginfo() -> dict[str, Any]:
        """Height, difficulty, measured hash rate, whether mining, and the target spacing."""
        tip = node.chain.tip
        return {
            "blocks": node.chain.height,
            "difficulty": difficulty(bits_to_target(tip.header.bits), params.pow_limit),
            "hashrate": node.miner.hashrate_measured(),
            "hashrate_limit": node.miner.hashrate,
            "mining": node.miner.enabled,
            "processes": node.miner.pool.processes if node.miner.pool else 0,
            "blocks_found": node.miner.blocks_found,
            "target_spacing": params.target_spacing,
            "pooledtx": len(node.mempool),
        }

    async def setmining(enabled: bool, hashrate: float | None = None) -> None:
        """Start or stop continuous mining, optionally capping hashes per second."""
        try:
            await node.miner.set_mining(enabled, hashrate)
        except MinerError as exc:
            raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None

    # ----------------------------------------------------------------- mempool & transactions

    def getrawmempool(verbose: bool = False) -> Any:
        """Txids in the mempool (or entries with fee, size and time when verbose)."""
        if not verbose:
            return [t.hex() for t in node.mempool.txids()]
        return {t.hex(): mempool_entry(t) for t in node.mempool.txids()}

    def mempool_entry(txid: bytes) -> dict[str, Any]:
        entry = node.mempool.get(txid)
        if entry is None:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        return {
            "fee": entry.fee,
            "size": entry.size,
            "feerate": entry.fee_rate,
            "time": entry.time,
            "depends": [p.hex() for p in entry.parents],
            "spentby": [c.hex() for c in entry.children],
        }

    def getmempoolentry(txid: str) -> dict[str, Any]:
        """One mempool entry."""
        return mempool_entry(_hash_param(txid, "txid"))

    def getmempoolinfo() -> dict[str, Any]:
        """Mempool size, bytes, memory usage, limit and current minimum fee rate."""
        mp = node.mempool
        return {
            "size": len(mp),
            "bytes": mp.bytes,
            "usage": mp.usage,
            "maxmempool": node.config.max_mempool_bytes,
            "minfee": mp.min_fee_rate,
            "orphans": mp.orphan_count(),
        }

    def sendrawtransaction(hexstring: str) -> str:
        """Validate a signed transaction and add it to the mempool; error says why not."""
        tx = decode_tx(hexstring)
        try:
            outcome = node.submit_transaction(tx)
        except MempoolConflict as exc:
            raise RPCError(RPC_VERIFY_REJECTED, str(exc)) from None
        except ConsensusError as exc:
            code = RPC_VERIFY_ALREADY_IN_CHAIN if exc.reason == "txn-already-known" else (
                RPC_VERIFY_REJECTED
            )
            raise RPCError(code, str(exc)) from None
        node.watch(tx.txid)
        if outcome.orphan:
            missing = ", ".join(p.hex() for p in outcome.missing_parents)
            raise RPCError(RPC_VERIFY_ERROR, f"bad-txns-inputs-missingorspent: orphan, "
                           f"waiting for {missing}")
        return tx.txid.hex()

    def getrawtransaction(txid: str, verbose: bool = False) -> Any:
        """A transaction the node knows (mempool, active chain, wallet, recently seen)."""
        raw_txid = _hash_param(txid, "txid")
        tx = node.find_transaction(raw_txid)
        if tx is None:
            raise RPCError(RPC_INVALID_ADDRESS_OR_KEY, "No such mempool or blockchain transaction")
        if not verbose:
            return tx.encode().hex()
        info = tx.to_json(address_of)
        info["hex"] = tx.encode().hex()
        status = node.tx_status(raw_txid)
        info.update(
            confirmations=status.confirmations,
            blockhash=status.blockhash.hex() if status.blockhash else None,
        )
        return info

    def decoderawtransaction(hexstring: str) -> dict[str, Any]:
        """A raw transaction as JSON."""
        return decode_tx(hexstring).to_json(address_of)

    def createrawtransaction(inputs: list[dict[str, Any]], outputs: dict[str, Any]) -> str:
        """An unsigned transaction spending `inputs` [{txid, vout}] to {address: amount}."""
        txins = []
        for item in inputs:
            if not isinstance(item, dict) or "txid" not in item or "vout" not in item:
                raise RPCError(RPC_INVALID_PARAMETER, "each input is {\"txid\": …, \"vout\": n}")
            vout = item["vout"]
            if type(vout) is not int or vout < 0:
                raise RPCError(RPC_INVALID_PARAMETER, "vout must be a non-negative integer")
            txins.append(TxIn(_hash_param(item["txid"], "txid"), vout, b"", b""))
        txouts = []
        for address, amount in outputs.items():
            if type(amount) is not int or amount <= 0:
                raise RPCError(
                    RPC_INVALID_PARAMETER,
                    f"amount for {address} must be a positive integer (smallest units)",
                )
            txouts.append(TxOut(amount, address_pkh(address)))
        return Transaction(txins, txouts).encode().hex()

    def signrawtransactionwithwallet(hexstring: str) -> dict[str, Any]:
        """Sign the inputs the wallet holds keys for."""
        tx, complete = node.wallet.sign(decode_tx(hexstring), node.chain, node.mempool)
        return {"hex": tx.encode().hex(), "complete": complete}

    # ----------------------------------------------------------------- wallet

    def getnewaddress() -> str:
        """A new address of this node's wallet."""
        return node.wallet.new_address()

    def getbalance(minconf: int = 1) -> int:
        """Spendable balance with at least `minconf` confirmations (mature coinbase only)."""
        return node.wallet.balance(node.chain, node.mempool, minconf)

    def listunspent(minconf: int = 1) -> list[dict[str, Any]]:
        """The wallet's unspent outputs with at least `minconf` confirmations."""
        return [
            {
                "txid": c.outpoint.txid.hex(),
                "vout": c.outpoint.index,
                "address": address_of(c.coin.pkh),
                "amount": c.coin.amount,
                "confirmations": c.confirmations,
                "coinbase": c.coin.is_coinbase,
                "spendable": c.spendable,
            }
            for c in node.wallet.coins(node.chain, node.mempool)
            if c.confirmations >= minconf
        ]

    def sendtoaddress(address: str, amount: int) -> str:
        """Pay `amount` (smallest units) to `address`, with change and a fee."""
        pkh = address_pkh(address)
        try:
            tx = node.wallet.create_payment(node.chain, node.mempool, pkh, amount)
        except InsufficientFunds as exc:
            raise RPCError(RPC_WALLET_INSUFFICIENT_FUNDS, str(exc)) from None
        except WalletError as exc:
            raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
        try:
            node.submit_transaction(tx)
        except ConsensusError as exc:
            raise RPCError(RPC_VERIFY_REJECTED, str(exc)) from None
        node.wallet.remember(tx, node.now())
        node.watch(tx.txid)
        return tx.txid.hex()

    def gettransaction(txid: str) -> dict[str, Any]:
        """Status (mempool, confirmed, final, conflicted, unknown), confirmations (negative
        when conflicted), block, conflicting txids and the finality depth."""
        raw_txid = _hash_param(txid, "txid")
        node.watch(raw_txid)
        status = node.tx_status(raw_txid)
        q = node.config.assumed_attacker_share
        seen = node.double_spends_of(raw_txid)
        return {
            **status.to_json(),
            "reversal_risk": status.reversal_risk(q),
            "assumed_attacker_share": q,
            "risk_summary": status.risk_summary(q),
            "double_spend_alert": bool(seen) and node.config.double_spend_alerts,
            "seen_double_spends": sorted(t.hex() for t in seen),
            "accepted_zero_conf": node.accepted_zero_conf(status),
            "listening_period": node.config.listening_period,
        }

    def validateaddress(address: str) -> dict[str, Any]:
        """Whether `address` is valid on this network, and why not."""
        try:
            pkh = node.wallet.decode(address)
        except WalletError as exc:
            return {"isvalid": False, "error": str(exc)}
        return {"isvalid": True, "address": address, "ismine": node.wallet.is_mine(pkh)}

    # ----------------------------------------------------------------- network

    def peer_address(text: str) -> tuple[str, int]:
        try:
            return parse_host_port(text)
        except ValueError as exc:
            raise RPCError(RPC_INVALID_PARAMETER, f"invalid address {text!r}: {exc}") from None

    def getpeerinfo() -> list[dict[str, Any]]:
        """Peers: id, address, direction, node id, height, latency, misbehaviour score and
        penalties, bytes sent and received."""
        return node.protocol.peer_info()

    def getconnectioncount() -> int:
        """Number of established peers."""
        return node.protocol.established_count()

    def addnode(node_addr: str, command: str) -> None:
        """add (keep connected), remove, or onetry a peer at [NODEID@]HOST:PORT; a node id
        pins the identity the peer must prove."""
        try:
            pin, addr = parse_peer(node_addr)
        except ValueError as exc:
            raise RPCError(RPC_INVALID_PARAMETER, f"invalid address {node_addr!r}: {exc}") from None
        now = node.clock()
        if command == "add":
            if addr in node.protocol.persistent_addresses():
                raise RPCError(RPC_CLIENT_NODE_ALREADY_ADDED, "Node already added")
            node.protocol.connect(addr, now, persistent=True, node_id=pin)
        elif command == "remove":
            if not node.protocol.forget_persistent(addr):
                raise RPCError(RPC_CLIENT_NODE_NOT_ADDED, "Node has not been added")
        elif command == "onetry":
            node.protocol.connect(addr, now, node_id=pin)
        else:
            raise RPCError(RPC_INVALID_PARAMETER, "command must be add, remove or onetry")
        node.p2p_flush()

    def getaddednodeinfo() -> list[dict[str, Any]]:
        """Peers added with addnode or --connect/--addnode, and whether connected."""
        connected = {p["addr"] for p in node.protocol.peer_info() if p["status"] == "established"}
        return [
            {"addednode": f"{h}:{p}", "connected": f"{h}:{p}" in connected}
            for h, p in node.protocol.persistent_addresses()
        ]

    def disconnectnode(address: str = "", nodeid: int | None = None) -> None:
        """Disconnect a peer by address (HOST:PORT) or by id."""
        peers = node.protocol.peer_info()
        match = [p for p in peers if (nodeid is not None and p["id"] == nodeid)
                 or (address and p["addr"] == address)]
        if not match:
            raise RPCError(RPC_CLIENT_NODE_NOT_CONNECTED, "Node not found in connected nodes")
        for peer in match:
            node.protocol.disconnect(peer["id"], node.clock(), "disconnectnode")
        node.p2p_flush()

    def setban(subnet: str, command: str, bantime: int = 86400) -> None:
        """Ban (add) or unban (remove) a host (IP) for `bantime` seconds."""
        host = subnet.rsplit(":", 1)[0] if subnet.count(":") == 1 else subnet
        if command == "add":
            if bantime <= 0:
                raise RPCError(RPC_INVALID_PARAMETER, "bantime must be positive")
            node.protocol.ban(host, bantime, node.clock())
        elif command == "remove":
            if not node.protocol.book.unban(host):
                raise RPCError(RPC_CLIENT_INVALID_IP_OR_SUBNET, f"{host} is not banned")
        else:
            raise RPCError(RPC_INVALID_PARAMETER, "command must be add or remove")
        node.p2p_flush()

    def listbanned() -> list[dict[str, Any]]:
        """Banned and discouraged (misbehaving) hosts, and until when."""
        return [
            {"address": key, "banned_until": int(until)}
            for key, until in sorted(node.protocol.book.list_banned(node.clock()).items())
        ]

    def clearbanned() -> None:
        """Lift every ban and discouragement."""
        node.protocol.book.clear()

    def setnetworkactive(state: bool) -> bool:
        """Switch all P2P activity on or off; returns the new state."""
        node.protocol.set_network_active(state, node.clock())
        node.p2p_flush()
        return state

    def setlinkfault(fault: dict[str, Any], peer: str | None = None) -> None:
        """Inject delay_ms, jitter_ms, bandwidth_kbps (a cap; bytes queue behind each other)
        and loss (0..1, datagrams only) on outgoing P2P traffic, for all peers or one peer
        (HOST:PORT), for experiments. {} clears it."""
        unknown = set(fault) - {"delay_ms", "jitter_ms", "loss", "bandwidth_kbps"}
        if unknown:
            raise RPCError(RPC_INVALID_PARAMETER, f"unknown fault keys: {sorted(unknown)}")
        try:
            link = LinkFault(**{k: float(v) for k, v in fault.items()})
            link.validate()
        except (TypeError, ValueError) as exc:
            raise RPCError(RPC_INVALID_PARAMETER, str(exc)) from None
        assert node.p2p is not None
        if peer is None:
            node.p2p.fault = link
        else:
            peer_address(peer)
            node.p2p.peer_faults[peer] = link

    def getnetworkinfo() -> dict[str, Any]:
        """Version, protocol, whether networking is active, connections, relay fee."""
        return {
            "version": PROTOCOL_VERSION,
            "subversion": USER_AGENT,
            "protocolversion": PROTOCOL_VERSION,
            "networkactive": node.protocol.network_active,
            "connections": node.protocol.established_count(),
            "p2p": node.p2p_addr,
            "node_id": node.protocol.node_id.hex(),
            "relayfee": node.mempool.min_fee_rate,
            "localaddresses": [],
        }

    # ----------------------------------------------------------------- control

    def uptime() -> int:
        """Seconds since the node started."""
        return int(node.clock() - node.started_at)

    def stop() -> str:
        """Shut the node down cleanly."""
        node.request_stop()
        return "powlab node stopping"

    groups: dict[str, list[Any]] = {
        "blockchain": [
            getblockchaininfo, getblockcount, getbestblockhash, getblockhash, getblock,
            getblockheader, getchaintips, invalidateblock, reconsiderblock, submitblock,
        ],
        "mining": [generatetoaddress, generateblock, getmininginfo, setmining],
        "rawtransactions": [
            getrawmempool, getmempoolentry, getmempoolinfo, sendrawtransaction,
            getrawtransaction, decoderawtransaction, createrawtransaction,
            signrawtransactionwithwallet,
        ],
        "wallet": [
            getnewaddress, getbalance, listunspent, sendtoaddress, gettransaction,
            validateaddress,
        ],
        "network": [
            getpeerinfo, getconnectioncount, addnode, getaddednodeinfo, disconnectnode, setban,
            listbanned, clearbanned, setnetworkactive, setlinkfault, getnetworkinfo,
        ],
        "control": [uptime, stop],
    }
    for category, funcs in groups.items():
        for func in funcs:
            reg.register(func.__name__, func, category=category)
    return reg
