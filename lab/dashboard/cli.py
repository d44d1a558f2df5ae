"""`powlab testnet dashboard`: serve the live web view of a testnet until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lab.testnet.manifest import TestnetError

if TYPE_CHECKING:
    from lab.dashboard.sources import Sources

DEFAULT_BIND = "127.0.0.1:8450"
URL_FILE = "dashboard.url"  # in the testnet's directory while the dashboard runs
URL_FILE_MODE = 0o600  # owner only: the URL may carry the token


def add_dashboard_action(action: Callable[..., argparse.ArgumentParser]) -> None:
    """`powlab testnet dashboard`, added with the `testnet` parser's own helper (so it gets
    --dir, --docker and the testnet's error reporting)."""
    parser = action("dashboard", "serve the live web view (block tree, nodes, payments, "
                    "attacks): docs/dashboard.md", cmd_dashboard, docker=True)
    add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
                        help=f"where to serve the page (default {DEFAULT_BIND}; port 0: any "
                             "free port); off loopback a token is required")
    parser.add_argument("--token", metavar="TOKEN",
                        help="require this token (`auto`: generate one); needed when --bind "
                             "is not a loopback address")
    parser.add_argument("--endpoint", action="append", default=[], metavar="NAME=URL[#COOKIE]",
                        help="watch these RPC endpoints instead of a testnet (repeatable)")
    parser.add_argument("--no-controls", dest="controls", action="store_false",
                        help="a view only: no mine / partition / heal / send buttons")
    parser.add_argument("--no-open", dest="open", action="store_false",
                        help="do not open the page in a browser")


def cmd_dashboard(args: argparse.Namespace) -> int:
    from lab.dashboard.server import DashboardError, new_token, parse_bind
    from lab.dashboard.sources import endpoint_sources, testnet_sources

    try:
        host, port = parse_bind(args.bind)
        token = new_token() if args.token == "auto" else args.token
        try:
            sources = (endpoint_sources(args.endpoint) if args.endpoint
                       else testnet_sources(getattr(args, "dir", None), args.docker,
                                            args.compose_file))
        except ValueError as exc:
            raise DashboardError(str(exc)) from None
        return asyncio.run(serve(sources, host, port, token, args.controls, args.open))
    except DashboardError as exc:
        raise TestnetError(str(exc)) from None
    except KeyboardInterrupt:
        return 0


async def serve(sources: Sources, host: str, port: int, token: str | None, controls: bool,
                open_browser: bool) -> int:
    from lab.dashboard.collector import Collector
    from lab.dashboard.controls import Controls
    from lab.dashboard.model import Model
    from lab.dashboard.server import Dashboard

    model = Model(sources.finality_depth)
    collector = Collector(sources, model)
    dashboard = Dashboard(collector, model, host, port, token,
                          Controls(collector) if controls else None)
    await collector.start()
    try:
        try:
            url = await dashboard.start()
        except OSError as exc:
            print(f"powlab testnet dashboard: cannot listen on {host}:{port}: {exc}",
                  file=sys.stderr)
            return 1
        print(f"dashboard: {url}  ({len(sources.nodes)} nodes; Ctrl-C to stop)", flush=True)
        url_file = _write_url(sources.directory, url)
        if open_browser:
            with contextlib.suppress(Exception):
                webbrowser.open(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if url_file is not None:
            url_file.unlink(missing_ok=True)
        return 0
    finally:
        await dashboard.stop()
        await collector.stop()


def _write_url(directory: Path | None, url: str) -> Path | None:
    if directory is None:
        return None
    path = directory / URL_FILE
    with contextlib.suppress(OSError):
        # It may carry the token: created owner-only (never readable by others, even for a
        # moment), and an older file's mode is narrowed before it is rewritten.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, URL_FILE_MODE)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), URL_FILE_MODE)
            fh.write(url + "\n")
        return path
    return None
