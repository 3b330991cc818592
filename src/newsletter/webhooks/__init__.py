"""``POST /webhooks/<source>``: providers' delivery events, verified, then kept and applied.

One module per provider verifies its requests as the provider documents (``mailgun``,
``sendgrid``, ``postmark``, ``ses``, ``resend``); :class:`WebhookReceiver` is the WSGI app
that the web app hands every ``/webhooks/`` path to. For each request it

1. refuses what it will not read: an unknown source (404), another method (405), a body
   over ``[webhooks] max_body_bytes`` (413);
2. has the source verify it; a refusal is 400, 401 or 403 with an empty body, whatever the
   reason, and changes nothing (the reason goes to the log, without secret or signature);
3. records the events (``newsletter.events``) together with the request's delivery id, so a
   replay is acknowledged and changes nothing; the requests waiting together share one
   commit (``writer.py``), and each is answered once its events are on disk;
4. answers 200 with counts, also for events about addresses not on the list, so that the
   provider does not retry forever. A store that is busy or failing answers 503: the
   provider retries later.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import requests

from newsletter import events
from newsletter.errors import StoreError
from newsletter.settings import Settings
from newsletter.webhooks.common import Refused, Source, SourceContext, WebhookRequest
from newsletter.webhooks.mailgun import MailgunSource
from newsletter.webhooks.postmark import PostmarkSource
from newsletter.webhooks.resend import ResendSource
from newsletter.webhooks.sendgrid import SendgridSource
from newsletter.webhooks.ses import SNS_HOST, SesSource
from newsletter.webhooks.writer import EventWriter

PREFIX = "/webhooks/"
MAX_CERTIFICATE_BYTES = 64 * 1024
_SOURCE_NAME = re.compile(r"[a-z]{1,20}")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_PHRASES = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def build_sources(
    settings: Settings,
    *,
    sns_host: re.Pattern[str] = SNS_HOST,
    sns_ca_file: str | None = None,
) -> dict[str, Source]:
    """Every source ``[webhooks]`` switches on; WebhookConfigError when a secret is missing.

    ``sns_host`` and ``sns_ca_file`` exist for tests only (a loopback HTTPS server in place of
    sns.<region>.amazonaws.com): they are not settings.
    """
    context = SourceContext(
        fetch_certificate=lambda url: _fetch_certificate(url, sns_ca_file),
        confirm_subscription=lambda url: _confirm_subscription(url, sns_ca_file),
    )
    found: dict[str, Source] = {}
    for name, config in settings.webhooks.sources.items():
        if name == "ses":
            found[name] = SesSource(config, context, sns_host)
        else:
            kind = {
                "mailgun": MailgunSource,
                "sendgrid": SendgridSource,
                "postmark": PostmarkSource,
                "resend": ResendSource,
            }[name]
            found[name] = kind(config, context)
    return found


class WebhookReceiver:
    """The WSGI app behind ``/webhooks/<source>``; one instance serves every thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        sns_host: re.Pattern[str] = SNS_HOST,
        sns_ca_file: str | None = None,
    ):
        self.settings = settings
        self.clock = clock
        self.sources = build_sources(settings, sns_host=sns_host, sns_ca_file=sns_ca_file)
        # A delivery id must be remembered at least as long as its timestamp is accepted.
        remember = 2 * max((s.config.max_age for s in self.sources.values()), default=0)
        self.writer = EventWriter(
            settings.paths.database,
            soft_bounce_threshold=settings.webhooks.soft_bounce_threshold,
            remember_seconds=remember,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, body = self.handle(environ)
        except Exception:
            environ["wsgi.errors"].write(traceback.format_exc())
            status, body = 500, b""
        headers = [
            ("Content-Type", "application/json" if body else "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if status == 405:
            headers.append(("Allow", "POST"))
        start_response(f"{status} {_PHRASES[status]}", headers)
        return [body]

    def handle(self, environ: dict[str, Any]) -> tuple[int, bytes]:
        path = str(environ.get("PATH_INFO") or "")
        name = path[len(PREFIX) :].rstrip("/")
        source = self.sources.get(name) if _SOURCE_NAME.fullmatch(name) else None
        if source is None:
            return 404, b""
        if str(environ.get("REQUEST_METHOD", "")).upper() != "POST":
            return 405, b""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return 400, b""
        if length > self.settings.webhooks.max_body_bytes or length < 0:
            return 413, b""
        body = environ["wsgi.input"].read(length) if length else b""
        if len(body) != length:  # the connection ended part-way through the body
            return 400, b""
        request = WebhookRequest(_headers(environ), body, self.clock())
        log = environ["wsgi.errors"]
        try:
            verified = source.verify(request)
        except Refused as refused:
            log.write(f"newsletter serve: webhooks/{name}: refused ({refused.why})\n")
            return refused.status, b""
        except requests.RequestException as exc:
            log.write(f"newsletter serve: webhooks/{name}: {type(exc).__name__}; try again\n")
            return 503, b""
        if verified.note:
            log.write(f"newsletter serve: webhooks/{name}: {verified.note}\n")
        delivery = (
            (name, verified.delivery_id, request.now) if verified.delivery_id is not None else None
        )
        try:
            recorded = self.writer.record(verified.events, delivery)
        except events.AlreadySeen:
            # Its events are kept already. A provider retries a delivery whose answer it lost
            # (Svix keeps the id): a refusal would make it retry until it disables the
            # endpoint. So the replay is acknowledged and changes nothing.
            log.write(f"newsletter serve: webhooks/{name}: a delivery seen before; nothing done\n")
            return 200, b'{"duplicate": true}'
        except StoreError as exc:
            log.write(f"newsletter serve: webhooks/{name}: {exc}\n")
            return 503, b""
        answer = {
            "received": len(verified.events),
            "recorded": recorded.recorded,
            "duplicates": recorded.duplicates,
            "status_changes": len(recorded.changes),
        }
        return 200, json.dumps(answer).encode()


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    found = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_TYPE"):
        found["content-type"] = str(environ["CONTENT_TYPE"])
    return found


def _fetch_certificate(url: str, ca_file: str | None) -> bytes:
    with requests.get(
        url, timeout=10, allow_redirects=False, stream=True, verify=ca_file or True
    ) as response:
        if response.status_code != 200:
            raise OSError(f"HTTP {response.status_code}")
        data = response.raw.read(MAX_CERTIFICATE_BYTES + 1, decode_content=True)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise OSError("too large for a certificate")
    return bytes(data)


def _confirm_subscription(url: str, ca_file: str | None) -> None:
    response = requests.get(url, timeout=10, allow_redirects=False, verify=ca_file or True)
    response.raise_for_status()
