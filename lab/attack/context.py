"""The state one scenario run works with: arguments, roles, timeline, switches, monitor."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

from lab.attack.common import Monitor, Network, Roles, Timeline


@dataclass
class Context:
    args: argparse.Namespace
    roles: Roles
    timeline: Timeline
    net: Network
    monitor: Monitor
    rng: random.Random

    def event(self, node: str, event: str, **extra: object) -> None:
        self.timeline.add(node, event, **extra)
