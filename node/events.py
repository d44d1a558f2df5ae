"""In-process publish/subscribe hub for node events.

Events are JSON-able ``dict`` objects with a string ``"type"`` key, e.g.
``{"type": "block_connected", "height": 12, "hash": "00ab..."}``.

* :meth:`EventHub.publish` is synchronous and never blocks: it may be called from
  any code running on the event loop thread (it is *not* thread-safe; from another
  thread use ``loop.call_soon_threadsafe(hub.publish, event)``).
* :meth:`EventHub.subscribe` returns a :class:`Subscription` with a bounded buffer.
  A subscriber that falls ``maxsize`` events behind is *dropped*: its buffer is
  discarded, its iterator ends (``get()`` raises :class:`SubscriptionClosed`),
  ``Subscription.dropped`` becomes ``True`` and ``EventHub.dropped`` is incremented.
  Publishers are therefore never blocked and memory stays bounded.
* The same event dict is handed to every subscriber: treat events as immutable.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import structlog

__all__ = ["EventHub", "Subscription", "SubscriptionClosed"]


class SubscriptionClosed(Exception):
    """Raised by :meth:`Subscription.get` once the subscription has ended."""


class Subscription:
    """A bounded queue of events for one consumer. Create via :meth:`EventHub.subscribe`.

    Usage::

        async with hub.subscribe(types={"block_connected"}) as sub:
            async for event in sub:
                ...
    """

    def __init__(self, hub: EventHub, maxsize: int, types: frozenset[str] | None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._hub: EventHub | None = hub
        self.maxsize = maxsize
        self.types = types
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        #: True if the hub dropped this subscriber because its buffer was full.
        self.dropped = False

    # -- state -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        return len(self._items)

    def wants(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types

    # -- producer side (called by the hub) ---------------------------------------------------
    def _offer(self, event: dict[str, Any]) -> bool:
        """Append an event; return False if the buffer is full (caller drops us)."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(event)
        self._wakeup.set()
        return True

    def _end(self, dropped: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self.dropped = dropped
        self._items.clear()
        self._hub = None
        self._wakeup.set()

    # -- consumer side -------------------------------------------------------------------------
    async def get(self) -> dict[str, Any]:
        """Wait for and return the next event; raise :class:`SubscriptionClosed` when ended.

        Safe to cancel (e.g. via ``asyncio.wait_for``): no event is lost by cancellation.
        """
        while True:
            if self._closed:
                raise SubscriptionClosed("dropped" if self.dropped else "closed")
            if self._items:
                return self._items.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()

    def get_nowait(self) -> dict[str, Any] | None:
        """Return the next buffered event or None if none is buffered (raises if ended)."""
        if self._closed:
            raise SubscriptionClosed("dropped" if self.dropped else "closed")
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        """Unsubscribe. Buffered events are discarded; pending/future ``get()`` calls end."""
        hub = self._hub
        if hub is not None:
            hub._remove(self)
        self._end(dropped=False)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventHub:
    """Fan-out of events to any number of bounded subscribers."""

    def __init__(self, logger: Any = None) -> None:
        self._subs: list[Subscription] = []
        self._closed = False
        self._log = logger if logger is not None else structlog.get_logger()
        #: Number of subscribers dropped for being too slow (monotonic counter).
        self.dropped = 0
        #: Number of events published (monotonic counter).
        self.published = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, maxsize: int = 1000, types: Iterable[str] | None = None) -> Subscription:
        """Create a subscription receiving events published from now on.

        ``types`` optionally restricts delivery to those event types (filtered at publish
        time, so filtered-out events never occupy the buffer). After :meth:`close` this
        returns an already-ended subscription.
        """
        type_set = frozenset(types) if types is not None else None
        sub = Subscription(self, maxsize, type_set)
        if self._closed:
            sub._end()
        else:
            self._subs.append(sub)
        return sub

    def publish(self, event: dict[str, Any]) -> None:
        """Deliver ``event`` to every interested subscriber without blocking."""
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise TypeError("event must be a dict with a string 'type' key")
        if self._closed:
            return
        self.published += 1
        event_type = event["type"]
        for sub in list(self._subs):
            if not sub.wants(event_type):
                continue
            if not sub._offer(event):
                self._remove(sub)
                sub._end(dropped=True)
                self.dropped += 1
                self._log.warning(
                    "event_subscriber_dropped", maxsize=sub.maxsize, total_dropped=self.dropped
                )

    def close(self) -> None:
        """End all subscriptions; later publishes are ignored."""
        self._closed = True
        subs, self._subs = self._subs, []
        for sub in subs:
            sub._end()

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
