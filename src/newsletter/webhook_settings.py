"""The ``[webhooks]`` table: which providers may post events, and the limits that apply.

Webhook sources are configured on their own, independent of the sending provider (SES, for
one, sends through the smtp provider). A source is switched on by its sub-table::

    [webhooks]
    soft_bounce_threshold = 3      # soft bounces (on different days) that make an address bounced
    max_body_bytes = 1048576       # larger requests are refused (413)

    [webhooks.mailgun]             # signing key: $MAILGUN_WEBHOOK_SIGNING_KEY
    [webhooks.sendgrid]
    public_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE..."   # base64 DER, from SendGrid
    [webhooks.postmark]
    username = "postmark"          # password: $POSTMARK_WEBHOOK_PASSWORD
    [webhooks.ses]
    topic_arns = ["arn:aws:sns:eu-west-1:123456789012:newsletter-events"]
    [webhooks.resend]              # signing secret (whsec_…): $RESEND_WEBHOOK_SECRET

Secrets come from environment variables only; the public key and the topic ARNs are not
secret. Each source also takes ``max_age``: how old, in seconds, a signed timestamp may be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newsletter.errors import SettingsError

SOURCES = ("mailgun", "sendgrid", "postmark", "ses", "resend")
# Five minutes where the provider signs the time of the request; SNS signs the time the
# notification was published and retries the same signed message for up to an hour.
DEFAULT_MAX_AGE = {"ses": 3600}
_SOURCE_KEYS = {
    "mailgun": {"max_age"},
    "sendgrid": {"max_age", "public_key"},
    "postmark": {"username"},
    "ses": {"max_age", "topic_arns"},
    "resend": {"max_age"},
}
_TOP_KEYS = {"soft_bounce_threshold", "max_body_bytes"}


@dataclass(frozen=True)
class WebhookSource:
    name: str
    max_age: int = 300
    public_key: str = ""  # sendgrid
    username: str = ""  # postmark
    topic_arns: tuple[str, ...] = ()  # ses


@dataclass(frozen=True)
class WebhookSettings:
    sources: dict[str, WebhookSource] = field(default_factory=dict)
    soft_bounce_threshold: int = 3
    max_body_bytes: int = 1024 * 1024


def parse_webhooks(raw: dict[str, Any], where: Path) -> WebhookSettings:
    """The ``[webhooks]`` table, every key checked; SettingsError naming the key otherwise."""
    sources: dict[str, WebhookSource] = {}
    for key, value in raw.items():
        if key in _TOP_KEYS:
            continue
        if key not in SOURCES:
            known = ", ".join([*sorted(_TOP_KEYS), *(f"[webhooks.{s}]" for s in SOURCES)])
            raise SettingsError(
                f"unknown key; [webhooks] takes: {known}", path=where, key=f"webhooks.{key}"
            )
        if not isinstance(value, dict):
            raise SettingsError("must be a table", path=where, key=f"webhooks.{key}")
        sources[key] = _source(key, value, where)
    return WebhookSettings(
        sources=sources,
        soft_bounce_threshold=_count(raw, "soft_bounce_threshold", 3, where, "webhooks"),
        max_body_bytes=_count(raw, "max_body_bytes", 1024 * 1024, where, "webhooks"),
    )


def _source(name: str, raw: dict[str, Any], where: Path) -> WebhookSource:
    table = f"webhooks.{name}"
    for key in raw:
        if key not in _SOURCE_KEYS[name]:
            takes = ", ".join(sorted(_SOURCE_KEYS[name]))
            raise SettingsError(
                f"unknown key; [{table}] takes: {takes}", path=where, key=f"{table}.{key}"
            )
    strings = {}
    for key in ("public_key", "username"):
        value = raw.get(key, "")
        if not isinstance(value, str):
            raise SettingsError("must be a string", path=where, key=f"{table}.{key}")
        strings[key] = value.strip()
    if name == "sendgrid" and not strings["public_key"]:
        raise SettingsError(
            "missing: paste the verification key SendGrid shows under Mail Settings > "
            "Event Webhook > Signature verification",
            path=where,
            key=f"{table}.public_key",
        )
    if name == "postmark" and not strings["username"]:
        raise SettingsError(
            "missing: the user name you put in the webhook URL (https://USER:PASSWORD@...)",
            path=where,
            key=f"{table}.username",
        )
    arns = raw.get("topic_arns", [])
    if not isinstance(arns, list) or not all(
        isinstance(a, str) and a.startswith("arn:") for a in arns
    ):
        raise SettingsError(
            "must be a list of SNS topic ARNs such as "
            '["arn:aws:sns:eu-west-1:123456789012:newsletter-events"]',
            path=where,
            key=f"{table}.topic_arns",
        )
    if name == "ses" and not arns:
        raise SettingsError(
            "missing: list the SNS topics SES publishes to (notifications from any other "
            "topic are refused)",
            path=where,
            key=f"{table}.topic_arns",
        )
    max_age = _count(raw, "max_age", DEFAULT_MAX_AGE.get(name, 300), where, table)
    return WebhookSource(name, max_age, topic_arns=tuple(arns), **strings)


def _count(raw: dict[str, Any], key: str, default: int, where: Path, table: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(
            f"must be a whole number above 0, not {value!r}", path=where, key=f"{table}.{key}"
        )
    return value
