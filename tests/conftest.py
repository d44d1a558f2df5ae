"""pytest hooks: say which loopback ranges this run took (tests/subnets.py)."""

from __future__ import annotations

from typing import Any

from tests import subnets


def pytest_report_header(config: Any) -> str:
    subnets.subnet(0)
    return f"powlab: {subnets.describe()}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if exitstatus != 0:
        terminalreporter.write_line(f"powlab: {subnets.describe()}")
