"""The tests' one way to await a condition inside their own event loop (lab.waiting's
wait_until would block the loop that has to make the condition true)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def wait_until_async(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
    interval: float = 0.01,
) -> Any:
    """Return `predicate()`'s first truthy value, checking every `interval` seconds while the
    loop runs; fail the test (AssertionError) after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
    return value
