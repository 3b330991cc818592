"""The send journal: what happened to each (issue, subscriber), written around every provider call.

States of a row::

    queued ──▶ sending ──▶ sent       (accepted by the provider; message id and time kept)
                  │  └───▶ failed     (permanent: bounced address, refused content; with reason)
                  └──────▶ deferred   (temporary: retried now with backoff, or on the next run)

``sending`` is committed *before* the provider is called and the outcome right after it
answers. A row found in ``sending`` when a send starts is therefore one whose fate is unknown:
the process died (or the connection dropped) while the provider had it. Such rows are
uncertain: reported by name, never resent unless asked to (``--resend-uncertain``).

Rows are added as ``queued`` for every subscriber in the issue's audience (see
``store.audience``) when a send starts, so the journal is also the issue's recipient list:
``newsletter status`` reads it, and a rerun after a complete send only has to find that
nothing is left queued. The topics that audience was chosen by are recorded with the issue
(``journal_issues``), so ``status`` never has to read the issue file again.

Which earlier outcomes a run sends again is one decision, :class:`Resend`, taken by the send
loop and used alike by the run's writes (``start_run``), by the count shown before a send
(``count_to_send``) and by the dry run's reads (``batches_to_send``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from newsletter.store import StoreConnection, audience, now_utc, transaction, translate_errors


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


@dataclass(frozen=True)
class Resend:
    """Which rows with an outcome already recorded a run hands to the provider again."""

    failed: bool = False  # --retry-failed
    uncertain: bool = False  # --resend-uncertain
    # Providers that delivered nothing (outbox, null): their "sent" was a rehearsal. Only
    # a run through a provider that delivers sends those rows again.
    rehearsals: tuple[str, ...] = field(default=())

    @property
    def states(self) -> tuple[str, ...]:
        """The states whose rows this run sends (whatever provider handled them)."""
        states = [JournalState.QUEUED.value, JournalState.DEFERRED.value]
        if self.failed:
            states.append(JournalState.FAILED.value)
        if self.uncertain:
            states.append(JournalState.SENDING.value)
        return tuple(states)

    def condition(self, table: str) -> tuple[str, list[object]]:
        """SQL: a journal row in ``table`` (or no row at all) is one this run sends."""
        states = ",".join("?" * len(self.states))
        sql = f"({table}.state IS NULL OR {table}.state IN ({states})"
        params: list[object] = list(self.states)
        if self.rehearsals:
            sql += f" OR {table}.provider IN ({','.join('?' * len(self.rehearsals))})"
            params.extend(self.rehearsals)
        return sql + ")", params


class SendJournal:
    """The journal rows of one issue (``YYYY-MM``) in one store."""

    def __init__(self, conn: StoreConnection, issue: str):
        self.conn = conn
        self.issue = issue

    # --- the issue -------------------------------------------------------------------------

    def record_issue(self, topics: Sequence[str], subject: str) -> None:
        """Remember what this send of the issue is about (its latest run wins)."""
        now = now_utc()
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO journal_issues (issue, topics, subject, first_run_at, last_run_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (issue) DO UPDATE SET "
                "topics = excluded.topics, subject = excluded.subject, "
                "last_run_at = excluded.last_run_at",
                (self.issue, json.dumps(list(topics), ensure_ascii=False), subject, now, now),
            )

    def recorded_topics(self) -> tuple[str, ...] | None:
        """The topics the latest run of this issue's send used; None if no run was recorded."""
        with translate_errors(self.conn):
            row = self.conn.execute(
                "SELECT topics FROM journal_issues WHERE issue = ?", (self.issue,)
            ).fetchone()
        return None if row is None else tuple(json.loads(str(row[0])))

    # --- one run's selection ------------------------------------------------------------------

    def start_run(self, topics: Sequence[str], resend: Resend) -> int:
        """Queue this run's recipients; return how many queued earlier have left the list.

        Rows that ``resend`` names go back to the queue, every subscriber of the audience
        without a row gets one, and queued rows of those no longer active are forgotten.
        """
        self.requeue_rehearsals(resend.rehearsals)
        if resend.failed:
            self.requeue(JournalState.FAILED)
        if resend.uncertain:
            self.requeue(JournalState.SENDING)
        if self.queue_active(topics) and self.conn.dialect == "postgresql":
            self._refresh_statistics()
        return self.drop_inactive_queued()

    def _refresh_statistics(self) -> None:
        """Let PostgreSQL's planner know of the rows just queued (and of a list just imported).

        Until autovacuum's next ANALYZE, a minute or more later, it plans the claims blind,
        and may plan a join that reads every remaining row for each batch: seconds a claim
        for a few thousand subscribers. SKIP_LOCKED: never wait for a VACUUM, or another
        sender's ANALYZE, that has the tables.
        """
        with translate_errors(self.conn):
            self.conn.execute("ANALYZE (SKIP_LOCKED) journal, subscribers")

    def count_to_send(self, topics: Sequence[str], resend: Resend) -> int:
        """How many subscribers a run with ``resend`` would hand over, without writing.

        The same selection as ``batches_to_send``, counted as the audience less those whose
        row this run leaves alone: driven from the journal's side, that is two index walks
        instead of one journal lookup per subscriber (0.4 s instead of 1 s for a million).
        """
        who, who_params = audience(topics, "s")
        again, again_params = resend.condition("j")
        with translate_errors(self.conn):
            size = self.conn.execute(
                f"SELECT count(*) FROM subscribers AS s WHERE {who}", who_params
            ).fetchone()[0]
            settled = self.conn.execute(
                "SELECT count(*) FROM journal AS j JOIN subscribers AS s "
                f"ON s.id = j.subscriber_id AND {who} WHERE j.issue = ? AND NOT {again}",
                (*who_params, self.issue, *again_params),
            ).fetchone()[0]
        return int(size) - int(settled)

    def batches_to_send(
        self, topics: Sequence[str], resend: Resend, batch_size: int
    ) -> Iterator[list[tuple[int, str, str]]]:
        """(id, email, name) of the subscribers a run would hand over, in id order; no writes."""
        sql, params = self._to_send_sql(topics, resend, "s.id, s.email, s.name")
        sql += " AND s.id > ? ORDER BY s.id LIMIT ?"
        last = 0
        while True:
            with translate_errors(self.conn):
                rows = self.conn.execute(sql, (*params, last, batch_size)).fetchall()
            if not rows:
                return
            yield [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
            last = int(rows[-1][0])

    def _to_send_sql(
        self, topics: Sequence[str], resend: Resend, columns: str
    ) -> tuple[str, list[object]]:
        who, who_params = audience(topics, "s")
        again, again_params = resend.condition("j")
        sql = (
            f"SELECT {columns} FROM subscribers AS s LEFT JOIN journal AS j "
            f"ON j.issue = ? AND j.subscriber_id = s.id WHERE {who} AND {again}"
        )
        return sql, [self.issue, *who_params, *again_params]

    def count_sent(self, *, excluding_providers: Sequence[str] = ()) -> int:
        """Rows sent, leaving out those handled by ``excluding_providers`` (rehearsals)."""
        marks = ",".join("?" * len(excluding_providers))
        skip = f" AND provider NOT IN ({marks})" if excluding_providers else ""
        with translate_errors(self.conn):
            row = self.conn.execute(
                f"SELECT count(*) FROM journal WHERE issue = ? AND state = 'sent'{skip}",
                (self.issue, *excluding_providers),
            ).fetchone()
        return int(row[0])

    def count_not_yet_queued(self, topics: Sequence[str]) -> int:
        """Subscribers in the audience of ``topics`` who have no row for this issue."""
        who, params = audience(topics, "s")
        with translate_errors(self.conn):
            row = self.conn.execute(
                f"SELECT count(*) FROM subscribers AS s WHERE {who} AND NOT EXISTS "
                "(SELECT 1 FROM journal AS j WHERE j.issue = ? AND j.subscriber_id = s.id)",
                (*params, self.issue),
            ).fetchone()
        return int(row[0])

    # --- rows ---------------------------------------------------------------------------------

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
            return int(cursor.rowcount)

    def requeue(self, state: JournalState) -> int:
        """Put every row in ``state`` back in the queue (``--retry-failed``, ``--resend-uncertain``)."""
        with transaction(self.conn):
            cursor = self.conn.execute(
                "UPDATE journal SET state = 'queued', updated_at = ? WHERE issue = ? AND state = ?",
                (now_utc(), self.issue, state.value),
            )
            return int(cursor.rowcount)

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
            return int(cursor.rowcount)

    def claim_batch(
        self, size: int, provider: str, *, after_id: int = 0
    ) -> list[tuple[int, str, str]]:
        """Mark ``sending`` (committed) and return as (id, email, name) up to ``size`` queued or
        deferred rows after ``after_id`` whose subscriber is still active, in id order.

        The claim is one statement, so no row is handed out twice: on SQLite the write lock
        keeps senders apart; on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several senders
        claim side by side, each passing over the rows another is claiming. Each claim is a
        fresh short transaction, so an unsubscribe committed meanwhile is seen by the next.
        """
        skip_locked = " FOR UPDATE OF j SKIP LOCKED" if self.conn.dialect == "postgresql" else ""
        with transaction(self.conn, exclusive=False):
            # MATERIALIZED: the choice is made once. Inlined into the UPDATE, PostgreSQL may
            # run a locking subquery again and claim more than ``size`` rows.
            claimed = self.conn.execute(
                "WITH chosen AS MATERIALIZED ("
                "SELECT s.id FROM journal AS j JOIN subscribers AS s ON s.id = j.subscriber_id "
                "WHERE j.issue = ? AND j.state IN ('queued', 'deferred') "
                # Both sides of the join bound: PostgreSQL does not carry s.id > ? over to
                # the journal, and would read every row already sent before the queued ones.
                "AND s.id > ? AND j.subscriber_id > ? AND s.status = 'active' "
                # Ordered by s.id, which the (status, id) index yields in order, so the
                # query stops at LIMIT instead of sorting every remaining row per batch.
                f"ORDER BY s.id LIMIT ?{skip_locked}) "
                "UPDATE journal SET state = 'sending', attempts = attempts + 1, provider = ?, "
                "updated_at = ? WHERE issue = ? AND subscriber_id IN (SELECT id FROM chosen) "
                "RETURNING subscriber_id",
                (self.issue, after_id, after_id, size, provider, now_utc(), self.issue),
            ).fetchall()
            if not claimed:
                return []
            ids = sorted(int(r[0]) for r in claimed)
            rows = self.conn.execute(
                "SELECT id, email, name FROM subscribers "
                f"WHERE id IN ({','.join('?' * len(ids))}) ORDER BY id",
                ids,
            ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def any_to_send(self, *, after_id: int = 0) -> bool:
        """Whether a claim after ``after_id`` would find a row (a paused run has work left)."""
        with translate_errors(self.conn):
            row = self.conn.execute(
                "SELECT 1 FROM journal AS j JOIN subscribers AS s ON s.id = j.subscriber_id "
                "WHERE j.issue = ? AND j.state IN ('queued', 'deferred') "
                "AND s.id > ? AND s.status = 'active' LIMIT 1",
                (self.issue, after_id),
            ).fetchone()
        return row is not None

    def mark_sending(self, subscriber_ids: Sequence[int], provider: str) -> set[int]:
        """Commit ``sending`` for the ids still queued/deferred and still active; return those.

        An id left out was unsubscribed (or sent by another process) since it was read: the
        caller must not send to it.
        """
        if not subscriber_ids:
            return set()
        marks = ",".join("?" * len(subscriber_ids))
        with transaction(self.conn, exclusive=False):
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
        # Only rows this run has marked ``sending``: no other writer needs keeping out.
        with transaction(self.conn, exclusive=False):
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
                # NOT EXISTS, never NOT IN (SELECT …): past work_mem PostgreSQL runs the latter
                # as a scan of every subscriber for each row (hours for a million).
                "NOT EXISTS (SELECT 1 FROM subscribers AS s WHERE s.id = journal.subscriber_id "
                "AND s.status = 'active')",
                (self.issue,),
            )
            return int(cursor.rowcount)
