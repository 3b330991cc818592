"""Scheduled sends: which issue goes out when, and why one has not gone yet.

::

    newsletter schedule ISSUE --at …  ── check (offline) ──▶ row "scheduled" (due_at in UTC)

    newsletter run-due (cron / a systemd timer, every few minutes), for each due row:
        outside the send window? ──▶ wait; the reason is shown by `schedule --list`
        prepare_send (check again) ── new errors ──▶ not sent; the reason is kept on the row
        Sender.run (the per-issue lock, the journal) ── window closes ──▶ paused, still queued
            nothing left queued or deferred ──▶ row "sent"

The row is only a trigger: whether a subscriber has the issue is the journal's business, so
a run-due that dies mid-send resumes on the next one, and two run-dues at the same moment
send once (the second finds the lock taken, or, after it, nothing left to send).

The moment is kept in UTC with the zone it was given in; the send window (``[schedule]
window = "07:00-20:00"``) is read in the ``[schedule] timezone``. Every function takes a
``clock`` so that tests move time instead of sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from newsletter.errors import InvalidInput, NewsletterError, SendBusy, SettingsError
from newsletter.journal import JournalState, SendJournal
from newsletter.send import Progress, Sender, SendOptions, SendReport, prepare_send
from newsletter.settings import Settings
from newsletter.status import month_of
from newsletter.store import may_exist, now_utc, open_store, transaction

Clock = Callable[[], datetime]
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_AT_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S")


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SendWindow:
    """The hours of the day when sends may run, e.g. 07:00-20:00; may wrap past midnight."""

    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        moment = local.time()
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class ScheduleSettings:
    """The ``[schedule]`` table: the default zone, and the optional send window."""

    timezone: ZoneInfo
    window: SendWindow | None = None

    def outside_window(self, now: datetime) -> str:
        """Why a send may not run at ``now`` (a sentence), or "" when it may."""
        if self.window is None or self.window.contains(now.astimezone(self.timezone)):
            return ""
        return (
            f"outside the send window {self.window} ({self.timezone.key}); "
            f"it goes on at {self.window.start:%H:%M}"
        )


def schedule_settings(settings: Settings) -> ScheduleSettings:
    """The ``[schedule]`` table, checked; every problem names the file and the key."""
    table = settings.section("schedule")
    where = settings.source or Path("<embedded defaults>")
    name = table.get("timezone", "UTC")
    if not isinstance(name, str):
        raise SettingsError("must be a time zone name", path=where, key="schedule.timezone")
    try:
        zone = parse_zone(name)
    except InvalidInput as exc:
        raise SettingsError(str(exc), path=where, key="schedule.timezone") from None
    window = table.get("window")
    if window is None or window == "":
        return ScheduleSettings(zone)
    match = _WINDOW.match(window) if isinstance(window, str) else None
    try:
        if match is None:
            raise ValueError
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = time(h1, m1), time(h2, m2)
    except ValueError:
        raise SettingsError(
            f'must be the hours sends may run, such as "07:00-20:00", not {window!r}',
            path=where,
            key="schedule.window",
        ) from None
    if start == end:
        raise SettingsError(
            "start and end are the same: leave window out to send at any hour",
            path=where,
            key="schedule.window",
        )
    return ScheduleSettings(zone, SendWindow(start, end))


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"{name!r} is not a time zone; use an IANA name such as Europe/Zurich or UTC"
        ) from None


def parse_moment(text: str, zone: ZoneInfo) -> datetime:
    """``2026-12-01 07:00`` in ``zone``, as an aware UTC datetime; refuses DST gaps."""
    for fmt in _AT_FORMATS:
        try:
            naive = datetime.strptime(text.strip(), fmt)
            break
        except ValueError:
            continue
    else:
        raise InvalidInput(
            f"--at {text!r}: write the moment as YYYY-MM-DD HH:MM, e.g. 2026-12-01 07:00"
        )
    local = naive.replace(tzinfo=zone)
    # A wall-clock time skipped by a daylight-saving change does not survive the round trip.
    back = local.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != naive:
        raise InvalidInput(
            f"--at {text!r}: that time does not exist in {zone.key} (the clocks jump over it "
            "that day); choose another"
        )
    return local.astimezone(UTC)


# --- the rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    issue: str  # YYYY-MM
    path: str  # the issue file, relative to the newsletter's folder when inside it
    due_at: datetime  # UTC
    timezone: str
    state: str  # "scheduled" or "sent"
    reason: str  # why the last run-due did not send (all of) it
    updated_at: str

    @property
    def local_due(self) -> datetime:
        return self.due_at.astimezone(ZoneInfo(self.timezone))


def _row(row: tuple[str, str, str, str, str, str, str]) -> Schedule:
    issue, path, due_at, zone, state, reason, updated = row
    return Schedule(issue, path, datetime.fromisoformat(due_at), zone, state, reason, updated)


_SELECT = "SELECT issue, path, due_at, timezone, state, reason, updated_at FROM schedules"


def _stored_path(settings: Settings, issue_path: Path) -> str:
    resolved = issue_path.resolve()
    try:
        return str(resolved.relative_to(settings.root))
    except ValueError:
        return str(resolved)


def schedule_issue(
    settings: Settings,
    issue_path: Path,
    at: str,
    zone_name: str | None = None,
    *,
    clock: Clock = system_clock,
) -> Schedule:
    """Check the issue as ``send`` would and schedule it; scheduling it again moves it."""
    zone = parse_zone(zone_name) if zone_name else schedule_settings(settings).timezone
    due_at = parse_moment(at, zone)
    now = clock()
    if due_at <= now:
        raise InvalidInput(
            f"--at {at} ({zone.key}) is in the past; to send now, use `newsletter send`"
        )
    # Everything `send` checks before its first message, credentials aside: a schedule is
    # often made where the provider's key is not (run-due's environment has it).
    month = prepare_send(settings, issue_path, SendOptions(dry_run=True)).month
    conn = open_store(settings.paths.database)
    try:
        with transaction(conn):
            found = conn.execute("SELECT state FROM schedules WHERE issue = ?", (month,)).fetchone()
            if found and found[0] == "sent":
                raise InvalidInput(
                    f"{month} has already been sent by a schedule; see `newsletter status {month}`"
                )
            stamp = now_utc()
            conn.execute(
                "INSERT INTO schedules (issue, path, due_at, timezone, state, reason, "
                "scheduled_at, updated_at) VALUES (?, ?, ?, ?, 'scheduled', '', ?, ?) "
                "ON CONFLICT (issue) DO UPDATE SET path = excluded.path, "
                "due_at = excluded.due_at, timezone = excluded.timezone, reason = '', "
                "updated_at = excluded.updated_at",
                (
                    month,
                    _stored_path(settings, issue_path),
                    due_at.isoformat(),
                    zone.key,
                    stamp,
                    stamp,
                ),
            )
        row = conn.execute(_SELECT + " WHERE issue = ?", (month,)).fetchone()
    finally:
        conn.close()
    return _row(row)


def unschedule(settings: Settings, issue: str) -> Schedule:
    """Remove the schedule of ``issue`` (a file or YYYY-MM); InvalidInput when there is none."""
    month = month_of(settings, issue)
    conn = open_store(settings.paths.database, create=False)
    try:
        with transaction(conn):
            row = conn.execute(_SELECT + " WHERE issue = ?", (month,)).fetchone()
            if row is None:
                raise InvalidInput(
                    f"{month} is not scheduled; `newsletter schedule --list` shows what is"
                )
            conn.execute("DELETE FROM schedules WHERE issue = ?", (month,))
    finally:
        conn.close()
    return _row(row)


def list_schedules(settings: Settings) -> list[Schedule]:
    """Every schedule, the next one first; sent ones last."""
    if not may_exist(settings.paths.database):
        return []
    conn = open_store(settings.paths.database, readonly=True)
    try:
        rows = conn.execute(_SELECT + " ORDER BY state = 'sent', due_at").fetchall()
    finally:
        conn.close()
    return [_row(r) for r in rows]


def _set_outcome(settings: Settings, month: str, state: str, reason: str) -> None:
    conn = open_store(settings.paths.database, create=False)
    try:
        with transaction(conn):
            conn.execute(
                "UPDATE schedules SET state = ?, reason = ?, updated_at = ? WHERE issue = ?",
                (state, reason, now_utc(), month),
            )
    finally:
        conn.close()


# --- run-due ----------------------------------------------------------------------------------


@dataclass
class DueSend:
    """What one run-due did about one scheduled issue."""

    issue: str
    outcome: str  # "sent", "paused", "waiting", "blocked", "busy"
    reason: str = ""
    report: SendReport | None = None

    @property
    def failed(self) -> bool:
        return self.outcome == "blocked"


@dataclass
class DueOptions:
    """How run-due's sends run: the clock, and the send loop's sleep and progress."""

    clock: Clock = system_clock
    sleep: Callable[[float], None] | None = None
    on_progress: Callable[[Progress], None] | None = None


def send_due(settings: Settings, options: DueOptions | None = None) -> list[DueSend]:
    """Start (or resume) every scheduled send that is due at ``options.clock()``."""
    options = options or DueOptions()
    if not may_exist(settings.paths.database):
        return []
    rules = schedule_settings(settings)
    now = options.clock()
    due = [s for s in list_schedules(settings) if s.state == "scheduled" and s.due_at <= now]
    return [_send_one(settings, rules, item, options) for item in due]


def _send_one(
    settings: Settings, rules: ScheduleSettings, item: Schedule, options: DueOptions
) -> DueSend:
    closed = rules.outside_window(options.clock())
    if closed:
        _set_outcome(settings, item.issue, "scheduled", closed)
        return DueSend(item.issue, "waiting", closed)

    def pause() -> str:
        return rules.outside_window(options.clock())

    send_options = SendOptions(pause=pause)
    if options.sleep is not None:
        send_options.sleep = options.sleep
    try:
        job = prepare_send(settings, settings.root / item.path, send_options)
        if job.month != item.issue:
            raise InvalidInput(
                f"{item.path} is now the issue of {job.month}, not {item.issue}; schedule it again"
            )
    except NewsletterError as exc:
        # The check before sending: nothing was handed to the provider.
        reason = f"not sent: {exc}"
        _set_outcome(settings, item.issue, "scheduled", reason)
        return DueSend(item.issue, "blocked", reason)
    sender = Sender(job, options.on_progress)
    try:
        report = sender.run()
    except SendBusy as exc:
        # Another run-due (or a person's `send`) has it: the journal keeps them apart.
        return DueSend(item.issue, "busy", str(exc))
    except NewsletterError as exc:
        # Stopped part-way (the provider down, the disk full): the journal says who has it.
        reason = f"stopped: {exc}; the next run-due resumes it"
        _set_outcome(settings, item.issue, "scheduled", reason)
        return DueSend(item.issue, "blocked", reason, sender.report)
    left = _left_to_send(settings, item.issue)
    if report.stopped:
        reason = f"paused with {left:,} still to send: {report.stopped}"
        _set_outcome(settings, item.issue, "scheduled", reason)
        return DueSend(item.issue, "paused", reason, report)
    if left:
        reason = f"{left:,} deferred by temporary failures; the next run-due retries them"
        _set_outcome(settings, item.issue, "scheduled", reason)
        return DueSend(item.issue, "paused", reason, report)
    note = (
        f"{len(report.uncertain):,} uncertain: see `newsletter status {item.issue}`"
        if report.uncertain
        else ""
    )
    _set_outcome(settings, item.issue, "sent", note)
    return DueSend(item.issue, "sent", note, report)


def _left_to_send(settings: Settings, month: str) -> int:
    conn = open_store(settings.paths.database, create=False)
    try:
        counts = SendJournal(conn, month).counts()
    finally:
        conn.close()
    return counts[JournalState.QUEUED] + counts[JournalState.DEFERRED]
