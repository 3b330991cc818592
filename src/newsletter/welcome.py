"""The welcome email: sent once to each reader who becomes active, through the send journal.

The welcome is an issue file without a month (``issues/welcome.md``, or ``[welcome] file``),
in the same teaser-and-sections format, with articles optional; ``check`` and ``preview``
read it like an issue. Its journal key is the "issue" ``welcome``: one row per subscriber.

When a reader confirms the double opt-in (or the admin adds or imports someone with
``--welcome``), :func:`queue` adds their ``queued`` row in the same transaction that makes them
active, and only if the welcome file exists. Nothing is sent while the request waits: the
web app's confirmation thread and ``newsletter run-due`` call :func:`send_due`, which follows
the journal's discipline (``sending`` committed before the provider is called, the outcome
right after). So:

- a repeated confirmation finds the row there and adds nothing; a row is sent at most once;
- a crash before the provider call leaves the row queued (sent by the next pass), and a
  crash during it leaves the row ``sending``: uncertain, reported by ``status welcome``,
  never resent by itself;
- a provider that is down defers the row, retried with growing delays, never dropped;
- a welcome file with errors sends nothing: the rows wait, and ``send_due`` reports the
  file's problems (``newsletter status welcome`` and ``check`` show them).

With ``[welcome] latest_issue_days = N``, :func:`queue` also queues the latest issue, in its
own journal, when its send started within N days and it is about one of the reader's topics;
it goes out right after their welcome (or with the issue's own next run, whichever is first).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from newsletter import store
from newsletter.check import check_issue
from newsletter.errors import MessageError, NewsletterError, SettingsError
from newsletter.journal import JournalState, Outcome, SendJournal
from newsletter.messages import PreparedIssue, Recipient, prepare_issue
from newsletter.providers import create_provider
from newsletter.providers.base import Provider
from newsletter.settings import Settings
from newsletter.store import WELCOME_ISSUE, StoreConnection, now_utc, transaction, translate_errors
from newsletter.tokens import Signer, unsubscribe_url

# Waits before each retry of a deferred welcome; the last one repeats.
RETRY_DELAYS = (60.0, 300.0, 1800.0, 7200.0)


@dataclass
class WelcomeReport:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    waiting: int = 0  # queued or deferred rows left for a later pass
    problem: str = ""  # why nothing could be sent (the file's errors), "" when none
    errors: list[str] = field(default_factory=list)
    latest_issue_sent: int = 0  # [welcome] latest_issue_days: issues sent with the welcomes


def queue(conn: StoreConnection, settings: Settings, subscriber_id: int) -> bool:
    """Record the welcome as due for ``subscriber_id``, in the caller's transaction.

    Only when the welcome file exists; a subscriber who has a row already (welcomed, or
    waiting) gets no second one. True when a row was added.
    """
    if not settings.welcome_path.is_file():
        return False
    if not _queue_row(conn, WELCOME_ISSUE, subscriber_id):
        return False
    latest = _latest_issue_for(conn, settings, subscriber_id, time.time())
    if latest is not None:
        _queue_row(conn, latest, subscriber_id)
    return True


def _queue_row(conn: StoreConnection, issue: str, subscriber_id: int) -> bool:
    stamp = now_utc()
    cursor = conn.execute(
        "INSERT INTO journal (issue, subscriber_id, state, queued_at, updated_at)"
        " VALUES (?, ?, 'queued', ?, ?) ON CONFLICT (issue, subscriber_id) DO NOTHING",
        (issue, subscriber_id, stamp, stamp),
    )
    return bool(cursor.rowcount > 0)


def latest_issue_days(settings: Settings) -> int:
    """``[welcome] latest_issue_days``: also send the latest issue to a new reader when it went
    out within this many days and is about one of their topics; 0 (the default) never does."""
    value = settings.section("welcome").get("latest_issue_days", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SettingsError(
            f"must be a whole number of days (0: never), not {value!r}",
            path=settings.source,
            key="welcome.latest_issue_days",
        )
    return value


def _latest_issue_for(
    conn: StoreConnection, settings: Settings, subscriber_id: int, now: float
) -> str | None:
    """The latest issue to send a new reader with their welcome, or None (see above)."""
    days = latest_issue_days(settings)
    if not days:
        return None
    cutoff = store.stamp_of(now - days * 86400)
    row = conn.execute(
        "SELECT issue, topics FROM journal_issues WHERE issue != ? AND first_run_at >= ?"
        " ORDER BY first_run_at DESC LIMIT 1",
        (WELCOME_ISSUE, cutoff),
    ).fetchone()
    if row is None:
        return None
    condition, params = store.audience(json.loads(str(row[1])))
    wanted = conn.execute(
        f"SELECT 1 FROM subscribers WHERE id = ? AND {condition}", (subscriber_id, *params)
    ).fetchone()
    return None if wanted is None else str(row[0])


def prepare(settings: Settings, path: Path | None = None) -> PreparedIssue:
    """The welcome email, read, checked (offline) and encoded once; IssueFileError on errors."""
    path = path or settings.welcome_path
    report = check_issue(path, settings, offline=True, welcome=True)
    if not report.ok or report.rendered is None:
        problems = "\n".join(str(p) for p in report.errors) or f"{path}: could not be read"
        raise NewsletterError(
            f"the welcome email {path} has errors, so no welcome is sent until it is fixed "
            f"(`newsletter check {path}` shows them):\n{problems}"
        )
    return prepare_issue(report.rendered, settings)


def _due(conn: StoreConnection, now: float, limit: int) -> list[int]:
    with translate_errors(conn):
        rows = conn.execute(
            "SELECT subscriber_id, state, attempts, updated_at FROM journal"
            " WHERE issue = ? AND state IN ('queued', 'deferred') ORDER BY subscriber_id",
            (WELCOME_ISSUE,),
        ).fetchall()
    due = []
    for subscriber_id, state, attempts, updated_at in rows:
        if state == JournalState.DEFERRED.value:
            delay = RETRY_DELAYS[min(int(attempts), len(RETRY_DELAYS)) - 1]
            changed = datetime.strptime(str(updated_at), store.TIME_FORMAT)
            if changed.replace(tzinfo=UTC).timestamp() + delay > now:
                continue
        due.append(int(subscriber_id))
        if len(due) >= limit:
            break
    return due


def waiting(conn: StoreConnection) -> int:
    """Welcome rows not sent yet (queued or deferred)."""
    with translate_errors(conn):
        return int(
            conn.execute(
                "SELECT count(*) FROM journal WHERE issue = ? AND state IN ('queued', 'deferred')",
                (WELCOME_ISSUE,),
            ).fetchone()[0]
        )


def send_due(
    conn: StoreConnection,
    settings: Settings,
    signer: Signer,
    *,
    now: float | None = None,
    limit: int = 100,
) -> WelcomeReport:
    """Send the welcomes that are due, each through the journal; see the module doc."""
    moment = time.time() if now is None else now
    report = WelcomeReport()
    due = _due(conn, moment, limit)
    if not due:
        report.waiting = waiting(conn)
        return report
    try:
        prepared = prepare(settings)
    except NewsletterError as exc:
        report.problem = str(exc)
        report.waiting = waiting(conn)
        return report
    journal = SendJournal(conn, WELCOME_ISSUE)
    journal.record_issue((), prepared.subject)
    provider = create_provider(settings)
    try:
        provider.open()
    except NewsletterError as exc:
        # The relay or the service cannot be reached: every due welcome waits its delay.
        claimed = journal.mark_sending(due, provider.name)
        journal.record(Outcome(i, JournalState.DEFERRED, reason=str(exc)[:500]) for i in claimed)
        report.deferred += len(claimed)
        report.errors.append(str(exc))
        report.waiting = waiting(conn)
        return report
    try:
        for subscriber_id in due:
            _send_one(conn, journal, provider, prepared, settings, signer, subscriber_id, report)
        _send_latest_issues(conn, settings, signer, provider, report)
    finally:
        provider.close()
    report.waiting = waiting(conn)
    return report


def _send_one(
    conn: StoreConnection,
    journal: SendJournal,
    provider: Provider,
    prepared: PreparedIssue,
    settings: Settings,
    signer: Signer,
    subscriber_id: int,
    report: WelcomeReport,
) -> None:
    # The claim: only the process whose update turns the row to "sending" sends it.
    if not journal.mark_sending([subscriber_id], provider.name):
        return
    subscriber = store.get_subscriber(conn, subscriber_id)
    if subscriber is None:  # removed between the claim and now: nothing to send
        with transaction(conn):
            conn.execute(
                "DELETE FROM journal WHERE issue = ? AND subscriber_id = ?",
                (journal.issue, subscriber_id),
            )
        return
    try:
        message = prepared.message_for(
            Recipient(
                id=subscriber.id,
                email=subscriber.email,
                name=subscriber.name,
                unsubscribe_url=unsubscribe_url(settings, signer, subscriber.id),
            )
        )
    except MessageError as exc:
        journal.record([Outcome(subscriber_id, JournalState.FAILED, reason=str(exc))])
        report.failed += 1
        return
    try:
        results = provider.send_batch([message])
    except NewsletterError as exc:
        journal.record([Outcome(subscriber_id, JournalState.DEFERRED, reason=str(exc)[:500])])
        report.deferred += 1
        report.errors.append(f"subscriber {subscriber_id}: {exc}")
        return
    result = results[0]
    if result.status == "accepted":
        journal.record([Outcome(subscriber_id, JournalState.SENT, result.provider_message_id)])
        report.sent += 1
    elif result.status == "permanent":
        journal.record([Outcome(subscriber_id, JournalState.FAILED, reason=result.reason)])
        report.failed += 1
    elif result.uncertain and not provider.idempotent_retries:
        report.errors.append(f"subscriber {subscriber_id}: fate unknown ({result.reason})")
    else:
        journal.record([Outcome(subscriber_id, JournalState.DEFERRED, reason=result.reason)])
        report.deferred += 1
        report.errors.append(f"subscriber {subscriber_id}: {result.reason}")


def _send_latest_issues(
    conn: StoreConnection,
    settings: Settings,
    signer: Signer,
    provider: Provider,
    report: WelcomeReport,
) -> None:
    """Send the latest issue to the readers just welcomed who were queued for it.

    Those are the rows ``queue`` added after the issue's last run, of readers whose welcome
    has gone out (the welcome comes first); the issue's own send would take them as well, and
    the journal's claim keeps either from sending one twice.
    """
    with translate_errors(conn):
        rows = conn.execute(
            "SELECT j.issue, j.subscriber_id FROM journal AS j"
            " JOIN journal_issues AS i ON i.issue = j.issue"
            " JOIN journal AS w ON w.issue = ? AND w.subscriber_id = j.subscriber_id"
            " WHERE j.issue != ? AND j.state = 'queued' AND j.queued_at > i.last_run_at"
            " AND w.state = 'sent' ORDER BY j.issue, j.subscriber_id",
            (WELCOME_ISSUE, WELCOME_ISSUE),
        ).fetchall()
    by_issue: dict[str, list[int]] = {}
    for issue, subscriber_id in rows:
        by_issue.setdefault(str(issue), []).append(int(subscriber_id))
    for issue, ids in by_issue.items():
        path = settings.paths.issues / f"{issue}.md"
        try:
            checked = check_issue(path, settings, offline=True, welcome=False)
            if not checked.ok or checked.rendered is None:
                raise NewsletterError(f"{path} cannot be sent as it is (`newsletter check {path}`)")
            prepared = prepare_issue(checked.rendered, settings)
        except NewsletterError as exc:
            report.errors.append(f"the latest issue for new readers: {exc}")
            continue
        journal = SendJournal(conn, issue)
        issued = WelcomeReport()
        for subscriber_id in ids:
            _send_one(conn, journal, provider, prepared, settings, signer, subscriber_id, issued)
        report.latest_issue_sent += issued.sent
        report.errors.extend(f"issue {issue}: {error}" for error in issued.errors)
