"""Amazon SES through SNS: SNS signs each message with an RSA key whose certificate it names.

Checks, in order, before the message is used:

1. ``TopicArn`` is one of ``[webhooks.ses] topic_arns`` (anyone can make an SNS topic);
2. ``SigningCertURL`` is ``https://sns.<region>.amazonaws.com/…`` (no other host, no user
   info, no other port), fetched over verified HTTPS and cached;
3. the signature: SignatureVersion 1 is RSA PKCS#1 v1.5 with SHA-1, version 2 with SHA-256,
   over the documented "string to sign" (``Key\\nValue\\n`` for the signed keys, in order);
4. ``Timestamp`` within ``max_age`` (SNS signs the publish time and retries the same
   message, hence an hour by default), and a ``MessageId`` not seen before.

A ``SubscriptionConfirmation`` that passes is confirmed by fetching its ``SubscribeURL``,
which must be on the same kind of host. The notification's ``Message`` is SES's JSON
(``notificationType`` or, for configuration-set event publishing, ``eventType``).
"""

from __future__ import annotations

import re
import threading
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
    iso_from_text,
    obj,
    parse_json,
    text,
)

SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")
_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_KEYS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
_CACHE_SIZE = 16


def string_to_sign(message: dict[str, Any]) -> bytes:
    """SNS's documented string to sign for ``message`` (Subject only when present)."""
    keys = _NOTIFICATION_KEYS if message.get("Type") == "Notification" else _CONFIRMATION_KEYS
    return "".join(
        f"{key}\n{message[key]}\n" for key in keys if message.get(key) is not None
    ).encode("utf-8")


class SesSource(Source):
    name = "ses"

    def __init__(self, config: WebhookSource, context: SourceContext, host: re.Pattern[str]):
        super().__init__(config, context)
        self._host = host
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def verify(self, request: WebhookRequest) -> Verified:
        message = parse_json(request.body)
        if not isinstance(message, dict) or not all(
            isinstance(message.get(k), str)
            for k in ("Type", "MessageId", "TopicArn", "Timestamp", "Signature", "SigningCertURL")
        ):
            raise Refused(401, "not a signed SNS message")
        if message["TopicArn"] not in self.config.topic_arns:
            raise Refused(403, "a topic that is not in [webhooks.ses] topic_arns")
        kind = message["Type"]
        algorithm = _HASHES.get(str(message.get("SignatureVersion")))
        if kind not in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
            raise Refused(401, "an unknown SNS message type")
        if algorithm is None:
            raise Refused(401, "an unknown SignatureVersion")
        key = self._certificate_key(message["SigningCertURL"])
        signature = b64decode(message["Signature"], "the signature is not base64")
        try:
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise Refused(401, "the signature does not match") from None
        check_age(_epoch(message["Timestamp"]), request.now, self.config.max_age)
        if kind == "SubscriptionConfirmation":
            url = message.get("SubscribeURL")
            if not isinstance(url, str) or not self._allowed(url):
                raise Refused(403, "a SubscribeURL on a host that is not SNS")
            assert self.context.confirm_subscription is not None
            self.context.confirm_subscription(url)
            return Verified(
                [], message["MessageId"], f"confirmed the subscription to {message['TopicArn']}"
            )
        if kind == "UnsubscribeConfirmation":
            return Verified([], message["MessageId"], "unsubscribe confirmation ignored")
        notification = parse_json(str(message.get("Message", "")).encode())
        if not isinstance(notification, dict):
            raise Refused(400, "the SES notification is not a JSON object")
        return Verified(
            _events(notification, message["MessageId"], request.now), message["MessageId"]
        )

    def samples(self, now: float, private_key_pem: bytes | None = None) -> list[Sample]:
        raise NotImplementedError  # only Amazon holds the signing key; see docs/webhooks.md

    def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        return (
            parts.scheme == "https"
            and parts.username is None
            and parts.password is None
            and self._host.fullmatch(parts.netloc) is not None
        )

    def _certificate_key(self, url: str) -> rsa.RSAPublicKey:
        if not self._allowed(url) or not urlsplit(url).path.endswith(".pem"):
            raise Refused(403, "a signing certificate that is not on an SNS host")
        with self._lock:
            cached = self._keys.get(url)
        if cached is not None:
            return cached
        assert self.context.fetch_certificate is not None
        try:
            pem = self.context.fetch_certificate(url)
            key = x509.load_pem_x509_certificate(pem).public_key()
        except (OSError, ValueError):
            raise Refused(401, "the signing certificate cannot be fetched or read") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused(401, "the signing certificate has no RSA key")
        with self._lock:
            if len(self._keys) >= _CACHE_SIZE:
                self._keys.pop(next(iter(self._keys)))
            self._keys[url] = key
        return key


def _epoch(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Refused(401, "the timestamp is not a time") from None


def _events(notification: dict[str, Any], message_id: str, now: float) -> list[DeliveryEvent]:
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = obj(notification.get("mail"))
    common = obj(mail.get("commonHeaders"))
    ids = tuple(
        i for i in (common.get("messageId"), mail.get("messageId")) if isinstance(i, str) and i
    )
    found: list[tuple[EventKind, str, str]] = []  # (kind, address, reason)
    if kind == "Bounce":
        bounce = obj(notification.get("bounce"))
        permanent = bounce.get("bounceType") == "Permanent"
        event_kind = EventKind.HARD_BOUNCE if permanent else EventKind.SOFT_BOUNCE
        detail = f"{bounce.get('bounceType', '')}/{bounce.get('bounceSubType', '')}"
        at = iso_from_text(bounce.get("timestamp"), now)
        for recipient in bounce.get("bouncedRecipients") or []:
            if isinstance(recipient, dict) and isinstance(recipient.get("emailAddress"), str):
                reason = text(f"{detail}: {recipient.get('diagnosticCode', '')}")
                found.append((event_kind, recipient["emailAddress"], reason))
    elif kind == "Complaint":
        complaint = obj(notification.get("complaint"))
        at = iso_from_text(complaint.get("timestamp"), now)
        reason = text(complaint.get("complaintFeedbackType") or "complaint")
        for recipient in complaint.get("complainedRecipients") or []:
            if isinstance(recipient, dict) and isinstance(recipient.get("emailAddress"), str):
                found.append((EventKind.COMPLAINT, recipient["emailAddress"], reason))
    elif kind == "Delivery":
        delivery = obj(notification.get("delivery"))
        at = iso_from_text(delivery.get("timestamp"), now)
        for address in delivery.get("recipients") or []:
            if isinstance(address, str):
                found.append((EventKind.DELIVERED, address, ""))
    else:
        return []
    return [
        DeliveryEvent("ses", f"{message_id}:{address}", event_kind, address, at, reason, ids)
        for event_kind, address, reason in found
    ]
