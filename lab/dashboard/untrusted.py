"""What the dashboard takes from outside (a node's RPC answers and /events, the run records
in DIR/runs/) is checked here before it reaches the model or the page.

Python's json accepts NaN and Infinity and writes them back out; a browser's JSON.parse
refuses them, so one such number would stop every page from loading. Input is parsed with
`loads` (non-finite numbers and too-deep nesting are refused as ValueError) and output is
written with `dumps` (any non-finite number left becomes null). Error texts pass through
`redact`, which drops the user:password part of any URL in them."""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_JSON_DEPTH = 64  # nesting kept when sanitising; deeper values become null
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999 overflows to infinity
        raise ValueError(f"number {text[:20]} overflows a float")
    return number


def loads(data: str | bytes) -> Any:
    """JSON from outside: NaN, Infinity (also as an overflowing 1e999) and nesting too deep
    for the parser are refused (ValueError), so a caller that handles ValueError handles
    every bad input."""
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def finite(value: Any, depth: int = 0) -> Any:
    """`value` with every non-finite float replaced by None (and anything nested deeper than
    MAX_JSON_DEPTH by None), so it can be written as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if depth >= MAX_JSON_DEPTH:
        return None
    if isinstance(value, dict):
        return {str(k): finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v, depth + 1) for v in value]
    return str(value)


def dumps(value: Any) -> str:
    """Strict JSON (what a browser's JSON.parse accepts) of any value the dashboard holds."""
    return json.dumps(finite(value), allow_nan=False)


def as_int(value: Any) -> int | None:
    """An integer from outside, or None (bools, floats and strings are not integers)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: Any) -> float | None:
    """A finite number from outside as a float, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def as_str(value: Any, limit: int = 200) -> str:
    """A string from outside, cut to `limit` characters ("" if it is not a string)."""
    return value[:limit] if isinstance(value, str) else ""


def redact(text: str) -> str:
    """`text` with the user:password@ of every URL in it removed."""
    return URL_USERINFO.sub(r"\1", text)
