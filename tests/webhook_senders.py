"""Test-side providers: each signs events as its service documents, independently of the app.

Keys and certificates are made here (``cryptography``, ``trustme``); the SNS signing
certificate is served over HTTPS from a loopback server, as sns.<region>.amazonaws.com would.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

MAILGUN_KEY = "mailgun-webhook-signing-key-0123456789"
POSTMARK_USER = "postmark-hooks"
POSTMARK_PASSWORD = "pm-webhook-password-0123456789"
RESEND_KEY = b"resend-test-signing-secret-32byt"
RESEND_SECRET = "whsec_" + base64.b64encode(RESEND_KEY).decode()
TOPIC = "arn:aws:sns:eu-west-1:123456789012:newsletter-events"
KINDS = ("delivered", "soft_bounce", "hard_bounce", "complaint", "unsubscribe")

Request = tuple[dict[str, str], bytes]


def iso(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class MailgunSender:
    source = "mailgun"

    def __init__(self, key: str = MAILGUN_KEY):
        self.key = key

    def event(
        self, kind: str, email: str, *, now: float, event_id: str = "", message_id: str = ""
    ) -> Request:
        names = {
            "delivered": ("delivered", {}),
            "soft_bounce": ("failed", {"severity": "temporary"}),
            "hard_bounce": ("failed", {"severity": "permanent"}),
            "complaint": ("complained", {}),
            "unsubscribe": ("unsubscribed", {}),
        }
        name, extra = names[kind]
        timestamp, token = str(int(now)), secrets.token_hex(25)
        signature = hmac.new(
            self.key.encode(), (timestamp + token).encode(), hashlib.sha256
        ).hexdigest()
        body = {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": {
                "event": name,
                "id": event_id or secrets.token_hex(8),
                "timestamp": now,
                "recipient": email,
                "message": {"headers": {"message-id": message_id or "none@example.org"}},
                "delivery-status": {"code": 550, "message": "No such user"},
                **extra,
            },
        }
        return {"Content-Type": "application/json"}, json.dumps(body).encode()


class SendgridSender:
    source = "sendgrid"

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def event(
        self, kind: str, email: str, *, now: float, event_id: str = "", message_id: str = ""
    ) -> Request:
        names = {
            "delivered": {"event": "delivered"},
            "soft_bounce": {"event": "bounce", "type": "blocked"},
            "hard_bounce": {"event": "bounce", "type": "bounce", "status": "5.1.1"},
            "complaint": {"event": "spamreport"},
            "unsubscribe": {"event": "unsubscribe"},
        }
        item = {
            "email": email,
            "timestamp": int(now),
            "sg_event_id": event_id or secrets.token_hex(8),
            "sg_message_id": f"{message_id or 'none'}.filterdrecv-1.0",
            **names[kind],
        }
        return self.sign(json.dumps([item]).encode(), now)

    def sign(self, body: bytes, now: float) -> Request:
        timestamp = str(int(now))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }, body


class PostmarkSender:
    source = "postmark"

    def __init__(self, password: str = POSTMARK_PASSWORD):
        self.password = password

    def event(
        self, kind: str, email: str, *, now: float, event_id: str = "", message_id: str = ""
    ) -> Request:
        record_id = event_id or str(secrets.randbelow(10**9))
        at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
        bounce = {"Email": email, "ID": int(record_id) if record_id.isdigit() else record_id}
        records: dict[str, dict[str, Any]] = {
            "delivered": {"RecordType": "Delivery", "Recipient": email, "DeliveredAt": at},
            "soft_bounce": {"RecordType": "Bounce", "Type": "SoftBounce", **bounce},
            "hard_bounce": {"RecordType": "Bounce", "Type": "HardBounce", **bounce},
            "complaint": {"RecordType": "SpamComplaint", "Type": "SpamComplaint", **bounce},
            "unsubscribe": {
                "RecordType": "SubscriptionChange",
                "Recipient": email,
                "SuppressSending": True,
                "SuppressionReason": "ManualSuppression",
                "Origin": "Recipient",
                "ChangedAt": at,
            },
        }
        record = {**records[kind], "MessageID": message_id or "none", "BouncedAt": at}
        return self.sign(json.dumps(record).encode(), now)

    def sign(self, body: bytes, now: float) -> Request:
        pair = f"{POSTMARK_USER}:{self.password}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
        return {"Content-Type": "application/json", "Authorization": auth}, body


class ResendSender:
    source = "resend"

    def __init__(self, key: bytes = RESEND_KEY):
        self.key = key

    def event(
        self, kind: str, email: str, *, now: float, event_id: str = "", message_id: str = ""
    ) -> Request:
        names: dict[str, tuple[str, dict[str, Any]]] = {
            "delivered": ("email.delivered", {}),
            "soft_bounce": ("email.bounced", {"bounce": {"type": "Transient", "message": "x"}}),
            "hard_bounce": ("email.bounced", {"bounce": {"type": "Permanent", "message": "x"}}),
            "complaint": ("email.complained", {}),
            "unsubscribe": ("email.complained", {}),  # Resend reports no unsubscribe event
        }
        name, extra = names[kind]
        data = {"email_id": message_id or "none", "to": [email], **extra}
        body = json.dumps({"type": name, "created_at": iso(now), "data": data}).encode()
        return self.sign(body, now, event_id=event_id)

    def sign(self, body: bytes, now: float, *, event_id: str = "") -> Request:
        delivery_id, timestamp = event_id or f"msg_{secrets.token_hex(8)}", str(int(now))
        content = f"{delivery_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(self.key, content, hashlib.sha256).digest())
        other = base64.b64encode(secrets.token_bytes(32)).decode()
        return {
            "Content-Type": "application/json",
            "svix-id": delivery_id,
            "svix-timestamp": timestamp,
            # Two signatures, as during a key rotation: one match is enough.
            "svix-signature": f"v1,{other} v1,{signature.decode()}",
        }, body


@dataclass
class SnsServer:
    """The loopback stand-in for sns.<region>.amazonaws.com: serves the certificate, and
    records the subscription confirmations it is asked for."""

    base: str
    ca_file: Path
    confirmations: list[str] = field(default_factory=list)
    fetches: list[str] = field(default_factory=list)


def signing_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


@contextmanager
def sns_server(tmp_path: Path, certificate_pem: bytes) -> Iterator[SnsServer]:
    ca = trustme.CA()
    ca_file = tmp_path / "sns-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    record = SnsServer("", ca_file)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/confirm"):
                record.confirmations.append(self.path)
                body = b"<ConfirmSubscriptionResponse/>"
            else:
                record.fetches.append(self.path)
                body = certificate_pem
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    record.base = f"https://localhost:{server.server_address[1]}"
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class SesSender:
    source = "ses"

    def __init__(self, key: rsa.RSAPrivateKey, cert_url: str, topic: str = TOPIC):
        self.key, self.cert_url, self.topic = key, cert_url, topic
        self.version = "2"

    def event(
        self, kind: str, email: str, *, now: float, event_id: str = "", message_id: str = ""
    ) -> Request:
        mail = {"messageId": "ses-0001", "commonHeaders": {"messageId": message_id or "<x@y>"}}
        notifications: dict[str, dict[str, Any]] = {
            "delivered": {
                "notificationType": "Delivery",
                "delivery": {"timestamp": iso(now), "recipients": [email]},
            },
            "soft_bounce": {
                "notificationType": "Bounce",
                "bounce": {
                    "bounceType": "Transient",
                    "bounceSubType": "MailboxFull",
                    "timestamp": iso(now),
                    "bouncedRecipients": [{"emailAddress": email}],
                },
            },
            "hard_bounce": {
                "notificationType": "Bounce",
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "timestamp": iso(now),
                    "bouncedRecipients": [{"emailAddress": email, "diagnosticCode": "550"}],
                },
            },
            "complaint": {
                "eventType": "Complaint",
                "complaint": {
                    "timestamp": iso(now),
                    "complainedRecipients": [{"emailAddress": email}],
                },
            },
            "unsubscribe": {
                "eventType": "Complaint",
                "complaint": {
                    "timestamp": iso(now),
                    "complainedRecipients": [{"emailAddress": email}],
                },
            },
        }
        message = json.dumps({**notifications[kind], "mail": mail})
        return self.envelope("Notification", message, now=now, message_id=event_id)

    def envelope(
        self, kind: str, message: str, *, now: float, message_id: str = "", **extra: str
    ) -> Request:
        fields: dict[str, str] = {
            "Type": kind,
            "MessageId": message_id or secrets.token_hex(16),
            "TopicArn": self.topic,
            "Message": message,
            "Timestamp": iso(now),
            **extra,
        }
        keys = (
            ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
            if kind == "Notification"
            else ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        )
        to_sign = "".join(f"{k}\n{fields[k]}\n" for k in keys if k in fields).encode()
        algorithm = hashes.SHA1() if self.version == "1" else hashes.SHA256()
        signature = self.key.sign(to_sign, padding.PKCS1v15(), algorithm)
        fields |= {
            "SignatureVersion": self.version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": self.cert_url,
        }
        return {"Content-Type": "text/plain; charset=UTF-8"}, json.dumps(fields).encode()


def now() -> float:
    return time.time()
