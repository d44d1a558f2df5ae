"""structlog set-up: key-value events, JSON when not on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal

import structlog
from structlog.typing import EventDict

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class _UTCTimestamper:
    """``timestamp`` as ISO 8601 UTC with microseconds, like structlog's TimeStamper(fmt="iso",
    utc=True), with the date and time formatted once per second: a node logs a line per block,
    thousands a second while it syncs."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: object, __: str, event_dict: EventDict) -> EventDict:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


_utc_timestamp = _UTCTimestamper()


def configure_logging(
    log_format: Literal["json", "console"] | None, level: str = "info", node_name: str = ""
) -> None:
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _utc_timestamp,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if log_format == "json":
        processors.append(structlog.processors.JSONRenderer(sort_keys=False))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if node_name:
        structlog.contextvars.bind_contextvars(node=node_name)
