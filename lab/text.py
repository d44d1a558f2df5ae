"""Small wording helpers shared by the lab's messages."""

from __future__ import annotations


def plural(count: object, noun: str, nouns: str | None = None) -> str:
    """`1 confirmation`, `2 confirmations`, `0 confirmations`, `-1 confirmation`.

    A count that is not a number (None from a node that did not say) keeps the plural.
    """
    one = isinstance(count, int) and not isinstance(count, bool) and abs(count) == 1
    return f"{count} {noun if one else (nouns or noun + 's')}"


def confirmations(count: object) -> str:
    """"1 confirmation", "3 confirmations": for verdicts."""
    return plural(count, "confirmation")
