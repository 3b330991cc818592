"""Helpers for the HTTP provider tests: settings pointing at the loopback server, a batch."""

from __future__ import annotations

from pathlib import Path

from pytest_httpserver import HTTPServer

from newsletter.messages import OutgoingMessage, prepare_issue
from newsletter.settings import Settings

from .conftest import make_recipient, make_rendered, write_settings

CREDENTIALS = {
    "mailgun": ("MAILGUN_API_KEY", "key-test-0123456789"),
    "sendgrid": ("SENDGRID_API_KEY", "SG.test-0123456789"),
    "postmark": ("POSTMARK_SERVER_TOKEN", "pm-test-0123456789"),
    "resend": ("RESEND_API_KEY", "re_test_0123456789"),
}
PATHS = {
    "mailgun": "/v3/example.org/messages",
    "sendgrid": "/v3/mail/send",
    "postmark": "/email/batch",
    "resend": "/emails/batch",
}


def http_settings(tmp_path: Path, provider: str, server: HTTPServer, extra: str = "") -> Settings:
    base_url = server.url_for("/").rstrip("/")
    table = f'[provider]\nname = "{provider}"\nbase_url = "{base_url}"\ntimeout = 5\n'
    return write_settings(tmp_path, table + extra)


def batch(settings: Settings, count: int = 3, **names: str) -> list[OutgoingMessage]:
    prepared = prepare_issue(make_rendered(), settings)
    return [
        prepared.message_for(make_recipient(n, name=names.get(f"n{n}", f"Reader {n}")))
        for n in range(1, count + 1)
    ]
