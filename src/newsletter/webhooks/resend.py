"""Resend signs its webhooks with Svix.

Headers ``svix-id``, ``svix-timestamp`` and ``svix-signature``; the signature is the base64
HMAC-SHA256 of ``id.timestamp.body`` keyed with the base64-decoded part of the secret after
``whsec_``. ``svix-signature`` may hold several space-separated ``v1,<signature>`` entries
(while a secret is rotated): one match is enough. The svix-id of a delivery seen before is a
replay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from newsletter.errors import WebhookConfigError
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
    iso_from_text,
    obj,
    parse_json,
    same,
    secret,
    text,
)

SECRET_VARIABLE = "RESEND_WEBHOOK_SECRET"


class ResendSource(Source):
    name = "resend"

    def __init__(self, config: WebhookSource, context: SourceContext):
        super().__init__(config, context)
        value = secret(SECRET_VARIABLE, self.name)
        try:
            self._key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookConfigError(
                f"{SECRET_VARIABLE} is not a Resend signing secret (whsec_ and base64); copy "
                "it from the webhook's page in Resend"
            ) from None

    def sign(self, delivery_id: str, timestamp: str, body: bytes) -> str:
        content = f"{delivery_id}.{timestamp}.".encode() + body
        return base64.b64encode(hmac.new(self._key, content, hashlib.sha256).digest()).decode()

    def verify(self, request: WebhookRequest) -> Verified:
        delivery_id = request.headers.get("svix-id", "")
        timestamp = request.headers.get("svix-timestamp", "")
        given = request.headers.get("svix-signature", "")
        if not delivery_id or not timestamp.isdigit() or not given:
            raise Refused(401, "no svix headers")
        expected = self.sign(delivery_id, timestamp, request.body)
        matched = False
        for entry in given.split():
            version, _, signature = entry.partition(",")
            # Every entry is compared, so the time taken does not say which one matched.
            matched |= version == "v1" and same(signature, expected)
        if not matched:
            raise Refused(401, "the signature does not match")
        check_age(float(timestamp), request.now, self.config.max_age)
        payload = parse_json(request.body)
        if not isinstance(payload, dict):
            raise Refused(400, "the body is not a JSON object")
        return Verified(_events(payload, delivery_id, request.now), delivery_id=delivery_id)

    def samples(self, now: float, private_key_pem: bytes | None = None) -> list[Sample]:
        payloads: list[tuple[str, dict[str, Any]]] = [
            ("email.delivered", {}),
            (
                "email.bounced",
                {"bounce": {"type": "Permanent", "subType": "General", "message": "No such user"}},
            ),
            ("email.complained", {}),
        ]
        recipients = ["alice@example.com", "bob@example.com", "carol@example.com"]
        found = []
        for (kind, extra), to in zip(payloads, recipients, strict=True):
            body = json.dumps(
                {
                    "type": kind,
                    "created_at": "2026-11-23T10:00:00.000Z",
                    "data": {
                        "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
                        "from": "Digest <digest@example.org>",
                        "to": [to],
                        "subject": "Sample",
                        **extra,
                    },
                }
            ).encode()
            delivery_id, timestamp = f"msg_{secrets.token_urlsafe(12)}", str(int(now))
            headers = {
                "Content-Type": "application/json",
                "svix-id": delivery_id,
                "svix-timestamp": timestamp,
                "svix-signature": "v1," + self.sign(delivery_id, timestamp, body),
            }
            found.append(Sample(f"{kind} ({to})", headers, body))
        return found


def _events(payload: dict[str, Any], delivery_id: str, now: float) -> list[DeliveryEvent]:
    kind = payload.get("type")
    data = payload.get("data")
    if not isinstance(data, dict):
        return []
    reason = ""
    if kind == "email.delivered":
        found = EventKind.DELIVERED
    elif kind == "email.bounced":
        bounce = obj(data.get("bounce"))
        permanent = bounce.get("type") == "Permanent"
        found = EventKind.HARD_BOUNCE if permanent else EventKind.SOFT_BOUNCE
        reason = text(
            f"{bounce.get('type', '')} {bounce.get('subType', '')}: {bounce.get('message', '')}"
        )
    elif kind == "email.complained":
        found = EventKind.COMPLAINT
    else:
        return []  # sent, opened, clicked, delivery_delayed and the rest
    to = data.get("to")
    recipients = [to] if isinstance(to, str) else [t for t in to or [] if isinstance(t, str)]
    at = iso_from_text(payload.get("created_at"), now)
    email_id = data.get("email_id")
    ids = (email_id,) if isinstance(email_id, str) else ()
    return [
        DeliveryEvent(
            "resend",
            delivery_id if len(recipients) == 1 else f"{delivery_id}:{address}",
            found,
            address,
            at,
            reason,
            ids,
        )
        for address in recipients
    ]
