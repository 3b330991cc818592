"""The event log: what the providers learnt about each message, kept once and applied once.

Events reach the store two ways: as signed webhooks the moment they happen
(``newsletter.webhooks``) and from ``newsletter subscribers sync`` (reconciliation). Both call
:func:`record_events`, which in one transaction

- stores each event once (``UNIQUE (provider, event_id)``: the same event twice is one row),
  tied to the issue and journal row it concerns when the message can be found;
- applies it to the subscriber by the rules of sync: hard bounce -> bounced, complaint ->
  complained, unsubscribe -> unsubscribed, and only an active or pending subscriber changes,
  so nothing is ever re-activated;
- scores soft bounces: each adds one point, at most once per (UTC) day; at
  ``soft_bounce_threshold`` points the subscriber becomes bounced; a delivery resets the score.

Which issue an event belongs to is found from the message it names: our own Message-ID
(``<nl.YYYY-MM.<subscriber id>.<tag>@domain>``) names the issue and subscriber outright; a
provider's message id is looked up in the journal (``journal.provider_message_id``), and when
one id covers a whole batch (Mailgun, SendGrid) the event's address picks the row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from newsletter.store import Status, StoreConnection, email_key, now_utc, transaction

DEFAULT_SOFT_BOUNCE_THRESHOLD = 3
_OUR_MESSAGE_ID = re.compile(r"<?nl\.(\d{4}-\d{2})\.(\d+)\.[^@>\s]*@[^>\s]+>?")


class EventKind(StrEnum):
    DELIVERED = "delivered"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"


# What each kind does to an active or pending subscriber.
_STATUS_FOR = {
    EventKind.HARD_BOUNCE: Status.BOUNCED,
    EventKind.COMPLAINT: Status.COMPLAINED,
    EventKind.UNSUBSCRIBE: Status.UNSUBSCRIBED,
}
VIA_WEBHOOK = "webhook"
VIA_SYNC = "sync"


@dataclass(frozen=True)
class DeliveryEvent:
    """One event as a provider reported it, translated to our kinds.

    ``occurred_at`` is ISO 8601 in UTC (``2026-11-23T10:00:00Z``); ``message_ids`` are every
    id the event names for its message (ours and the provider's), tried in order.
    """

    provider: str
    event_id: str
    kind: EventKind
    email: str
    occurred_at: str
    reason: str = ""
    message_ids: tuple[str, ...] = ()


@dataclass
class Recorded:
    """What :func:`record_events` did."""

    recorded: int = 0
    duplicates: int = 0
    # (address, status before, status after) for every subscriber whose status changed
    changes: list[tuple[str, Status, Status]] = field(default_factory=list)


# (source, delivery id, time received) of a webhook request
Delivery = tuple[str, str, float]


class AlreadySeen(Exception):
    """The webhook delivery was received before: a replay. Nothing was changed."""


def record_events(
    conn: StoreConnection,
    events: Sequence[DeliveryEvent],
    *,
    via: str,
    soft_bounce_threshold: int = DEFAULT_SOFT_BOUNCE_THRESHOLD,
    delivery: Delivery | None = None,
    apply: bool = True,
) -> Recorded:
    """Store ``events`` and apply them (unless ``apply`` is False), all in one transaction.

    ``delivery`` is (source, delivery id, now) of the webhook request that carried them: a
    delivery id seen before raises AlreadySeen and changes nothing.
    """
    with transaction(conn):
        return record_in_transaction(
            conn,
            events,
            via=via,
            soft_bounce_threshold=soft_bounce_threshold,
            delivery=delivery,
            apply=apply,
        )


def record_in_transaction(
    conn: StoreConnection,
    events: Sequence[DeliveryEvent],
    *,
    via: str,
    soft_bounce_threshold: int = DEFAULT_SOFT_BOUNCE_THRESHOLD,
    delivery: Delivery | None = None,
    apply: bool = True,
) -> Recorded:
    """:func:`record_events` inside a transaction the caller holds (and commits)."""
    (outcome,) = record_requests(
        conn,
        [(events, delivery)],
        via=via,
        soft_bounce_threshold=soft_bounce_threshold,
        apply=apply,
    )
    if isinstance(outcome, AlreadySeen):
        raise outcome
    return outcome


def record_requests(
    conn: StoreConnection,
    requests: Sequence[tuple[Sequence[DeliveryEvent], Delivery | None]],
    *,
    via: str,
    soft_bounce_threshold: int = DEFAULT_SOFT_BOUNCE_THRESHOLD,
    apply: bool = True,
) -> list[Recorded | AlreadySeen]:
    """Record the events of several webhook requests in the caller's transaction, as if one
    after the other: what each did, in order, or AlreadySeen for a replayed delivery (which
    changed nothing).

    The webhook writer commits every request that waited together; their reads and inserts
    take a handful of statements for the whole group instead of a few for each request.
    """
    fresh = _unseen_deliveries(conn, [d for _, d in requests if d is not None])
    outcomes: list[Recorded | AlreadySeen] = []
    owned: list[tuple[DeliveryEvent, Recorded]] = []
    for found, delivery in requests:
        if delivery is not None:
            if (delivery[0], delivery[1]) not in fresh:
                outcomes.append(AlreadySeen(delivery[0]))
                continue
            fresh.discard((delivery[0], delivery[1]))  # the same delivery twice in one group
        result = Recorded()
        outcomes.append(result)
        owned.extend((event, result) for event in found)
    lookups = _Lookups(conn, [event for event, _ in owned])
    rows = []
    for event, _ in owned:
        key = email_key(event.email.strip())
        known = lookups.subscribers.get(key)
        number = known[0] if known else None
        rows.append((event, key, _issue_of(conn, event, number, lookups), number))
    new = _insert(conn, rows, via, now_utc())
    for (event, key, _, _), (_, result) in zip(rows, owned, strict=True):
        if (event.provider, event.event_id) not in new:
            result.duplicates += 1  # kept before, or twice in these requests
            continue
        new.discard((event.provider, event.event_id))
        result.recorded += 1
        known = lookups.subscribers.get(key)
        if known is not None and apply:
            _apply_and_note(conn, event, key, known, soft_bounce_threshold, lookups, result)
    return outcomes


def _unseen_deliveries(conn: StoreConnection, deliveries: list[Delivery]) -> set[tuple[str, str]]:
    """Remember ``deliveries``; the (source, delivery id) of those not seen before."""
    found: set[tuple[str, str]] = set()
    for start in range(0, len(deliveries), _ROWS_PER_INSERT):
        chunk = deliveries[start : start + _ROWS_PER_INSERT]
        for source, delivery_id in conn.execute(
            "INSERT INTO webhook_deliveries (source, delivery_id, seen_at) VALUES "
            + ", ".join(["(?, ?, ?)"] * len(chunk))
            + " ON CONFLICT DO NOTHING RETURNING source, delivery_id",
            [value for delivery in chunk for value in delivery],
        ):
            found.add((str(source), str(delivery_id)))
    return found


_COLUMNS = (
    "provider, event_id, kind, email, email_key, occurred_at, received_at, reason, via, issue,"
    " subscriber_id"
)
_ROWS_PER_INSERT = 500  # 11 values each, well under SQLite's limit on parameters


def _insert(
    conn: StoreConnection,
    rows: list[tuple[DeliveryEvent, str, str | None, int | None]],
    via: str,
    received: str,
) -> set[tuple[str, str]]:
    """Insert the events not kept yet, many per statement; their (provider, event id)."""
    inserted: set[tuple[str, str]] = set()
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        params: list[object] = []
        for event, key, issue, subscriber_id in chunk:
            params += [
                event.provider,
                event.event_id,
                event.kind.value,
                event.email.strip()[:320],
                key,
                event.occurred_at,
                received,
                event.reason[:500],
                via,
                issue,
                subscriber_id,
            ]
        for provider, event_id in conn.execute(
            f"INSERT INTO delivery_events ({_COLUMNS}) VALUES {values} "
            "ON CONFLICT (provider, event_id) DO NOTHING RETURNING provider, event_id",
            params,
        ):
            inserted.add((str(provider), str(event_id)))
    return inserted


class _Lookups:
    """The subscribers and journal rows the events name, each read once.

    A SendGrid batch names hundreds of addresses, and one message id for a whole send batch;
    a group of webhook requests names one address and message each.
    """

    def __init__(self, conn: StoreConnection, events: Sequence[DeliveryEvent]):
        keys = list({email_key(e.email.strip()) for e in events})
        # email key -> (subscriber id, address, status), kept current as events change it
        self.subscribers: dict[str, tuple[int, str, Status]] = {}
        # Subscribers with a soft-bounce score: a delivery resets only those.
        self.scored: set[int] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for key, number, address, status, scored in conn.execute(
                "SELECT s.email_key, s.id, s.email, s.status, b.subscriber_id IS NOT NULL "
                "FROM subscribers AS s LEFT JOIN soft_bounce_scores AS b "
                f"ON b.subscriber_id = s.id WHERE s.email_key IN ({marks})",
                chunk,
            ):
                self.subscribers[str(key)] = (int(number), str(address), Status(str(status)))
                if scored:
                    self.scored.add(int(number))
        # provider message id (as the journal holds it) -> (issue, subscriber id) of its rows
        self._journal: dict[str, list[tuple[str, int]]] = {}
        forms = list({form for e in events for m in _provider_ids(e) for form in (m, f"<{m}>")})
        for start in range(0, len(forms), 500):
            chunk = forms[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for message_id, issue, subscriber in conn.execute(
                "SELECT provider_message_id, issue, subscriber_id FROM journal"
                f" WHERE provider_message_id IN ({marks}) AND provider_message_id != ''"
                f" LIMIT {_JOURNAL_ROWS_PER_ID * len(chunk)}",
                chunk,
            ):
                rows = self._journal.setdefault(str(message_id), [])
                if len(rows) < _JOURNAL_ROWS_PER_ID:
                    rows.append((str(issue), int(subscriber)))

    def journal_rows(self, ids: tuple[str, ...]) -> list[tuple[str, int]]:
        """(issue, subscriber id) of the journal rows whose provider message id is one of ``ids``."""
        forms = dict.fromkeys(form for m in ids for form in (m, f"<{m}>"))
        return [row for form in forms for row in self._journal.get(form, ())]


# A provider's message id covers one send batch: at most this many journal rows.
_JOURNAL_ROWS_PER_ID = 2000


def _provider_ids(event: DeliveryEvent) -> tuple[str, ...]:
    """The ids ``event`` names for its message, without angle brackets."""
    return tuple(m.strip().strip("<>") for m in event.message_ids if m.strip().strip("<>"))


def _apply_and_note(
    conn: StoreConnection,
    event: DeliveryEvent,
    key: str,
    known: tuple[int, str, Status],
    threshold: int,
    lookups: _Lookups,
    result: Recorded,
) -> None:
    """Apply a newly kept event to its subscriber, and note a status change on its row."""
    number, address, before = known
    after = _apply(conn, event, number, threshold, lookups.scored)
    if after is not None:
        lookups.subscribers[key] = (number, address, after)
        conn.execute(
            "UPDATE delivery_events SET status_change = ? WHERE provider = ? AND event_id = ?",
            (f"{before.value} -> {after.value}", event.provider, event.event_id),
        )
        result.changes.append((address, before, after))


def _apply(
    conn: StoreConnection,
    event: DeliveryEvent,
    subscriber_id: int,
    threshold: int,
    scored: set[int],
) -> Status | None:
    """Change the subscriber as the event says; the new status if it changed."""
    if event.kind is EventKind.DELIVERED:
        if subscriber_id in scored:
            conn.execute("DELETE FROM soft_bounce_scores WHERE subscriber_id = ?", (subscriber_id,))
            scored.discard(subscriber_id)
        return None
    reason = event.reason or event.kind.value.replace("_", " ")
    if event.kind is EventKind.SOFT_BOUNCE:
        day = event.occurred_at[:10]
        scored.add(subscriber_id)
        score = conn.execute(
            "INSERT INTO soft_bounce_scores (subscriber_id, score, last_day) VALUES (?, 1, ?) "
            "ON CONFLICT (subscriber_id) DO UPDATE SET "
            # Only a later day counts: a late or retried event of an earlier day is no new day.
            "score = soft_bounce_scores.score"
            " + CASE WHEN excluded.last_day > soft_bounce_scores.last_day THEN 1 ELSE 0 END, "
            "last_day = CASE WHEN excluded.last_day > soft_bounce_scores.last_day"
            " THEN excluded.last_day ELSE soft_bounce_scores.last_day END RETURNING score",
            (subscriber_id, day),
        ).fetchone()[0]
        if int(score) < threshold:
            return None
        status = Status.BOUNCED
        reason = f"{score} soft bounces on different days (last: {reason})"
    else:
        status = _STATUS_FOR[event.kind]
    # The same rule as `subscribers sync`: only an active or pending subscriber changes.
    stamp = now_utc()
    changed = conn.execute(
        "UPDATE subscribers SET status = ?, status_changed_at = ?, status_reason = ?,"
        " status_source = ? WHERE id = ? AND status IN ('active', 'pending')",
        (status.value, stamp, reason[:500], f"provider:{event.provider}", subscriber_id),
    ).rowcount
    return status if changed else None


def _issue_of(
    conn: StoreConnection,
    event: DeliveryEvent,
    subscriber_id: int | None,
    lookups: _Lookups,
) -> str | None:
    """The issue whose journal row this event concerns, or None when it cannot be told."""
    for message_id in event.message_ids:
        ours = _OUR_MESSAGE_ID.fullmatch(message_id.strip())
        if ours is not None:
            row = conn.execute(
                "SELECT issue FROM journal WHERE issue = ? AND subscriber_id = ?",
                (ours.group(1), int(ours.group(2))),
            ).fetchone()
            if row is not None:
                return str(row[0])
    ids = _provider_ids(event)
    if not ids:
        return None
    rows = lookups.journal_rows(ids)
    if len(rows) == 1:
        return rows[0][0]
    # One message id for a whole batch: the event's address picks the row.
    for issue, row_subscriber in rows:
        if subscriber_id is not None and row_subscriber == subscriber_id:
            return issue
    return None


def sync_events(provider: str, entries: Iterable[tuple[str, Status, str]]) -> list[DeliveryEvent]:
    """Suppression-list entries (address, status, reason) as events for the log.

    A list entry has no event id of its own: the id is the address and what it means, so
    running sync again records nothing new.
    """
    kinds = {Status.BOUNCED: EventKind.HARD_BOUNCE, Status.COMPLAINED: EventKind.COMPLAINT}
    now = now_utc()
    events = []
    for address, status, reason in entries:
        kind = kinds.get(status, EventKind.UNSUBSCRIBE)
        key = email_key(address.strip())
        events.append(
            DeliveryEvent(provider, f"sync:{kind.value}:{key}", kind, address, now, reason)
        )
    return events
