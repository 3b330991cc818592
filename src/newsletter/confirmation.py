"""Double opt-in: recording a request to subscribe and sending its confirmation email.

A request from the subscribe form adds the address as pending (or finds it already in the
store) and, when there is something to confirm, sends one email with a signed confirmation
link through the newsletter's configured provider, exactly as an issue is sent. Each address
gets at most one confirmation email an hour, however often the form is posted: the limit is
kept in the store, so a restart does not reset it.

Nothing here tells the caller's visitor whether an address was already subscribed: the web
page says the same thing in every case, so the form cannot be used to probe the list.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from newsletter import store
from newsletter.errors import InvalidInput, ProviderError
from newsletter.messages import OutgoingMessage, Recipient, prepare_issue
from newsletter.providers import create_provider
from newsletter.render import render_template
from newsletter.settings import Settings
from newsletter.store import SOURCE_WEB, Status, Subscriber
from newsletter.tokens import Signer, unsubscribe_url, web_url

CONFIRMATION_INTERVAL_SECONDS = 3600
TEXT_TEMPLATE = "confirmation.txt"
HTML_TEMPLATE = "confirmation.html"


class RequestOutcome(StrEnum):
    SENT = "sent"  # a confirmation email went out
    RATE_LIMITED = "rate-limited"  # one went out less than an hour ago
    ALREADY_ACTIVE = "already-active"  # nothing to confirm
    SUPPRESSED = "suppressed"  # bounced or complained: never mailed from a web form


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


SendConfirmation = Callable[[Settings, Signer, Subscriber, float], None]


def confirmation_url(settings: Settings, signer: Signer, subscriber_id: int, now: float) -> str:
    return f"{web_url(settings)}/confirm/{signer.confirm_token(subscriber_id, now=now)}"


def build_confirmation(
    settings: Settings, signer: Signer, subscriber: Subscriber, now: float
) -> OutgoingMessage:
    """The confirmation email for ``subscriber``, with the newsletter's usual headers.

    Its List-Unsubscribe link lets someone who never asked to subscribe say so in one click.
    """
    context = {
        "settings": settings,
        "style": settings.style,
        "subscriber": subscriber,
        "confirm_url": confirmation_url(settings, signer, subscriber.id, now),
        "hours_valid": 7 * 24,
    }
    subject = f"Please confirm your subscription to {settings.name}"
    rendered = _OneOffMessage(
        # The label names the outbox folder and makes the Message-ID and the provider's
        # idempotency key unique to this email, so a later confirmation is not deduplicated.
        issue=_Label(f"confirm-{int(now)}"),
        subject=subject,
        html=render_template(settings, HTML_TEMPLATE, context),
        text=render_template(settings, TEXT_TEMPLATE, context),
    )
    prepared = prepare_issue(rendered, settings, date=datetime.fromtimestamp(now, UTC))
    recipient = Recipient(
        id=subscriber.id,
        email=subscriber.email,
        name=subscriber.name,
        unsubscribe_url=unsubscribe_url(settings, signer, subscriber.id),
    )
    return prepared.message_for(recipient)


def send_confirmation(
    settings: Settings, signer: Signer, subscriber: Subscriber, now: float
) -> None:
    """Send the confirmation email through the configured provider; ProviderError if refused."""
    message = build_confirmation(settings, signer, subscriber, now)
    provider = create_provider(settings)
    with provider:
        results = provider.send_batch([message])
    if not results or results[0].status != "accepted":
        reason = results[0].reason if results else "no result"
        raise ProviderError(provider.name, f"the confirmation email was not accepted: {reason}")


def request_subscription(
    conn: sqlite3.Connection,
    settings: Settings,
    signer: Signer,
    email: str,
    *,
    name: str = "",
    topics: Sequence[str] = (),
    now: float | None = None,
    send: SendConfirmation = send_confirmation,
) -> RequestOutcome:
    """Record a request to subscribe ``email`` and send its confirmation email if due.

    A new address is stored as pending with ``name`` and ``topics``. An address already in
    the store keeps its row as it is: a form anyone can post must not change someone
    else's name or topics. Raises InvalidInput for an invalid address, name or topic, and
    ProviderError when the email could not be sent (the hourly allowance is given back).
    """
    moment = time.time() if now is None else now
    subscriber = store.get_subscriber(conn, email)
    if subscriber is None:
        try:
            subscriber = store.add_subscriber(
                conn,
                email,
                name=name,
                topics=topics,
                status=Status.PENDING,
                source=SOURCE_WEB,
                taxonomy=settings.taxonomy,
            )
        except InvalidInput:
            # Someone else added the address in the meantime; carry on with their row.
            subscriber = store.get_subscriber(conn, email)
            if subscriber is None:
                raise
    if subscriber.status is Status.ACTIVE:
        return RequestOutcome.ALREADY_ACTIVE
    if subscriber.status in (Status.BOUNCED, Status.COMPLAINED):
        return RequestOutcome.SUPPRESSED
    claimed = store.claim_confirmation_send(
        conn,
        subscriber.email,
        now=datetime.fromtimestamp(moment, UTC),
        interval_seconds=CONFIRMATION_INTERVAL_SECONDS,
    )
    if claimed is None:
        return RequestOutcome.RATE_LIMITED
    try:
        send(settings, signer, subscriber, moment)
    except BaseException:
        store.release_confirmation_send(conn, subscriber.email, claimed)
        raise
    return RequestOutcome.SENT


def confirm(conn: sqlite3.Connection, subscriber_id: int, issued: int) -> Subscriber | None:
    """Apply a confirmation link issued at ``issued`` (Unix time); see store.confirm_subscriber."""
    requested_at = datetime.fromtimestamp(issued, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return store.confirm_subscriber(
        conn, subscriber_id, requested_at=requested_at, source=SOURCE_WEB
    )
