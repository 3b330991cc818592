"""SendGrid's Signed Event Webhook: ECDSA P-256 with SHA-256 over ``timestamp + raw body``.

The signature (base64 DER) is in ``X-Twilio-Email-Event-Webhook-Signature``, the time in
``X-Twilio-Email-Event-Webhook-Timestamp``; the public key (base64 DER, as SendGrid shows it)
is in ``[webhooks.sendgrid] public_key``. The body is a JSON array of events. ECDSA signatures
are randomised, so the same signature seen twice is a replay of one request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
    b64decode,
    check_age,
    iso_from_epoch,
    parse_json,
    text,
)

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"


class SendgridSource(Source):
    name = "sendgrid"

    def __init__(self, config: WebhookSource, context: SourceContext):
        super().__init__(config, context)
        self._key = load_public_key(config.public_key)

    def verify(self, request: WebhookRequest) -> Verified:
        signature = request.headers.get(SIGNATURE_HEADER, "")
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        if not signature or not timestamp.isdigit():
            raise Refused(401, "no signature or timestamp headers")
        raw = b64decode(signature, "the signature is not base64")
        try:
            self._key.verify(raw, timestamp.encode() + request.body, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Refused(401, "the signature does not match") from None
        check_age(float(timestamp), request.now, self.config.max_age)
        payload = parse_json(request.body)
        if not isinstance(payload, list):
            raise Refused(400, "the body is not a list of events")
        events = [e for e in (_event(item, request.now) for item in payload) if e is not None]
        return Verified(events, delivery_id=hashlib.sha256(raw).hexdigest())

    def samples(self, now: float, private_key_pem: bytes | None = None) -> list[Sample]:
        if private_key_pem is None:
            raise WebhookConfigError(
                "sendgrid: signing a sample needs the private key that goes with "
                "[webhooks.sendgrid] public_key (--private-key FILE); SendGrid keeps its own, "
                "so test against a newsletter.toml holding a key pair you made"
            )
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise WebhookConfigError("sendgrid: --private-key must be an EC (P-256) key")
        events = [
            _sample("delivered", "alice@example.com", now),
            _sample("bounce", "bob@example.com", now, type="bounce", status="5.1.1"),
            _sample("spamreport", "carol@example.com", now),
        ]
        timestamp = str(int(now))
        body = json.dumps(events).encode()
        signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }
        return [Sample("delivered, bounce, spamreport (one batch)", headers, body)]


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise WebhookConfigError(
            "[webhooks.sendgrid] public_key is not a base64 P-256 public key; copy the "
            "verification key SendGrid shows under Mail Settings > Event Webhook"
        )
    return key


def _sample(kind: str, email: str, now: float, **extra: str) -> dict[str, Any]:
    return {
        "email": email,
        "timestamp": int(now),
        "event": kind,
        "sg_event_id": secrets.token_urlsafe(16),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        **extra,
    }


_KINDS = {
    "delivered": EventKind.DELIVERED,
    "spamreport": EventKind.COMPLAINT,
    "unsubscribe": EventKind.UNSUBSCRIBE,
    "group_unsubscribe": EventKind.UNSUBSCRIBE,
}


def _event(item: object, now: float) -> DeliveryEvent | None:
    if not isinstance(item, dict):
        return None
    kind = str(item.get("event", ""))
    if kind == "bounce":
        # "blocked" is a temporary refusal by the receiving server; "bounce" is permanent.
        found = EventKind.SOFT_BOUNCE if item.get("type") == "blocked" else EventKind.HARD_BOUNCE
    elif kind in _KINDS:
        found = _KINDS[kind]
    else:
        return None  # processed, deferred, dropped, opens, clicks
    email, event_id = item.get("email"), item.get("sg_event_id")
    if not isinstance(email, str) or not isinstance(event_id, str):
        return None
    ids = []
    sg_message_id = item.get("sg_message_id")
    if isinstance(sg_message_id, str) and sg_message_id:
        # "<X-Message-Id of the send>.filter…": the part before the first dot is what the
        # send recorded.
        ids.append(sg_message_id.split(".", 1)[0])
    if isinstance(item.get("smtp-id"), str):
        ids.append(item["smtp-id"])
    reason = text(f"{item.get('status', '')} {item.get('reason', '')}")
    return DeliveryEvent(
        "sendgrid",
        event_id,
        found,
        email,
        iso_from_epoch(item.get("timestamp"), now),
        reason,
        tuple(ids),
    )
