"""``newsletter status``: where the send of an issue stands, read from the journal alone.

The audience is the one the send recorded when it ran (``journal_issues``), never the issue
file as it is now: the file may have been edited, moved or deleted since.

``status welcome`` reports the welcome email the same way (its journal rows, one per reader
welcomed), and is the one report that reads its file: welcomes wait while the file is
missing or has errors, and the admin must hear why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from newsletter.errors import NewsletterError, SendError
from newsletter.issue import WELCOME
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
    # For the welcome: why the waiting welcomes are not being sent, "" when nothing stops them.
    problem: str = ""

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
            **({"problem": self.problem} if self.problem else {}),
        }


def issue_status(settings: Settings, month: str, *, limit: int | None = 1000) -> IssueStatus:
    """The journal's account of ``month``: counts, and the rows that need a person's eye."""
    conn = open_store(settings.paths.database, readonly=True)
    try:
        journal = SendJournal(conn, month)
        topics = journal.recorded_topics()
        welcome = month == WELCOME
        # The welcome has no audience to queue: it is queued reader by reader as they confirm.
        unqueued = None if welcome or topics is None else journal.count_not_yet_queued(topics)
        return IssueStatus(
            month,
            journal.counts(),
            journal.entries(JournalState.FAILED, limit=limit),
            journal.entries(JournalState.SENDING, limit=limit),
            journal.entries(JournalState.DEFERRED, limit=limit),
            unqueued,
            topics,
            _welcome_problem(settings) if welcome else "",
        )
    finally:
        conn.close()


def _welcome_problem(settings: Settings) -> str:
    path = settings.welcome_path
    if not path.is_file():
        return f"there is no welcome email ({path} does not exist): nobody is welcomed"
    from newsletter.welcome import prepare  # (the send path; only this report needs it)

    try:
        prepare(settings, path)
    except NewsletterError as exc:
        return str(exc)
    return ""


def month_of(settings: Settings, issue: str) -> str:
    """An issue given as a file path or as YYYY-MM, as the month (``welcome`` for the welcome)."""
    if MONTH.match(issue) or issue == WELCOME:
        return issue
    if settings.reads_as_welcome(Path(issue)):
        return WELCOME
    path = Path(issue)
    if path.suffix == ".md" and MONTH.match(path.stem):
        return path.stem
    try:
        return parse_issue(path, settings.taxonomy).month
    except NewsletterError:
        raise SendError(f"{issue!r} is neither an issue file nor a month such as 2026-10") from None
