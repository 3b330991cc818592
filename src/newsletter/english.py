"""Counts in messages, in correct English: "1 article", "2 articles", "1 address"."""

from __future__ import annotations

# Nouns whose plural is not the singular plus "s".
_IRREGULAR = {"address": "addresses", "entry": "entries", "is": "are", "has": "have"}


def plural(noun: str, count: int) -> str:
    """``noun`` as it agrees with ``count``."""
    if count == 1:
        return noun
    return _IRREGULAR.get(noun, noun + "s")


def counted(count: int, noun: str) -> str:
    """ "1 article", "3 articles", "1,200 subscribers"."""
    return f"{count:,} {plural(noun, count)}"
