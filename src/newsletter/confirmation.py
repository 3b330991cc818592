"""Double opt-in: the confirmation email, and sending the queued ones outside any request.

The same pass of the worker (and of ``run-due``) then sends the welcome emails that are due
(``newsletter.welcome``): a confirmation only records the welcome, in its transaction.

A request from the subscribe form is recorded and its confirmation queued in the store
(``newsletter.subscribe_requests``); nothing is sent while the visitor waits. The queue is
drained by :func:`send_due` — from the web app's own background thread
(:class:`ConfirmationWorker`) and from ``newsletter run-due`` — through the newsletter's
configured provider, exactly as an issue is sent. A provider that is down leaves the email
queued, to be retried with growing delays until the link it carries would have expired.

The email greets nobody by name and its To: header holds the bare address: the name came
from a form anyone can fill in, and must not put a stranger's words into someone's inbox.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from newsletter import consent, erasure, store, subscribe_requests, welcome
from newsletter.consent import ConsentEvent
from newsletter.errors import NewsletterError, ProviderError
from newsletter.messages import OutgoingMessage, Recipient, prepare_issue
from newsletter.providers import create_provider
from newsletter.render import render_template
from newsletter.settings import Settings
from newsletter.store import SOURCE_WEB, Status, StoreConnection, Subscriber
from newsletter.subscribe_requests import SubscribeLimits
from newsletter.tokens import CONFIRM_MAX_AGE, Signer, unsubscribe_url, web_url
from newsletter.welcome import WelcomeReport

TEXT_TEMPLATE = "confirmation.txt"
HTML_TEMPLATE = "confirmation.html"
# A claimed confirmation is another worker's for this long; then it is due again.
LEASE_SECONDS = 300.0
# Waits before each retry after a failure; the last one repeats until the link expires.
RETRY_DELAYS = (60.0, 300.0, 1800.0, 7200.0)


@dataclass(frozen=True)
class _Label:
    month: str


@dataclass(frozen=True)
class _OneOffMessage:
    """A rendered one-off email in the shape ``messages.prepare_issue`` takes."""

    issue: _Label
    subject: str
    html: str
    text: str


SendConfirmation = Callable[[Settings, OutgoingMessage], None]


@dataclass
class DrainReport:
    sent: int = 0
    retried: int = 0
    dropped: int = 0  # no longer wanted: confirmed, suppressed, removed, or the link expired
    errors: list[str] = field(default_factory=list)
    # The welcome emails sent in the same pass (newsletter.welcome).
    welcome: WelcomeReport = field(default_factory=WelcomeReport)


def confirmation_url(settings: Settings, signer: Signer, subscriber_id: int, now: float) -> str:
    return f"{web_url(settings)}/confirm/{signer.confirm_token(subscriber_id, now=now)}"


def build_confirmation(
    settings: Settings, signer: Signer, subscriber: Subscriber, requested_at: float
) -> OutgoingMessage:
    """The confirmation email for ``subscriber``, with a link issued at ``requested_at``.

    Its List-Unsubscribe link lets someone who never asked to subscribe say so in one click.
    """
    context = {
        "settings": settings,
        "style": settings.style,
        "email": subscriber.email,
        "confirm_url": confirmation_url(settings, signer, subscriber.id, requested_at),
        "hours_valid": CONFIRM_MAX_AGE // 3600,
    }
    rendered = _OneOffMessage(
        # The label names the outbox folder and makes the Message-ID and the provider's
        # idempotency key unique to this email, so a later confirmation is not deduplicated.
        issue=_Label(f"confirm-{int(requested_at)}"),
        subject=f"Please confirm your subscription to {settings.name}",
        html=render_template(settings, HTML_TEMPLATE, context),
        text=render_template(settings, TEXT_TEMPLATE, context),
    )
    prepared = prepare_issue(rendered, settings, date=datetime.fromtimestamp(requested_at, UTC))
    recipient = Recipient(
        id=subscriber.id,
        email=subscriber.email,
        name="",
        unsubscribe_url=unsubscribe_url(settings, signer, subscriber.id),
    )
    return prepared.message_for(recipient)


def send_confirmation(settings: Settings, message: OutgoingMessage) -> None:
    """Hand one confirmation email to the configured provider; ProviderError if refused."""
    provider = create_provider(settings)
    with provider:
        results = provider.send_batch([message])
    if not results or results[0].status != "accepted":
        reason = results[0].reason if results else "no result"
        raise ProviderError(provider.name, f"the confirmation email was not accepted: {reason}")


def send_due(
    conn: StoreConnection,
    settings: Settings,
    signer: Signer,
    *,
    now: float | None = None,
    send: SendConfirmation = send_confirmation,
    limit: int = 20,
) -> DrainReport:
    """Send the queued confirmations that are due (at most ``limit``); see the module doc."""
    moment = time.time() if now is None else now
    report = DrainReport()
    for _ in range(limit):
        # One at a time: a lease never has to cover more than one slow provider call.
        claimed = subscribe_requests.claim_due(
            conn, now=moment, lease_seconds=LEASE_SECONDS, limit=1
        )
        if not claimed:
            break
        (queued,) = claimed
        subscriber = store.get_subscriber(conn, queued.subscriber_id)
        expired = moment - queued.requested_at >= CONFIRM_MAX_AGE
        wanted = subscriber is not None and subscriber.status in (
            Status.PENDING,
            Status.UNSUBSCRIBED,
        )
        if subscriber is None or not wanted or expired:
            subscribe_requests.finish(conn, queued.subscriber_id)
            report.dropped += 1
            continue
        try:
            # The link is issued now, so it is valid for its whole week from the email's
            # arrival, however long the provider kept it waiting.
            send(settings, build_confirmation(settings, signer, subscriber, moment))
        except NewsletterError as exc:
            delay = RETRY_DELAYS[min(queued.attempts, len(RETRY_DELAYS)) - 1]
            subscribe_requests.retry_later(
                conn, queued.subscriber_id, at=moment + delay, error=str(exc)
            )
            report.retried += 1
            report.errors.append(f"subscriber {queued.subscriber_id}: {exc}")
            continue
        subscribe_requests.finish(conn, queued.subscriber_id)
        report.sent += 1
    return report


def drain(
    settings: Settings,
    signer: Signer,
    limits: SubscribeLimits,
    *,
    now: float | None = None,
    send: SendConfirmation = send_confirmation,
) -> DrainReport:
    """Send every due confirmation and forget expired requests: one pass of a worker."""
    moment = time.time() if now is None else now
    total = DrainReport()
    with closing(store.open_store(settings.paths.database, create=False)) as conn:
        subscribe_requests.expire(conn, now=moment, limits=limits)
        while True:
            batch = send_due(conn, settings, signer, now=moment, send=send)
            total.sent += batch.sent
            total.retried += batch.retried
            total.dropped += batch.dropped
            total.errors.extend(batch.errors)
            if not (batch.sent or batch.retried or batch.dropped):
                break
        total.welcome = welcome.send_due(conn, settings, signer, now=moment)
    return total


class ConfirmationWorker:
    """A thread of the web app that sends queued confirmations soon after each request.

    ``wake()`` after a request is recorded; it also looks every ``poll_seconds`` for emails
    whose retry is due, or that another process queued, and once more when stopped. Failures
    are written to ``log`` and never stop it.
    """

    def __init__(
        self,
        settings: Settings,
        signer: Signer,
        limits: SubscribeLimits,
        *,
        send: SendConfirmation = send_confirmation,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 30.0,
        log: TextIO | None = None,
    ):
        self.settings = settings
        self.signer = signer
        self.limits = limits
        self.send = send
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.log = log or sys.stderr
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def wake(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="newsletter-confirmations", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        # One last pass after stop(): a clean shutdown sends what its requests queued.
        while True:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            self._pass()
            if self._stop.is_set():
                return

    def _pass(self) -> None:
        try:
            report = drain(
                self.settings, self.signer, self.limits, now=self.clock(), send=self.send
            )
        except Exception as exc:  # the store may be busy or gone; the next pass tries again
            self.log.write(f"newsletter serve: confirmation emails: {exc}\n")
            return
        for error in report.errors:
            self.log.write(f"newsletter serve: confirmation email: {error}\n")
        for error in report.welcome.errors:
            self.log.write(f"newsletter serve: welcome email: {error}\n")
        if report.welcome.problem:
            self.log.write(f"newsletter serve: {report.welcome.problem}\n")


def confirm(
    conn: StoreConnection,
    subscriber_id: int,
    issued: int,
    *,
    settings: Settings | None = None,
    signer: Signer | None = None,
    evidence: ConsentEvent | None = None,
    keep_name: bool = True,
) -> Subscriber | None:
    """Apply a confirmation link issued at ``issued`` (Unix time); see store.confirm_subscriber.

    When this makes the subscriber active, in the same transaction: ``evidence`` joins their
    consent trail, their address is no longer refused as erased (they confirmed afresh), and
    the welcome email is recorded as due (sent later, by the worker or ``run-due``).

    The name was typed into a form anyone can fill in: the confirm page shows it to the
    address's owner, and unless they keep it (``keep_name``) it is forgotten as they confirm,
    so a stranger's words never become the greeting of every issue.
    """
    requested_at = store.stamp_of(issued)
    just_confirmed: list[Subscriber] = []

    def confirmed(subscriber: Subscriber) -> None:
        just_confirmed.append(subscriber)
        if evidence is not None:
            consent.record(conn, subscriber.id, evidence)
        if signer is not None:
            erasure.lift(conn, signer, subscriber.email)
        if settings is not None:
            welcome.queue(conn, settings, subscriber.id)

    after = store.confirm_subscriber(
        conn, subscriber_id, requested_at=requested_at, source=SOURCE_WEB, on_confirmed=confirmed
    )
    if just_confirmed and after is not None and after.name and not keep_name:
        store.forget_name(conn, subscriber_id)
        after = store.get_subscriber(conn, subscriber_id)
    return after
