"""How fast a send may go: ``--rate`` / ``[provider] rate`` parsed, and a token bucket to keep it."""

from __future__ import annotations

import time
from collections.abc import Callable

from newsletter.errors import SendError

_SECONDS_PER_UNIT = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``"50/s"``, ``"50"`` or ``"3000/min"`` as messages per second."""
    value, _, unit = text.strip().partition("/")
    per = _SECONDS_PER_UNIT.get(unit.strip())
    try:
        number = float(value)
    except ValueError:
        number = -1
    if per is None or not number > 0 or number == float("inf"):
        raise SendError(f"rate {text!r} is not a rate such as 50/s or 3000/min")
    return number / per


class TokenBucket:
    """At most ``rate`` messages a second on average, with bursts of up to one second's worth."""

    def __init__(self, rate: float, sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise SendError(f"the rate must be above 0 messages a second, not {rate:g}")
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.sleep = sleep

    def take(self, count: int) -> None:
        # A batch larger than the bucket waits for the tokens it lacks, then goes at once.
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= min(count, self.capacity):
                self.tokens -= count
                return
            self.sleep((min(count, self.capacity) - self.tokens) / self.rate)
