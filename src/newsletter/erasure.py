"""A reader's data rights: everything kept about them as one document, and erasure.

:func:`data_of` gathers what the store holds about one subscriber (profile, topics and their
history, the consent trail, the issues sent to them, and their provider events when the
store has an ``events`` table) for the preferences page's "Download my data".

:func:`erase` forgets a subscriber in one transaction: the row, the topic history, the
consent trail, queued emails, events, and the provider's reasons and message ids in the send
journal (which keeps only, by id, that a send happened, so counts stay true). What remains is
a keyed hash of the address (HMAC with the newsletter's secret, see ``Signer.address_hash``)
in ``erased_addresses``: an import of that address is refused, and only the person's own
fresh double opt-in (a confirmed link) lifts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from newsletter import audit, consent, store
from newsletter.errors import TokenError
from newsletter.settings import Settings
from newsletter.store import (
    WELCOME_ISSUE,
    StoreConnection,
    email_key,
    now_utc,
    transaction,
    translate_errors,
)
from newsletter.tokens import Signer

ERASED_REASON = (
    "this address was erased at its owner's request; an import cannot add it back. "
    "Only the person can, by subscribing again through the form and confirming"
)


# The delivery events the providers reported about one person (newsletter.events): by id,
# or by address for events that came before the address was (again) a subscriber.
_THEIR_EVENTS = "FROM delivery_events WHERE subscriber_id = ? OR email_key = ?"
_EVENT_COLUMNS = ("provider", "kind", "email", "occurred_at", "received_at", "reason", "issue")


def data_of(conn: StoreConnection, subscriber_id: int) -> dict[str, Any] | None:
    """Everything the store keeps about one subscriber, as a JSON-ready document; None if gone."""
    subscriber = store.get_subscriber(conn, subscriber_id)
    if subscriber is None:
        return None
    with translate_errors(conn):
        sends = [
            {"issue": str(r[0]), "state": str(r[1]), "sent_at": r[2], "updated_at": str(r[3])}
            for r in conn.execute(
                "SELECT issue, state, sent_at, updated_at FROM journal WHERE subscriber_id = ?"
                " ORDER BY queued_at, issue",
                (subscriber_id,),
            )
        ]
        events = [
            dict(zip(_EVENT_COLUMNS, row, strict=True))
            for row in conn.execute(
                f"SELECT {', '.join(_EVENT_COLUMNS)} {_THEIR_EVENTS} ORDER BY id",
                (subscriber_id, email_key(subscriber.email)),
            )
        ]
    return {
        "profile": {
            "email": subscriber.email,
            "name": subscriber.name,
            "status": subscriber.status.value,
            "source": subscriber.source,
            "created_at": subscriber.created_at,
            "confirmed_at": subscriber.confirmed_at,
            "status_changed_at": subscriber.status_changed_at,
            "status_reason": subscriber.status_reason,
            "status_source": subscriber.status_source,
        },
        "topics": list(subscriber.topics) or "all topics",
        "topic_changes": [
            {"at": at, "topics": list(topics), "source": source}
            for at, topics, source in store.topic_history(conn, subscriber_id)
        ],
        "consent": [vars(e) for e in consent.trail(conn, subscriber_id)],
        "emails_sent": sends,
        "events": events,
    }


def erase(conn: StoreConnection, subscriber_id: int, signer: Signer, *, who: str) -> bool:
    """Forget the subscriber (see the module doc); False when there is none."""
    with transaction(conn):
        current = store.get_subscriber(conn, subscriber_id)
        if current is None:
            return False
        key = email_key(current.email)
        for sql in (
            "DELETE FROM subscribers WHERE id = ?",
            "DELETE FROM topic_changes WHERE subscriber_id = ?",
            "DELETE FROM confirmation_queue WHERE subscriber_id = ?",
            "DELETE FROM consent_events WHERE subscriber_id = ?",
            "UPDATE journal SET reason = '', provider_message_id = '' WHERE subscriber_id = ?",
        ):
            conn.execute(sql, (current.id,))
        conn.execute(
            "DELETE FROM journal WHERE subscriber_id = ? AND issue = ?"
            " AND state IN ('queued', 'deferred')",
            (current.id, WELCOME_ISSUE),
        )
        conn.execute("DELETE FROM import_undo WHERE email_key = ?", (key,))
        conn.execute("DELETE FROM confirmation_sends WHERE email_key = ?", (key,))
        conn.execute(f"DELETE {_THEIR_EVENTS}", (current.id, key))
        conn.execute("DELETE FROM soft_bounce_scores WHERE subscriber_id = ?", (current.id,))
        conn.execute(
            "INSERT INTO erased_addresses (address_hash, erased_at) VALUES (?, ?)"
            " ON CONFLICT (address_hash) DO NOTHING",
            (signer.address_hash(key), now_utc()),
        )
        # The log names the id only: the address is exactly what must not be kept.
        audit.record(conn, "erase", f"subscriber {current.id}", 1, who=who, in_transaction=True)
    return True


def lift(conn: StoreConnection, signer: Signer, address: str) -> None:
    """The person confirmed a fresh subscription: their address is no longer refused.

    Runs in the caller's transaction.
    """
    conn.execute(
        "DELETE FROM erased_addresses WHERE address_hash = ?",
        (signer.address_hash(email_key(address)),),
    )


def refusal_check(conn: StoreConnection, settings: Settings) -> Callable[[str], str | None] | None:
    """For an import: a function that gives the reason an address key is refused, or None.

    None when no address was ever erased (no secret is needed then). Otherwise the secret
    is needed to recognise the erased addresses; TokenError says how to provide it.
    """
    with translate_errors(conn):
        if conn.execute("SELECT 1 FROM erased_addresses LIMIT 1").fetchone() is None:
            return None
    try:
        signer = Signer.for_settings(settings)
    except TokenError as exc:
        raise TokenError(
            f"{exc}. This list has erased addresses, which an import must recognise to "
            "refuse them, and only the signing secret can."
        ) from None

    def refused(key: str) -> str | None:
        found = conn.execute(
            "SELECT 1 FROM erased_addresses WHERE address_hash = ?", (signer.address_hash(key),)
        ).fetchone()
        return ERASED_REASON if found is not None else None

    return refused
