"""What every webhook source shares: the request it verifies, how it refuses, and small checks.

A source verifies the request exactly as its provider documents, before anything is stored,
and raises :class:`Refused` when it cannot: the receiver then answers 400, 401 or 403 with
an empty body, whatever the reason, so a stranger learns nothing from the answer. The
``why`` of a refusal goes to the server's log only, and never holds a secret or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from newsletter.errors import WebhookConfigError
from newsletter.events import DeliveryEvent
from newsletter.store import TIME_FORMAT, stamp_of
from newsletter.webhook_settings import WebhookSource


@dataclass(frozen=True)
class WebhookRequest:
    """A POST as received: header names in lower case, the raw body, and the time now."""

    headers: Mapping[str, str]
    body: bytes
    now: float


@dataclass
class Verified:
    """A request the source has verified: its events, and the delivery id that makes it unique
    (None where the provider signs nothing that could identify a replay)."""

    events: list[DeliveryEvent]
    delivery_id: str | None
    note: str = ""


@dataclass(frozen=True)
class Sample:
    """A signed sample request for ``newsletter webhooks test``."""

    description: str
    headers: dict[str, str]
    body: bytes


class Refused(Exception):
    """Verification failed: 401 (not signed by the provider), 403 (signed, but not acceptable:
    too old, replayed, another topic) or 400 (signed, but not readable)."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass
class SourceContext:
    """What a source may use besides its settings: for SNS, fetching signing certificates
    and confirming subscriptions (over verified HTTPS)."""

    fetch_certificate: Callable[[str], bytes] | None = None
    confirm_subscription: Callable[[str], None] | None = None


class Source:
    """Base of the webhook sources; one module per provider implements ``verify``."""

    name: ClassVar[str] = ""

    def __init__(self, config: WebhookSource, context: SourceContext):
        self.config = config
        self.context = context

    def verify(self, request: WebhookRequest) -> Verified:
        raise NotImplementedError

    def samples(self, now: float, private_key_pem: bytes | None = None) -> list[Sample]:
        """Documented sample events, signed so that this source accepts them."""
        raise NotImplementedError


def secret(variable: str, source: str) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        raise WebhookConfigError(
            f"[webhooks.{source}] is set up but the environment variable {variable} is not; "
            f"set it to the secret from {source}'s dashboard (see docs/webhooks.md), or remove "
            f"[webhooks.{source}] from newsletter.toml"
        )
    return value


def same(a: bytes | str, b: bytes | str) -> bool:
    """Constant-time equality (a timing leak here lets a stranger guess a secret byte by byte)."""
    left = a.encode("utf-8") if isinstance(a, str) else a
    right = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def check_age(timestamp: float, now: float, max_age: int) -> None:
    if abs(now - timestamp) > max_age:
        raise Refused(403, "the signed timestamp is outside the accepted window")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None


def b64decode(value: str, why: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, why) from None


def text(value: object, limit: int = 500) -> str:
    """A provider's value as one line of printable text for the record.

    Bounce diagnostics come from the recipient's mail server, which anyone can run: control
    characters (terminal escapes) must not reach the admin's terminal through `show` or `report`.
    """
    raw = str(value if value is not None else "")
    printable = "".join(c if c.isprintable() else " " for c in raw)
    return " ".join(printable.split())[:limit]


def iso_from_epoch(value: object, fallback: float) -> str:
    try:
        when = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        when = fallback
    return stamp_of(when)


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def iso_from_text(value: object, fallback: float) -> str:
    """An ISO 8601 time with any offset (and any number of fraction digits) as UTC."""
    if isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.astimezone(UTC).strftime(TIME_FORMAT)
    return iso_from_epoch(fallback, fallback)


def obj(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: providers' fields are optional."""
    return value if isinstance(value, dict) else {}
