"""Polling a running network for a condition, with a deadline (the CLI tools' one way to wait)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.25,
    error: type[Exception] = TimeoutError,
) -> Any:
    """Return `predicate()`'s first truthy value; raise `error` naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
