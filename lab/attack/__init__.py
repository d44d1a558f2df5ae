"""`powlab attack`: double-spend and mining attacks staged on a running network via RPC.

One module per scenario (race, finney, vector76, majority, selfish, split); `common` holds the
network, roles, timeline, monitor and transaction helpers, `report` the output and plot."""

from __future__ import annotations

from typing import Any


def add_attack_parser(sub: Any) -> None:
    from lab.attack.cli import add_attack_parser as add

    add(sub)


__all__ = ["add_attack_parser"]
