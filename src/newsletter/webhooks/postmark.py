"""Postmark: no signature exists; the webhook URL carries HTTP basic auth credentials.

The URL pasted into Postmark is ``https://USER:PASSWORD@news.example.org/webhooks/postmark``;
Postmark sends ``Authorization: Basic …``. Both parts are compared in constant time, and both
always: a comparison that stops at the first wrong byte lets a stranger time their way in.
Postmark signs no time and no delivery id, so a replayed request cannot be told from
Postmark's own retry: it is acknowledged and changes nothing, because every event is kept
once (its id is Postmark's record id, or the message and recipient where there is none).
"""

from __future__ import annotations

import base64
import binascii
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
    iso_from_text,
    parse_json,
    same,
    secret,
    text,
)

PASSWORD_VARIABLE = "POSTMARK_WEBHOOK_PASSWORD"
_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}
_SOFT = {"SoftBounce", "Transient", "DnsError"}


class PostmarkSource(Source):
    name = "postmark"

    def __init__(self, config: WebhookSource, context: SourceContext):
        super().__init__(config, context)
        self._password = secret(PASSWORD_VARIABLE, self.name)

    def authorization(self) -> str:
        pair = f"{self.config.username}:{self._password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def verify(self, request: WebhookRequest) -> Verified:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        user, _, password = given.partition(b":")
        # Both comparisons always run: no early exit that would time the user name alone.
        user_ok = same(user, self.config.username)
        password_ok = same(password, self._password)
        if not (scheme.lower() == "basic" and user_ok & password_ok):
            raise Refused(401, "wrong or missing credentials")
        payload = parse_json(request.body)
        if not isinstance(payload, dict):
            raise Refused(400, "the body is not a JSON object")
        event = _event(payload, request.now)
        return Verified([event] if event else [], delivery_id=None)

    def samples(self, now: float, private_key_pem: bytes | None = None) -> list[Sample]:
        headers = {"Content-Type": "application/json", "Authorization": self.authorization()}
        stamp = "2026-11-23T10:00:00.1234567-05:00"
        message_id = "883953f4-6105-42a2-a16a-77a8eac79483"
        records: list[dict[str, Any]] = [
            {
                "RecordType": "Delivery",
                "MessageID": message_id,
                "Recipient": "alice@example.com",
                "DeliveredAt": stamp,
                "Details": "Test delivery webhook details",
            },
            {
                "RecordType": "Bounce",
                "ID": secrets.randbelow(10**9),
                "Type": "HardBounce",
                "TypeCode": 1,
                "MessageID": message_id,
                "Description": "The server was unable to deliver your message.",
                "Email": "bob@example.com",
                "BouncedAt": stamp,
            },
            {
                "RecordType": "SpamComplaint",
                "ID": secrets.randbelow(10**9),
                "Type": "SpamComplaint",
                "MessageID": message_id,
                "Email": "carol@example.com",
                "BouncedAt": stamp,
            },
        ]
        return [Sample(f"{r['RecordType']}", headers, json.dumps(r).encode()) for r in records]


def _event(record: dict[str, Any], now: float) -> DeliveryEvent | None:
    kind = record.get("RecordType")
    message_id = str(record.get("MessageID") or "")
    ids = (message_id,) if message_id else ()
    if kind == "Delivery":
        email = record.get("Recipient")
        if not isinstance(email, str):
            return None
        at = iso_from_text(record.get("DeliveredAt"), now)
        return DeliveryEvent(
            "postmark", f"Delivery:{message_id}:{email}", EventKind.DELIVERED, email, at, "", ids
        )
    if kind in ("Bounce", "SpamComplaint"):
        email, record_id = record.get("Email"), record.get("ID")
        if not isinstance(email, str) or record_id is None:
            return None
        bounce_type = str(record.get("Type", ""))
        if kind == "SpamComplaint" or bounce_type == "SpamComplaint":
            found = EventKind.COMPLAINT
        elif bounce_type in _HARD:
            found = EventKind.HARD_BOUNCE
        elif bounce_type in _SOFT:
            found = EventKind.SOFT_BOUNCE
        elif bounce_type == "Unsubscribe":
            found = EventKind.UNSUBSCRIBE
        else:
            return None  # auto-responders, challenge verifications and the like
        reason = text(f"{bounce_type}: {record.get('Description') or record.get('Details') or ''}")
        at = iso_from_text(record.get("BouncedAt"), now)
        return DeliveryEvent("postmark", f"{kind}:{record_id}", found, email, at, reason, ids)
    if kind == "SubscriptionChange":
        email = record.get("Recipient")
        # Postmark files a reader's own unsubscribe as a manual suppression; bounces and
        # complaints arrive as their own records.
        if (
            not isinstance(email, str)
            or record.get("SuppressSending") is not True
            or record.get("SuppressionReason") != "ManualSuppression"
        ):
            return None
        changed = str(record.get("ChangedAt") or "")
        at = iso_from_text(changed, now)
        return DeliveryEvent(
            "postmark",
            f"SubscriptionChange:{message_id}:{email}:{changed}",
            EventKind.UNSUBSCRIBE,
            email,
            at,
            text(f"unsubscribe ({record.get('Origin', 'unknown origin')})"),
            ids,
        )
    return None
