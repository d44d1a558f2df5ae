"""Polling for a condition with a deadline: the one way the lab, the tests and the benchmarks
wait for nodes (tests awaiting inside their own event loop use tests/async_wait.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.25,
    error: type[Exception] = TimeoutError,
    *,
    first: float | None = None,
    ignore: tuple[type[Exception], ...] = (),
) -> Any:
    """Return `predicate()`'s first truthy value; raise `error` naming `what` after `timeout`.

    `predicate` is called every `interval` seconds. With `first`, polling starts that often
    and grows by half each time up to `interval`: a condition that usually holds at once is
    seen at once without polling a slow one hard. An exception of a type in `ignore` counts
    as "not yet" (a node restarting, say); the last one is named when time runs out.
    """
    deadline = time.monotonic() + timeout
    delay = interval if first is None else min(first, interval)
    last: Exception | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"; last error: {last!r}" if last is not None else ""
            raise error(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, interval)
