"""``newsletter serve``: the web endpoints behind the links in every email, as a WSGI app.

    GET  /unsubscribe/<token>   a page with an Unsubscribe button and the topic choices
    POST /unsubscribe/<token>   unsubscribes; also the RFC 8058 one-click POST of mail clients
    POST /preferences/<token>   saves the chosen topics
    POST /data/<token>          "Download my data": everything kept about the reader, as JSON
    POST /erase/<token>         "Erase me": a confirmation page; with confirm=yes, erases
    GET  /subscribe  (and /)    the subscribe form
    POST /subscribe             records a pending subscriber and queues a confirmation email
    GET  /confirm/<token>       a page with a Confirm button
    POST /confirm/<token>       confirms the subscription (double opt-in)

A GET never changes the store: mail security scanners open every link in a message, and an
unsubscribe must only ever come from a person pressing a button or from a mail client's
one-click POST. Tokens are checked (HMAC, see ``newsletter.tokens``) before the store is
opened, so a forged link costs nothing. The one-click POST needs no cookie and no CSRF
token, as RFC 8058 requires: the signed token in the URL is the authority, and it answers
200 with a page, never a redirect.

The subscribe form answers every valid request with the same page, in the same time, and
sends nothing while the visitor waits: the confirmation is queued in the store and sent by the
app's own background thread (or by ``newsletter run-due``). Per-client and overall allowances
kept in the store answer a flood with a polite 429 (see ``newsletter.subscribe_requests``).

The app is plain WSGI without a framework: ``newsletter serve`` runs it on the standard
library's server, and ``create_app`` is the factory for a production server, e.g.
``gunicorn 'newsletter.web:create_app()'``.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import itertools
import json
import math
import os
import queue
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _make_wsgiref_server

from newsletter import audit, confirmation, consent, erasure, store, subscribe_requests
from newsletter.confirmation import ConfirmationWorker, SendConfirmation, send_confirmation
from newsletter.consent import ConsentEvent
from newsletter.errors import InvalidInput, StoreError, TokenError, excerpt
from newsletter.messages import ONE_CLICK
from newsletter.render import render_template, template_source
from newsletter.settings import Settings, find_settings, load_settings
from newsletter.store import SOURCE_WEB, SUPPRESSED, Status, StoreConnection, Subscriber
from newsletter.subscribe_requests import Verdict
from newsletter.tokens import CONFIRM, UNSUBSCRIBE, Signer, TokenClaims
from newsletter.webhooks import PREFIX as WEBHOOKS_PREFIX
from newsletter.webhooks import WebhookReceiver

CONFIG_ENV = "NEWSLETTER_CONFIG"
MAX_BODY_BYTES = 64 * 1024
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_TOKEN_IN_PATH = re.compile(r"/(unsubscribe|preferences|confirm|data|erase)/[^ ?]+")
# The request's path without its token, set in the WSGI environ for access logs.
LOG_PATH_KEY = "newsletter.log_path"
_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/unsubscribe/([^/]*)/?"), "unsubscribe"),
    (re.compile(r"/preferences/([^/]*)/?"), "preferences"),
    (re.compile(r"/confirm/([^/]*)/?"), "confirm"),
    (re.compile(r"/data/([^/]*)/?"), "data"),
    (re.compile(r"/erase/([^/]*)/?"), "erase"),
    (re.compile(r"/(?:subscribe/?)?()"), "subscribe"),
]
# Pages that only act, so only a POST (a person's button) reaches them: link scanners GET.
_POST_ONLY = frozenset({"preferences", "data", "erase"})
# Tokens in the URL must not leak to other sites (Referer) or be cached on the way.
_SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src https:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass
class Page:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class _RequestRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Form:
    """The fields of a POST body, each name with all its values in order."""

    fields: list[tuple[str, str]]

    def get(self, name: str) -> str:
        return next((value for key, value in self.fields if key == name), "")

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]


def read_form(environ: dict[str, Any]) -> Form:
    """The POST body as form fields: urlencoded or multipart/form-data (both RFC 8058 forms)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _RequestRejected(400, "The request's Content-Length is not a number.") from None
    if length > MAX_BODY_BYTES or length < 0:
        raise _RequestRejected(413, "The request is too large.")
    body = environ["wsgi.input"].read(length) if length else b""
    if len(body) != length:
        # The client went away part-way: what arrived is not the form it sent (the end of a
        # preferences form cut off would unsubscribe the reader from the topics it held).
        raise _RequestRejected(400, "The request ended before the length it announced.")
    content_type = str(environ.get("CONTENT_TYPE") or "")
    header = EmailMessage()
    header["Content-Type"] = content_type or "application/x-www-form-urlencoded"
    kind = header.get_content_type()
    if kind == "multipart/form-data":
        return Form(_multipart_fields(content_type, body))
    if kind == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        return Form(parse_qsl(text, keep_blank_values=True))
    return Form([])


def _multipart_fields(content_type: str, body: bytes) -> list[tuple[str, str]]:
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        return []
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        charset = part.get_content_charset() or "utf-8"
        try:
            fields.append((name, raw.decode(charset, "replace")))
        except LookupError:  # unknown, or not a text encoding (base64, rot13)
            raise _RequestRejected(
                400,
                f"A field of the form is in a character set this server does not know "
                f"({excerpt(charset, 40)}); send the form as UTF-8.",
            ) from None
    return fields


class WebApp:
    """The WSGI application; one instance serves every request, from any number of threads."""

    def __init__(
        self,
        settings: Settings,
        signer: Signer | None = None,
        *,
        send: SendConfirmation = send_confirmation,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 30.0,
        webhooks: WebhookReceiver | None = None,
    ):
        self.settings = settings
        # Without a signing secret no link can be checked: fail at start-up, not per request.
        self.signer = signer or Signer.for_settings(settings)
        # Providers' delivery events (docs/webhooks.md); a missing webhook secret stops start-up.
        self.webhooks = webhooks or WebhookReceiver(settings, clock=clock)
        self.limits = subscribe_requests.limits_from_settings(settings)
        self.trusted_proxies = subscribe_requests.trusted_proxies_from_settings(settings)
        # (Checked when the settings were read.)
        mode = settings.section("web").get("confirmations", "worker")
        self.worker = (
            ConfirmationWorker(
                settings,
                self.signer,
                self.limits,
                send=send,
                clock=clock,
                poll_seconds=poll_seconds,
            )
            if mode == "worker"
            else None
        )
        # Nor without the store: a mistyped path would answer "you are unsubscribed" while
        # the real list keeps mailing the reader. This also migrates it once, up front.
        store.open_store(settings.paths.database, create=False).close()
        self.connections = store.StoreConnections(settings.paths.database)
        self.clock = clock
        self.full_ip = consent.full_ip_from_settings(settings)
        # The version of the consent text each page shows: a hash of its template as found,
        # with the settings it prints (the newsletter's name, why the reader gets it).
        self._text_versions = {
            page: consent.text_version(
                "\0".join((template_source(settings, page), settings.name, settings.reason))
            )
            for page in ("pages/subscribe.html", "pages/confirm.html")
        }

    def close(self) -> None:
        """Stop the background thread (after its last pass, within gunicorn's 30 s of grace);
        what it had not sent yet stays queued in the store. Then close the store's pool and
        the webhook writer's connection."""
        if self.worker is not None:
            self.worker.stop(timeout=15.0)
        self.connections.close()
        self.webhooks.writer.close()

    # --- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        # For a WSGI server's access log: gunicorn's %({newsletter.log_path}e)s (docs/web.md).
        environ[LOG_PATH_KEY] = without_tokens(str(environ.get("PATH_INFO") or "/"))
        if str(environ.get("PATH_INFO") or "").startswith(WEBHOOKS_PREFIX):
            return self.webhooks(environ, start_response)
        try:
            page = self.handle(environ, "GET" if method == "HEAD" else method)
        except _RequestRejected as exc:
            page = self._error(environ, exc.status, "This request cannot be handled", str(exc))
        except Exception:
            environ["wsgi.errors"].write(traceback.format_exc())
            page = self._error(
                environ,
                500,
                "Something went wrong",
                "The page could not be shown. Please try again later.",
            )
        own_type = any(name.lower() == "content-type" for name, _ in page.headers)
        headers = [
            *([] if own_type else [("Content-Type", "text/html; charset=utf-8")]),
            ("Content-Length", str(len(page.body))),
            *_SECURITY_HEADERS,
            *page.headers,
        ]
        start_response(f"{page.status} {HTTPStatus(page.status).phrase}", headers)
        return [] if method == "HEAD" else [page.body]

    def handle(self, environ: dict[str, Any], method: str) -> Page:
        path = str(environ.get("PATH_INFO") or "/")
        for pattern, name in _ROUTES:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            allowed = ("POST",) if name in _POST_ONLY else ("GET", "HEAD", "POST")
            if method not in allowed:
                page = self._error(
                    environ, 405, "Not allowed", "This address does not take that request."
                )
                page.headers.append(("Allow", ", ".join(allowed)))
                return page
            handler: Callable[[dict[str, Any], str], Page] = getattr(
                self, f"_{name}_{method.lower()}"
            )
            try:
                return handler(environ, found.group(1))
            except InvalidInput:
                return self._error(
                    environ, 400, "Not accepted", "That request cannot be accepted as it is."
                )
            except StoreError as exc:
                environ["wsgi.errors"].write(f"newsletter serve: {exc}\n")
                return self._error(
                    environ,
                    503,
                    "Please try again in a moment",
                    "The list is busy or unavailable just now; nothing was changed.",
                )
        return self._error(environ, 404, "Page not found", "There is no page at this address.")

    # --- unsubscribe and preferences ------------------------------------------------------

    def _unsubscribe_get(self, environ: dict[str, Any], token: str) -> Page:
        subscriber_id = self._verify(token, UNSUBSCRIBE).subscriber_id
        with self._store() as conn:
            subscriber = store.get_subscriber(conn, subscriber_id)
        if subscriber is None:
            return self._gone(environ)
        if subscriber.status in SUPPRESSED:
            return self._done(
                environ,
                "unsubscribed",
                "You are unsubscribed",
                subscriber,
                **self._data_actions(environ, token),
            )
        return self._unsubscribe_page(environ, token, subscriber, 200)

    def _unsubscribe_post(self, environ: dict[str, Any], token: str) -> Page:
        subscriber_id = self._verify(token, UNSUBSCRIBE).subscriber_id
        try:
            form = read_form(environ)
        except _RequestRejected:
            # The signed token is the authority: a body too large, cut or in an unknown
            # character set only costs the reason, never the unsubscribe.
            form = Form([])
        # RFC 8058's body is the header value as a form: List-Unsubscribe=One-Click.
        one_click = form.get("List-Unsubscribe") == ONE_CLICK.partition("=")[2]
        reason = "one-click unsubscribe (RFC 8058)" if one_click else "unsubscribe page"
        with self._store() as conn:
            subscriber = store.get_subscriber(conn, subscriber_id)
            # Bounced and complained addresses get no mail either; keep what the provider said.
            if subscriber is not None and subscriber.status in (Status.ACTIVE, Status.PENDING):
                subscriber = store.set_status(
                    conn, subscriber.id, Status.UNSUBSCRIBED, reason, source=SOURCE_WEB
                )
        # A removed subscriber gets nothing either: the answer is the same, never an error
        # that would make a mail client retry or show a failure.
        actions = self._data_actions(environ, token) if subscriber is not None else {}
        return self._done(environ, "unsubscribed", "You are unsubscribed", subscriber, **actions)

    def _preferences_post(self, environ: dict[str, Any], token: str) -> Page:
        subscriber_id = self._verify(token, UNSUBSCRIBE).subscriber_id
        form = read_form(environ)
        taxonomy = self.settings.taxonomy
        try:
            chosen = store.canonical_topics(form.get_all("topic"), taxonomy)
        except InvalidInput:
            raise _RequestRejected(400, "That topic is not one of this newsletter's.") from None
        with self._store() as conn:
            subscriber = store.get_subscriber(conn, subscriber_id)
            if subscriber is None:
                return self._gone(environ)
            if not chosen:
                return self._unsubscribe_page(
                    environ,
                    token,
                    subscriber,
                    400,
                    error="Choose at least one topic, or press Unsubscribe.",
                )
            # Every topic chosen is stored as "all topics", so topics added later are included.
            stored = () if set(chosen) == set(taxonomy.topics) else chosen
            subscriber = store.set_topics(
                conn, subscriber.id, stored, taxonomy=taxonomy, source=SOURCE_WEB
            )
        return self._done(
            environ,
            "preferences-saved",
            "Your topics are saved",
            subscriber,
            topics=subscriber.topics,
        )

    def _unsubscribe_page(
        self,
        environ: dict[str, Any],
        token: str,
        subscriber: Subscriber,
        status: int,
        *,
        error: str = "",
    ) -> Page:
        chosen = set(subscriber.topics or self.settings.taxonomy.topics)
        return self._render(
            status,
            "pages/unsubscribe.html",
            subscriber=subscriber,
            chosen=chosen,
            error=error,
            unsubscribe_action=self._url(environ, f"/unsubscribe/{token}"),
            preferences_action=self._url(environ, f"/preferences/{token}"),
            **self._data_actions(environ, token),
        )

    def _data_actions(self, environ: dict[str, Any], token: str) -> dict[str, Any]:
        """Where the "Download my data" and "Erase me" buttons post."""
        return {
            "data_action": self._url(environ, f"/data/{token}"),
            "erase_action": self._url(environ, f"/erase/{token}"),
        }

    # --- the reader's data: download and erasure ---------------------------------------------

    def _data_post(self, environ: dict[str, Any], token: str) -> Page:
        subscriber_id = self._verify(token, UNSUBSCRIBE).subscriber_id
        read_form(environ)  # (bounded like every body; it carries nothing)
        with self._store() as conn:
            document = erasure.data_of(conn, subscriber_id)
        if document is None:
            return self._gone(environ)
        body = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8")
        filename = f"{self.settings.list_id}-my-data.json"
        return Page(
            200,
            body,
            [
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Disposition", f'attachment; filename="{filename}"'),
            ],
        )

    def _erase_post(self, environ: dict[str, Any], token: str) -> Page:
        subscriber_id = self._verify(token, UNSUBSCRIBE).subscriber_id
        form = read_form(environ)
        with self._store() as conn:
            if form.get("confirm") != "yes":
                subscriber = store.get_subscriber(conn, subscriber_id)
                if subscriber is None:
                    return self._gone(environ)
                return self._render(
                    200,
                    "pages/erase.html",
                    subscriber=subscriber,
                    erase_action=self._url(environ, f"/erase/{token}"),
                )
            if not erasure.erase(conn, subscriber_id, self.signer, who=audit.WHO_WEB):
                return self._gone(environ)
        return self._done(environ, "erased", "Your data is erased", None)

    # --- subscribe and confirm ------------------------------------------------------------

    def _subscribe_get(self, environ: dict[str, Any], _: str) -> Page:
        return self._subscribe_page(environ, 200, {"email": "", "name": ""}, set())

    def _subscribe_post(self, environ: dict[str, Any], _: str) -> Page:
        form = read_form(environ)
        values = {"email": form.get("email").strip(), "name": form.get("name").strip()}
        topics = form.get_all("topic")
        if form.get("website"):
            # Only robots fill in the hidden field; they get the usual answer and no email.
            return self._check_inbox(environ, values["email"])
        try:
            address = store.normalize_email(values["email"])
            name = store.clean_name(values["name"])
            chosen = store.canonical_topics(topics, self.settings.taxonomy)
        except InvalidInput as exc:
            return self._subscribe_page(environ, 400, values, set(topics), error=str(exc))
        with self._store() as conn:
            verdict = subscribe_requests.record_request(
                conn,
                email=address,
                name=name,
                topics=chosen,
                client=subscribe_requests.client_of(environ, self.trusted_proxies),
                limits=self.limits,
                now=self.clock(),
                evidence=self._evidence(environ, consent.EVENT_SUBSCRIBE, "pages/subscribe.html"),
            )
        if verdict is not Verdict.ACCEPTED:
            return self._too_many(environ, verdict)
        if self.worker is not None:
            self.worker.wake()
        return self._check_inbox(environ, address)

    def _too_many(self, environ: dict[str, Any], verdict: Verdict) -> Page:
        window = self.limits.per_client if verdict is Verdict.CLIENT_LIMIT else self.limits.overall
        minutes = max(1, window.seconds // 60)
        who = "from your network" if verdict is Verdict.CLIENT_LIMIT else "from many people at once"
        page = self._error(
            environ,
            429,
            "Please try again a little later",
            f"We have had a lot of sign-up requests {who} just now, so we are not taking more "
            f"for a while. Nothing is wrong with your address: please try again within "
            f"{minutes} minutes. Thank you for your patience.",
        )
        page.headers.append(("Retry-After", str(window.seconds)))
        return page

    def _confirm_get(self, environ: dict[str, Any], token: str) -> Page:
        subscriber_id = self._verify(token, CONFIRM).subscriber_id
        with self._store() as conn:
            subscriber = store.get_subscriber(conn, subscriber_id)
        if subscriber is None:
            return self._gone(environ)
        if subscriber.status is Status.ACTIVE:
            return self._done(environ, "confirmed", "You are subscribed", subscriber)
        return self._render(
            200,
            "pages/confirm.html",
            subscriber=subscriber,
            confirm_action=self._url(environ, f"/confirm/{token}"),
        )

    def _confirm_post(self, environ: dict[str, Any], token: str) -> Page:
        claims = self._verify(token, CONFIRM)
        try:
            keep_name = read_form(environ).get("keep_name") == "yes"
        except _RequestRejected:
            keep_name = False
        with self._store() as conn:
            subscriber = confirmation.confirm(
                conn,
                claims.subscriber_id,
                claims.issued or 0,
                settings=self.settings,
                signer=self.signer,
                evidence=self._evidence(environ, consent.EVENT_CONFIRM, "pages/confirm.html"),
                keep_name=keep_name,
            )
        if self.worker is not None:
            self.worker.wake()  # the welcome, if this made the reader active
        if subscriber is None:
            return self._gone(environ)
        if subscriber.status is Status.ACTIVE:
            return self._done(environ, "confirmed", "You are subscribed", subscriber)
        return self._done(
            environ, "not-confirmed", "This link can no longer be used", subscriber, status=409
        )

    def _subscribe_page(
        self,
        environ: dict[str, Any],
        status: int,
        values: dict[str, str],
        chosen: set[str],
        *,
        error: str = "",
    ) -> Page:
        return self._render(
            status,
            "pages/subscribe.html",
            values=values,
            chosen=chosen,
            error=error,
            subscribe_action=self._url(environ, "/subscribe"),
        )

    def _check_inbox(self, environ: dict[str, Any], address: str) -> Page:
        return self._done(environ, "check-inbox", "Check your inbox", None, email=address)

    # --- helpers --------------------------------------------------------------------------

    def _evidence(self, environ: dict[str, Any], event: str, page: str) -> ConsentEvent:
        """What the consent trail keeps of this request: time, client, agent, text shown."""
        client = subscribe_requests.client_address(environ, self.trusted_proxies)
        return ConsentEvent(
            event=event,
            form=consent.FORM_WEB,
            at=store.now_utc(),
            ip=consent.truncated_ip(client, full=self.full_ip),
            user_agent=str(environ.get("HTTP_USER_AGENT") or ""),
            text_version=self._text_versions[page],
        )

    def _verify(self, token: str, purpose: str) -> TokenClaims:
        if not _TOKEN.fullmatch(token):
            raise _RequestRejected(400, "This link is not valid: it may have been cut short.")
        try:
            return self.signer.verify(token, purpose, now=self.clock())
        except TokenError as exc:
            message = str(exc)
            raise _RequestRejected(400, message[:1].upper() + message[1:] + ".") from None

    @contextmanager
    def _store(self) -> Iterator[StoreConnection]:
        # One connection per request (a fresh one on SQLite, a pooled one on PostgreSQL), so
        # that threads (or worker processes) never share one.
        with self.connections.connection() as conn:
            yield conn

    @staticmethod
    def _url(environ: dict[str, Any], path: str) -> str:
        # Relative to where the app is mounted (SCRIPT_NAME), never to a host from the request.
        return str(environ.get("SCRIPT_NAME") or "").rstrip("/") + path

    def _render(self, status: int, template: str, **context: Any) -> Page:
        body = render_template(
            self.settings,
            template,
            {"settings": self.settings, "style": self.settings.style, **context},
        )
        return Page(status, body.encode("utf-8"))

    def _done(
        self,
        environ: dict[str, Any],
        outcome: str,
        heading: str,
        subscriber: Subscriber | None,
        *,
        status: int = 200,
        **context: Any,
    ) -> Page:
        return self._render(
            status,
            "pages/done.html",
            outcome=outcome,
            heading=heading,
            subscriber=subscriber,
            **context,
        )

    def _gone(self, environ: dict[str, Any]) -> Page:
        return self._error(
            environ,
            404,
            "This link is no longer valid",
            "The address it was sent to is no longer on the list: you will get no more emails.",
        )

    def _error(self, environ: dict[str, Any], status: int, heading: str, message: str) -> Page:
        return self._render(status, "pages/error.html", heading=heading, message=message)


def create_app(settings: Settings | None = None) -> WebApp:
    """The app for a WSGI server; settings from $NEWSLETTER_CONFIG or the nearest newsletter.toml.

    Raises TokenError at once when there is no signing secret, StoreError when the store
    named by ``[paths] database`` does not exist.
    """
    if settings is None:
        configured = os.environ.get(CONFIG_ENV, "").strip()
        settings = load_settings(Path(configured) if configured else find_settings())
    return WebApp(settings)


class _ThreadingWSGIServer(WSGIServer):
    """The standard library's WSGI server, a thread for each connection, kept for the next.

    Each connection gets a thread at once, as with ``socketserver.ThreadingMixIn``, so a slow
    client never holds up another; but a thread that is done waits a while for the next
    connection instead of ending. Starting a thread per request cost the server more than
    answering a request that needs no work (``bench/webhooks.py``'s 204 baseline).

    What a stranger can do with a thread per connection is bounded: a connection has
    ``connection_seconds`` in all (to send its request and get its answer), after which the
    server ends it, so a client that says nothing, or a byte at a time, does not keep a thread
    for ever; and at most ``max_connections`` are served at once, the ones beyond answered
    503 at once (webhook providers try again later) instead of getting a thread each.
    """

    # A mail provider may POST many one-click unsubscribes at once; the default backlog of
    # 5 would reset the connections beyond it.
    request_queue_size = 128
    idle_seconds = 30.0
    # After a burst of connections, the threads beyond these end at once instead of waiting.
    max_idle = 32
    # As long as nginx gives a client for its request's headers, then for its body; a webhook
    # request waits at most 10 s for the store.
    connection_seconds = 60.0
    max_connections = 256

    def __init__(self, *args: Any, **kwargs: Any):
        # Set before binding: a port in use closes the server from within __init__.
        self._handed: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._idle_lock = threading.Lock()  # guards the fields below
        self._idle = 0  # threads waiting for a connection that none has been promised yet
        self._closed = False
        # connections being served -> when the server ends them (inf: ended already)
        self._deadlines: dict[socket.socket, float] = {}
        self._next_sweep = 0.0
        self._busy_logged_at = -math.inf
        self._started = itertools.count(1)
        super().__init__(*args, **kwargs)

    @property
    def thread_prefix(self) -> str:
        """The start of the names of this server's threads (the port, then a number)."""
        return f"newsletter-serve:{self.server_address[1]}#"

    def process_request(self, request: Any, client_address: Any) -> None:
        now = time.monotonic()
        with self._idle_lock:
            busy = len(self._deadlines) >= self.max_connections
            if not busy:
                self._deadlines[request] = now + self.connection_seconds
            promised = not busy and self._idle > 0
            if promised:
                self._idle -= 1
        if busy:
            self._refuse_busy(request, now)
        elif promised:
            self._handed.put((request, client_address))
        else:
            try:
                threading.Thread(
                    target=self._serve_connections,
                    args=(request, client_address),
                    name=f"{self.thread_prefix}{next(self._started)}",
                    daemon=True,
                ).start()
            except BaseException:  # e.g. no memory for another thread: socketserver closes it
                with self._idle_lock:
                    del self._deadlines[request]
                raise

    def _serve_connections(self, request: Any, client_address: Any) -> None:
        while True:
            try:
                self.finish_request(request, client_address)
            except OSError:
                pass  # the client went away, or its time was up (see service_actions)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                # Forgotten before it is closed: service_actions never shuts down a socket
                # number that a new connection may have been given since.
                with self._idle_lock:
                    del self._deadlines[request]
                self.shutdown_request(request)
            with self._idle_lock:
                if self._closed or self._idle >= self.max_idle:
                    return
                self._idle += 1
            try:
                handed = self._handed.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._idle_lock:
                    if self._idle > 0:  # no connection is on its way to this thread: end
                        self._idle -= 1
                        return
                handed = self._handed.get()  # one was promised just now: take it
            if handed is None:
                return
            request, client_address = handed

    def service_actions(self) -> None:
        """End the connections whose time is up (serve_forever calls this between requests
        and at least every poll interval)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(1.0, self.connection_seconds / 4)
        with self._idle_lock:
            for connection, deadline in self._deadlines.items():
                if deadline <= now:
                    self._deadlines[connection] = math.inf
                    # Its thread, waiting to read or write, gets an error and ends the request.
                    with contextlib.suppress(OSError):
                        connection.shutdown(socket.SHUT_RDWR)

    def _refuse_busy(self, request: socket.socket, now: float) -> None:
        with contextlib.suppress(OSError):  # a new connection's buffer takes this at once
            request.sendall(_BUSY)
        self.shutdown_request(request)
        if now - self._busy_logged_at >= 60.0:  # once a minute, not once per connection
            self._busy_logged_at = now
            sys.stderr.write(
                f"newsletter serve: {self.max_connections} connections at once; "
                "answering 503 to more until some end\n"
            )

    def server_close(self) -> None:
        super().server_close()
        with self._idle_lock:
            self._closed = True
            waiting, self._idle = self._idle, 0
        for _ in range(waiting):
            self._handed.put(None)


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 38\r\nConnection: close\r\n\r\nToo many connections; try again soon.\n"
)


def without_tokens(text: str) -> str:
    """``text`` (a path or a request line) with the tokens in it left out: they unlock a
    subscriber, so they must not reach an access log."""
    return _TOKEN_IN_PATH.sub(r"/\1/…", text)


class _ServerHandler(ServerHandler):
    # wsgiref starts each request's environ from the whole process environment (as it was
    # when wsgiref was imported): the signing secret and the webhook keys would travel with
    # every request, and a variable such as HTTP_PROXY would read as a header the client
    # sent. The environ holds the request alone, as under gunicorn.
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.os_environ = {}


class _RequestHandler(WSGIRequestHandler):
    # Buffered: the status line, the headers and the body leave in one write when the handler
    # flushes, not in one system call (and one hand-over of the interpreter lock) each.
    wbufsize = -1

    def handle(self) -> None:
        # wsgiref's own, with the handler above; and each connection has a thread of its own.
        self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > _MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return
        if not self.parse_request():  # it has answered already
            return
        handler = _ServerHandler(
            self.rfile,
            self.wfile,
            self.get_stderr(),
            self.get_environ(),
            multithread=True,
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref logs through it
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


_MAX_REQUEST_LINE = 65536


class _RequestLog(_RequestHandler):
    """The standard access log, with the tokens in paths left out."""

    def log_message(self, format: str, *args: Any) -> None:
        cleaned = tuple(without_tokens(a) if isinstance(a, str) else a for a in args)
        super().log_message(format, *cleaned)


class _QuietRequestLog(_RequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_server(app: WebApp, host: str, port: int, *, log: bool = True) -> WSGIServer:
    """The standard library's WSGI server for ``app``, a thread per connection; port 0: any."""
    handler = _RequestLog if log else _QuietRequestLog
    return _make_wsgiref_server(
        host, port, app, server_class=_ThreadingWSGIServer, handler_class=handler
    )
