"""Progress of a long step of `testnet up` (starting, connecting, funding): a bar on a
terminal, plain periodic lines ("starting: 312/1000") otherwise, so logs stay readable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lab.testnet.tables import console

# Without a terminal: one line at most this often, plus the final one.
LINE_INTERVAL_S = 5.0


class Progress:
    """`update(done)` as the step advances; `done == total` ends it."""

    def __init__(self, label: str, total: int, bar: Any = None, task: Any = None,
                 quiet: bool = False) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self._bar, self._task = bar, task
        self._last_line = time.monotonic()
        self._done = -1
        self.started = time.monotonic()

    def update(self, done: int) -> None:
        if done == self._done or self.quiet:
            return
        self._done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            return
        now = time.monotonic()
        if done >= self.total or now - self._last_line >= LINE_INTERVAL_S:
            self._last_line = now
            console().print(f"{self.label}: {done}/{self.total} "
                            f"({now - self.started:.1f} s)", highlight=False)


@contextmanager
def progress(label: str, total: int, enabled: bool = True) -> Iterator[Progress]:
    """A bar (terminal) or periodic lines for `total` steps; nothing when not `enabled`."""
    out = console()
    if not enabled or total <= 0:
        yield Progress(label, total, quiet=True)
        return
    if not out.is_terminal:
        yield Progress(label, total)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
             TimeElapsedColumn(), console=out, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield Progress(label, total, bar, task)
