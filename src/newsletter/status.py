"""``newsletter status``: where the send of an issue stands, read from the journal alone.

The audience is the one the send recorded when it ran (``journal_issues``), never the issue
file as it is now: the file may have been edited, moved or deleted since.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.errors import NewsletterError, SendError
from newsletter.journal import JournalEntry, JournalState, SendJournal
from newsletter.parse import MONTH, parse_issue
from newsletter.settings import Settings
from newsletter.store import open_store


@dataclass(frozen=True)
class IssueStatus:
    issue: str
    counts: dict[JournalState, int]
    failed: list[JournalEntry]
    uncertain: list[JournalEntry]
    deferred: list[JournalEntry]
    # Subscribers of the recorded audience without a journal row yet (they joined after the
    # last run, or the run was stopped before queueing); None when no run was recorded.
    not_yet_queued: int | None
    topics: tuple[str, ...] | None

    @property
    def started(self) -> bool:
        return self.topics is not None or any(self.counts.values())

    def as_json(self) -> dict[str, object]:
        def rows(entries: list[JournalEntry]) -> list[dict[str, object]]:
            return [
                {
                    "id": e.subscriber_id,
                    "email": e.email,
                    "attempts": e.attempts,
                    "reason": e.reason,
                    "updated_at": e.updated_at,
                }
                for e in entries
            ]

        return {
            "issue": self.issue,
            "started": self.started,
            "topics": None if self.topics is None else list(self.topics),
            "counts": {state.value: n for state, n in self.counts.items()},
            "not_yet_queued": self.not_yet_queued,
            "failed": rows(self.failed),
            "uncertain": rows(self.uncertain),
            "deferred": rows(self.deferred),
        }


def issue_status(settings: Settings, month: str, *, limit: int | None = 1000) -> IssueStatus:
    """The journal's account of ``month``: counts, and the rows that need a person's eye."""
    conn = open_store(settings.paths.database, readonly=True)
    try:
        journal = SendJournal(conn, month)
        topics = journal.recorded_topics()
        return IssueStatus(
            month,
            journal.counts(),
            journal.entries(JournalState.FAILED, limit=limit),
            journal.entries(JournalState.SENDING, limit=limit),
            journal.entries(JournalState.DEFERRED, limit=limit),
            None if topics is None else journal.count_not_yet_queued(topics),
            topics,
        )
    finally:
        conn.close()


def month_of(settings: Settings, issue: str) -> str:
    """An issue given as a file path or as YYYY-MM, as the month."""
    if MONTH.match(issue):
        return issue
    path = Path(issue)
    if path.suffix == ".md" and MONTH.match(path.stem):
        return path.stem
    try:
        return parse_issue(path, settings.taxonomy).month
    except NewsletterError:
        raise SendError(f"{issue!r} is neither an issue file nor a month such as 2026-10") from None
