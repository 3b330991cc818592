"""Mailgun: the signature travels in the JSON body beside the event.

``{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}``; the signature is
the hex HMAC-SHA256 of ``timestamp + token`` keyed with the webhook signing key (Mailgun's
"HTTP webhook signing key", not the API key). The token is new for every request, so a token
seen before is a replay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

from newsletter.events import DeliveryEvent, EventKind
from newsletter.webhook_settings import WebhookSource
from newsletter.webhooks.common import (
    Refused,
    Sample,
    Source,
    SourceContext,
    Verified,
    WebhookRequest,
    check_age,
    iso_from_epoch,
    parse_json,
    same,
    secret,
    text,
)

KEY_VARIABLE = "MAILGUN_WEBHOOK_SIGNING_KEY"


class MailgunSource(Source):
    name = "mailgun"

    def __init__(self, config: WebhookSource, context: SourceContext):
        super().__init__(config, context)
        self._key = secret(KEY_VARIABLE, self.name).encode("utf-8")

    def sign(self, timestamp: str, token: str) -> str:
        return hmac.new(self._key, (timestamp + token).encode("utf-8"), hashlib.sha256).hexdigest()

    def verify(self, request: WebhookRequest) -> Verified:
        payload = parse_json(request.body)
        signed = payload.get("signature") if isinstance(payload, dict) else None
        if not isinstance(signed, dict):
            raise Refused(401, "no signature")
        timestamp, token, signature = (signed.get(k) for k in ("timestamp", "token", "signature"))
        if not all(isinstance(v, str | int) and str(v) for v in (timestamp, token, signature)):
            raise Refused(401, "an incomplete signature")
        if not same(self.sign(str(timestamp), str(token)), str(signature)):
            raise Refused(401, "the signature does not match")
        try:
            check_age(float(str(timestamp)), request.now, self.config.max_age)
        except ValueError:
            raise Refused(401, "the timestamp is not a number") from None
        data = payload.get("event-data")
        if not isinstance(data, dict):
            raise Refused(400, "no event-data")
        event = _event(data, request.now)
        return Verified([event] if event else [], delivery_id=str(token))

    def samples(self, now: float, private_key_pem: bytes | None = None) -> list[Sample]:
        return [
            self._sample("delivered", "alice@example.com", {}, now),
            self._sample(
                "failed",
                "bob@example.com",
                {
                    "severity": "permanent",
                    "reason": "bounce",
                    "delivery-status": {"code": 550, "message": "5.1.1 No such user"},
                },
                now,
            ),
            self._sample("complained", "carol@example.com", {}, now),
        ]

    def _sample(self, kind: str, recipient: str, extra: dict[str, Any], now: float) -> Sample:
        timestamp, token = str(int(now)), secrets.token_hex(25)
        data = {
            "event": kind,
            "id": secrets.token_urlsafe(16),
            "timestamp": now,
            "recipient": recipient,
            "message": {"headers": {"message-id": "20130503182626.18666.16540@example.org"}},
            **extra,
        }
        body = {
            "signature": {
                "timestamp": timestamp,
                "token": token,
                "signature": self.sign(timestamp, token),
            },
            "event-data": data,
        }
        return Sample(
            f"{kind} ({recipient})",
            {"Content-Type": "application/json"},
            json.dumps(body).encode(),
        )


def _event(data: dict[str, Any], now: float) -> DeliveryEvent | None:
    kind = str(data.get("event", ""))
    if kind == "delivered":
        found = EventKind.DELIVERED
    elif kind == "failed":
        permanent = data.get("severity") == "permanent"
        found = EventKind.HARD_BOUNCE if permanent else EventKind.SOFT_BOUNCE
    elif kind == "complained":
        found = EventKind.COMPLAINT
    elif kind == "unsubscribed":
        found = EventKind.UNSUBSCRIBE
    else:
        return None  # opens, clicks, accepted: not kept (no tracking)
    recipient, event_id = data.get("recipient"), data.get("id")
    if not isinstance(recipient, str) or not isinstance(event_id, str):
        raise Refused(400, "an event without recipient or id")
    status = data.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    reason = text(
        f"{status.get('code', '')} {status.get('message') or status.get('description') or data.get('reason', '')}"
    )
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = headers.get("message-id") if isinstance(headers, dict) else None
    return DeliveryEvent(
        "mailgun",
        event_id,
        found,
        recipient,
        iso_from_epoch(data.get("timestamp"), now),
        reason if found is not EventKind.DELIVERED else "",
        (message_id,) if isinstance(message_id, str) else (),
    )
