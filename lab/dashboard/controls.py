"""The dashboard's teaching controls: mine blocks on a node, partition, heal, send a payment.
The page asks for confirmation first; here each request is checked (known node names, sane
numbers) and handed to the `powlab testnet` machinery (lab/testnet/cli.py, control.py)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from lab.dashboard.collector import Collector

MAX_MINE = 10
MAX_AMOUNT = 21_000_000 * 100_000_000


class Controls:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.names = [s.name for s in collector.sources.nodes]

    def _node(self, body: dict[str, Any], key: str) -> str:
        name = body.get(key)
        if name not in self.names:
            raise ValueError(f"{key}: not a node of this testnet ({', '.join(self.names)})")
        return str(name)

    async def run(self, body: dict[str, Any]) -> str:
        action = body.get("action")
        if action == "mine":
            return await self.mine(self._node(body, "node"), body.get("blocks", 1))
        if action == "send":
            return await self.send(self._node(body, "from"), self._node(body, "to"),
                                   body.get("amount"))
        if action == "partition":
            return await self.partition(body.get("groups"))
        if action == "heal":
            return await self.heal()
        raise ValueError("action: one of mine, send, partition, heal")

    async def mine(self, node: str, blocks: Any) -> str:
        if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= MAX_MINE:
            raise ValueError(f"blocks: a whole number from 1 to {MAX_MINE}")
        src = self.collector.source(node)
        address = await self.collector.call(src, "getnewaddress")
        hashes = await self.collector.call(src, "generatetoaddress", blocks, address)
        return f"{node} mined {len(hashes)} block(s): {', '.join(h[:12] for h in hashes)}"

    async def send(self, sender: str, recipient: str, amount: Any) -> str:
        if (not isinstance(amount, int) or isinstance(amount, bool)
                or not 1 <= amount <= MAX_AMOUNT):
            raise ValueError("amount: a whole number of the smallest unit, at least 1")
        address = await self.collector.call(self.collector.source(recipient), "getnewaddress")
        txid = await self.collector.call(self.collector.source(sender), "sendtoaddress",
                                         address, amount)
        return f"{sender} paid {amount} to {recipient}: txid {txid}"

    async def partition(self, groups: Any) -> str:
        if (not isinstance(groups, list) or len(groups) < 2
                or not all(isinstance(g, list) and g for g in groups)):
            raise ValueError("groups: two or more lists of node names")
        seen: set[str] = set()
        for group in groups:
            for name in group:
                if name not in self.names or name in seen:
                    raise ValueError(f"groups: {name!r} is unknown or named twice")
                seen.add(name)
        texts = [",".join(g) for g in groups]
        await self._testnet("partition", groups=texts)
        return "partitioned: " + " | ".join(texts)

    async def heal(self) -> str:
        await self._testnet("heal", wait=False, resolve=False, timeout=60.0)
        return "healed: bans lifted; nodes redial their neighbours"

    async def _testnet(self, command: str, **options: Any) -> None:
        from lab.testnet import cli

        directory = self.collector.sources.directory
        if directory is None:
            raise ValueError(f"{command} needs a testnet directory (not bare --endpoint nodes)")
        sources = self.collector.sources
        args = argparse.Namespace(dir=str(directory), docker=sources.docker,
                                  compose_file=sources.compose_file, **options)
        func = cli.cmd_partition if command == "partition" else cli.cmd_heal
        await asyncio.to_thread(func, args)
