"""The send journal: what happened to each (issue, subscriber), written around every provider call.

States of a row::

    queued ──▶ sending ──▶ sent       (accepted by the provider; message id and time kept)
                  │  └───▶ failed     (permanent: bounced address, refused content; with reason)
                  └──────▶ deferred   (temporary: retried now with backoff, or on the next run)

``sending`` is committed *before* the provider is called and the outcome right after it
answers. A row found in ``sending`` when a send starts is therefore one whose fate is unknown:
the process died (or the connection dropped) while the provider had it. Such rows are
uncertain: reported by name, never resent unless asked to (``--resend-uncertain``).

Rows are added as ``queued`` for every active subscriber when a send starts, so the journal
is also the issue's recipient list: ``newsletter status`` reads it, and a rerun after a
complete send only has to find that nothing is left queued.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from newsletter.store import now_utc, transaction, translate_errors


def audience(topics: Sequence[str] | None, table: str = "subscribers") -> tuple[str, list[object]]:
    """The SQL condition (and its parameters) for who gets an issue with these ``topics``.

    Active subscribers whose topics of interest are empty (everything) or share a topic with
    the issue. ``None`` means every active subscriber.
    """
    if topics is None:
        return f"{table}.status = 'active'", []
    marks = ",".join("?" * len(topics)) or "NULL"
    return (
        f"{table}.status = 'active' AND ({table}.topics = '[]' OR EXISTS "
        f"(SELECT 1 FROM json_each({table}.topics) WHERE value IN ({marks})))",
        list(topics),
    )


class JournalState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"


@dataclass(frozen=True)
class JournalEntry:
    subscriber_id: int
    email: str
    name: str
    state: JournalState
    attempts: int
    reason: str
    provider_message_id: str
    updated_at: str


@dataclass(frozen=True)
class Outcome:
    """What the send loop learnt about one message."""

    subscriber_id: int
    state: JournalState  # SENT, FAILED, DEFERRED, or SENDING for "still unknown"
    provider_message_id: str = ""
    reason: str = ""


class SendJournal:
    """The journal rows of one issue (``YYYY-MM``) in one store."""

    def __init__(self, conn: sqlite3.Connection, issue: str):
        self.conn = conn
        self.issue = issue

    def queue_active(self, topics: Sequence[str] | None = None) -> int:
        """Queue every active subscriber the issue is for (see ``audience``) who has no row yet."""
        condition, params = audience(topics)
        with transaction(self.conn):
            now = now_utc()
            cursor = self.conn.execute(
                "INSERT INTO journal (issue, subscriber_id, state, queued_at, updated_at) "
                f"SELECT ?, id, 'queued', ?, ? FROM subscribers WHERE {condition} "
                "ON CONFLICT (issue, subscriber_id) DO NOTHING",
                (self.issue, now, now, *params),
            )
            return cursor.rowcount

    def requeue(self, state: JournalState) -> int:
        """Put every row in ``state`` back in the queue (``--retry-failed``, ``--resend-uncertain``)."""
        with transaction(self.conn):
            cursor = self.conn.execute(
                "UPDATE journal SET state = 'queued', updated_at = ? WHERE issue = ? AND state = ?",
                (now_utc(), self.issue, state.value),
            )
            return cursor.rowcount

    def providers_used(self) -> list[str]:
        with translate_errors(self.conn):
            rows = self.conn.execute(
                "SELECT DISTINCT provider FROM journal WHERE issue = ? AND provider != ''",
                (self.issue,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def requeue_rehearsals(self, providers: Sequence[str]) -> int:
        """Queue again the rows that providers delivering nothing (outbox, null) handled."""
        if not providers:
            return 0
        marks = ",".join("?" * len(providers))
        with transaction(self.conn):
            cursor = self.conn.execute(
                "UPDATE journal SET state = 'queued', provider = '', provider_message_id = '', "
                f"reason = '', sent_at = NULL, updated_at = ? WHERE issue = ? AND provider IN ({marks})",
                (now_utc(), self.issue, *providers),
            )
            return cursor.rowcount

    def pending_batches(
        self, batch_size: int, *, after_id: int = 0
    ) -> Iterator[list[tuple[int, str, str]]]:
        """(id, email, name) of queued and deferred rows whose subscriber is still active.

        Each batch is a fresh short query, so an unsubscribe committed meanwhile is seen by
        the next batch, and no read transaction blocks the web endpoints' writes.
        """
        last = after_id
        while True:
            with translate_errors(self.conn):
                rows = self.conn.execute(
                    "SELECT s.id, s.email, s.name FROM journal AS j "
                    "JOIN subscribers AS s ON s.id = j.subscriber_id "
                    "WHERE j.issue = ? AND j.state IN ('queued', 'deferred') "
                    "AND s.id > ? AND s.status = 'active' "
                    # Ordered by s.id, which the (status, id) index yields in order, so the
                    # query stops at LIMIT instead of sorting every remaining row per batch.
                    "ORDER BY s.id LIMIT ?",
                    (self.issue, last, batch_size),
                ).fetchall()
            if not rows:
                return
            yield [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
            last = int(rows[-1][0])

    def mark_sending(self, subscriber_ids: Sequence[int], provider: str) -> set[int]:
        """Commit ``sending`` for the ids still queued/deferred and still active; return those.

        An id left out was unsubscribed (or sent by another process) since it was read: the
        caller must not send to it.
        """
        if not subscriber_ids:
            return set()
        marks = ",".join("?" * len(subscriber_ids))
        with transaction(self.conn):
            rows = self.conn.execute(
                f"UPDATE journal SET state = 'sending', attempts = attempts + 1, provider = ?, "
                f"updated_at = ? WHERE issue = ? AND state IN ('queued', 'deferred') "
                f"AND subscriber_id IN ({marks}) AND subscriber_id IN "
                f"(SELECT id FROM subscribers WHERE status = 'active' AND id IN ({marks})) "
                f"RETURNING subscriber_id",
                (provider, now_utc(), self.issue, *subscriber_ids, *subscriber_ids),
            ).fetchall()
        return {int(r[0]) for r in rows}

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """Commit the provider's answers for rows marked ``sending``."""
        now = now_utc()
        params = [
            (
                o.state.value,
                o.provider_message_id,
                o.reason[:2000],
                now,
                now if o.state is JournalState.SENT else None,
                self.issue,
                o.subscriber_id,
            )
            for o in outcomes
        ]
        if not params:
            return
        with transaction(self.conn):
            self.conn.executemany(
                "UPDATE journal SET state = ?, provider_message_id = ?, reason = ?, "
                "updated_at = ?, sent_at = COALESCE(?, sent_at) "
                "WHERE issue = ? AND subscriber_id = ? AND state = 'sending'",
                params,
            )

    def counts(self) -> dict[JournalState, int]:
        with translate_errors(self.conn):
            rows = self.conn.execute(
                "SELECT state, count(*) FROM journal WHERE issue = ? GROUP BY state", (self.issue,)
            ).fetchall()
        found = {JournalState(str(state)): int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in JournalState}

    def entries(self, state: JournalState, *, limit: int | None = None) -> list[JournalEntry]:
        """Rows in ``state`` with the subscriber's address (kept even if the row was removed)."""
        sql = (
            "SELECT j.subscriber_id, COALESCE(s.email, '(removed subscriber)'), COALESCE(s.name, ''), "
            "j.state, j.attempts, j.reason, j.provider_message_id, j.updated_at "
            "FROM journal AS j LEFT JOIN subscribers AS s ON s.id = j.subscriber_id "
            "WHERE j.issue = ? AND j.state = ? ORDER BY j.subscriber_id"
        )
        params: tuple[object, ...] = (self.issue, state.value)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        with translate_errors(self.conn):
            rows = self.conn.execute(sql, params).fetchall()
        return [
            JournalEntry(
                int(r[0]),
                str(r[1]),
                str(r[2]),
                JournalState(str(r[3])),
                int(r[4]),
                str(r[5]),
                str(r[6]),
                str(r[7]),
            )
            for r in rows
        ]

    def drop_inactive_queued(self) -> int:
        """Forget queued rows of subscribers who are no longer active (they left before their turn)."""
        with transaction(self.conn):
            cursor = self.conn.execute(
                "DELETE FROM journal WHERE issue = ? AND state IN ('queued', 'deferred') AND "
                "subscriber_id NOT IN (SELECT id FROM subscribers WHERE status = 'active')",
                (self.issue,),
            )
            return cursor.rowcount


def issues_in_journal(conn: sqlite3.Connection) -> list[str]:
    with translate_errors(conn):
        rows = conn.execute("SELECT DISTINCT issue FROM journal ORDER BY issue").fetchall()
    return [str(r[0]) for r in rows]
