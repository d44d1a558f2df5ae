"""Where the dashboard's nodes are: a process testnet's manifest, a compose testnet, or a
list of RPC endpoints given by hand. Each source yields the nodes with their role, hash-rate
share and a way to get the current endpoint (the cookie changes when a node restarts)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lab.client import NodeEndpoint, read_cookie
from lab.dashboard.untrusted import redact


@dataclass
class NodeSource:
    name: str
    role: str
    share: float
    endpoint: Callable[[], NodeEndpoint]


@dataclass
class Sources:
    nodes: list[NodeSource]
    finality_depth: int
    directory: Path | None  # the testnet's directory: runs/ and the manifest's partition
    docker: bool = False
    compose_file: str | None = None  # a compose testnet's --compose-file

    def partition(self) -> list[list[str]] | None:
        if self.directory is None or self.docker:
            return None
        from lab.testnet.manifest import read_manifest_json

        data = read_manifest_json(self.directory) or {}
        groups = data.get("partition")
        return groups if isinstance(groups, list) else None


def testnet_sources(directory: str | None, docker: bool = False,
                    compose_file: str | None = None) -> Sources:
    """The nodes of the testnet in `directory` (a process testnet, or compose with
    `docker` or a docker manifest, from `compose_file` if given)."""
    from lab.testnet.cli import docker_do, is_docker
    from lab.testnet.control import endpoint
    from lab.testnet.manifest import load_manifest, resolve_dir

    path = resolve_dir(directory)
    if docker or is_docker(path):
        return _docker_sources(path, docker_do, compose_file)
    manifest = load_manifest(path)
    nodes = [NodeSource(e.name, e.role, e.hashrate_share, lambda e=e: endpoint(e))
             for e in manifest.nodes]
    return Sources(nodes, manifest.finality_depth or 6, path)


def _docker_sources(path: Path, docker_do: Callable[..., Any],
                    compose_file: str | None = None) -> Sources:
    args = argparse.Namespace(compose_file=compose_file)
    rows = docker_do(path, args, lambda net: net.status())
    names = [row["node"] for row in rows]
    endpoints = docker_do(path, args, lambda net: {n: net.endpoint(n) for n in names})
    nodes = []
    for row in rows:
        url, auth = endpoints[row["node"]]
        ep = NodeEndpoint(url, (auth[0], auth[1]) if auth else None)
        nodes.append(NodeSource(row["node"], row.get("role") or "node",
                                float(row.get("hashrate_share") or 0.0), lambda ep=ep: ep))
    return Sources(nodes, 6, path if path.exists() else None, docker=True,
                   compose_file=compose_file)


def endpoint_sources(specs: list[str], finality_depth: int = 6) -> Sources:
    """`NAME=URL` or `NAME=URL#COOKIEFILE` for each node (any set of RPC endpoints). A URL's
    `user:password@` becomes the endpoint's credentials; the URL kept (which error texts may
    carry to the page or the log) has none."""
    from urllib.parse import urlsplit, urlunsplit

    nodes = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        url, _, cookie = rest.partition("#")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if (not sep or not name or parts is None
                or parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError(f"--endpoint {redact(spec)!r}: expected "
                             "NAME=http://[USER:PASSWORD@]HOST:PORT/[#COOKIEFILE]")
        auth = (unquote(parts.username), unquote(parts.password or "")) \
            if parts.username is not None else None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host + (f":{port}" if port else "")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        clean = urlunsplit((parts.scheme, netloc, path, parts.query, ""))

        def get(url: str = clean, cookie: str = cookie,
                auth: tuple[str, str] | None = auth) -> NodeEndpoint:
            return NodeEndpoint(url, read_cookie(cookie) if cookie else auth)

        nodes.append(NodeSource(name, "node", 0.0, get))
    return Sources(nodes, finality_depth, None)
