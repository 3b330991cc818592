"""An import's record in the store: applied in short transactions, finished or undone later.

A large import must not hold the store's write lock for long: the web endpoints' one-click
unsubscribes wait at most the busy timeout, and mail clients never retry them. So csvio
validates and stages the whole file first, without the lock, and then applies it here in
slices: each slice is one transaction of about 80 ms, followed by a pause longer than SQLite's
busy handler sleeps between its tries while a slice lasts, so a waiting writer gets in
during the pause: it waits about one slice at most (``SLICE_SECONDS``, ``PAUSE_SECONDS``).

"All or nothing" still holds as the admin sees it, through a row in ``imports``::

    applying ──(last slice commits)──────────────────────────▶ done
       ├─(a slice fails: full disk, store locked too long)──▶ undoing ──▶ undone
       └─(process killed: still applying)─┬─ the same import run again ─▶ done
                                          └─ undo_interrupted ─▶ undoing ──▶ undone

Each slice records, in the same transaction, the last file line it applied and the counts so
far, the ids of the subscribers it added (``import_added``, one range per batch) and the
previous state of each subscriber it updated (``import_undo``). Undoing puts back only what
nobody changed since: a subscriber who unsubscribed through the web in the meantime stays
unsubscribed. The log is purged once the import is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from newsletter.errors import ImportUnfinished, InvalidInput, StoreError
from newsletter.store import (
    SOURCE_IMPORT,
    StoreConnection,
    last_inserted_id,
    now_utc,
    transaction,
    translate_errors,
)

# A slice stops taking more rows once its transaction has been open this long.
SLICE_SECONDS = 0.08
# The pause after a full slice. SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25,
# 25 ms between tries (50 ms only after 128 ms of waiting); a pause longer than its sleeps
# during one slice means a waiting writer's next try falls in the pause.
PAUSE_SECONDS = 0.03
# Rows per step inside a slice (and per undo or purge step).
STEP_ROWS = 250

Before = tuple[str, str, str, str | None, str, str, str]  # name … status_source


@dataclass(frozen=True)
class Change:
    """What an import did to a subscriber it updated, enough to undo it."""

    line: int
    email_key: str
    before: Before
    status: str  # what the import left
    status_changed_at: str
    name: str
    topics: str


@dataclass(frozen=True)
class ImportRecord:
    id: int
    file: str
    options: str
    fingerprint: str
    state: str
    staged: int
    applied_line: int
    added: int
    updated: int
    unchanged: int
    kept_count: int
    kept: list[list[object]]
    started_at: str

    @property
    def applied(self) -> int:
        return self.added + self.updated + self.unchanged

    def command(self) -> str:
        return " ".join(["newsletter subscribers import", _quoted(self.file), self.options]).strip()

    def describe(self) -> str:
        """One sentence: which import, when, and how far it got."""
        which = f"an import of {self.file} started at {self.started_at}"
        if self.state == "undoing":
            return f"undoing {which} was interrupted"
        return f"{which} was interrupted after {self.applied:,} of its {self.staged:,} rows"


def _quoted(path: str) -> str:
    return f"'{path}'" if any(c.isspace() for c in path) else path


_RECORD_COLUMNS = (
    "id, file, options, fingerprint, state, staged, applied_line, added, updated,"
    " unchanged, kept_count, kept, started_at"
)


def _record(row: Sequence[object]) -> ImportRecord:
    t = [str(value) for value in row]
    n = [int(value) for value in t[5:11]]
    return ImportRecord(
        id=int(t[0]),
        file=t[1],
        options=t[2],
        fingerprint=t[3],
        state=t[4],
        staged=n[0],
        applied_line=n[1],
        added=n[2],
        updated=n[3],
        unchanged=n[4],
        kept_count=n[5],
        kept=json.loads(t[11]),
        started_at=t[12],
    )


def unfinished(conn: StoreConnection) -> ImportRecord | None:
    """The import that was interrupted (or is running), if any."""
    with translate_errors(conn):
        row = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM imports WHERE finished = 0").fetchone()
    return None if row is None else _record(row)


def advice(record: ImportRecord) -> str:
    """What happened to the unfinished import and what to do about it."""
    if record.state == "undoing":
        action = "Run `newsletter subscribers import --undo-interrupted` to finish undoing it."
    else:
        action = (
            f"Run `{record.command()}` again to finish it (the same file, unchanged), or "
            "`newsletter subscribers import --undo-interrupted` to undo what it applied."
        )
    return f"{record.describe()}, so the list holds part of it. {action}"


def note_for_readers(conn: StoreConnection) -> str | None:
    """What a command that shows the list should say first, if an import is unfinished."""
    record = unfinished(conn)
    if record is None:
        return None
    if is_running(conn):
        return (
            f"an import of {record.file} is in progress ({record.applied:,} of its "
            f"{record.staged:,} rows so far), so the list holds part of it."
        )
    return advice(record)


def refuse_because_of(record: ImportRecord) -> ImportUnfinished:
    return ImportUnfinished(f"{advice(record)} Nothing was imported now; import again after that.")


# --- One import at a time -------------------------------------------------------------------


def _lock_path(database: Path) -> Path:
    return database.with_name(f"{database.name}.import.lock")


def is_running(conn: StoreConnection) -> bool:
    """Whether a process holds the import lock of the store (an import or undo is running)."""
    if conn.dialect == "postgresql":
        from newsletter import postgres

        with translate_errors(conn):
            return postgres.held_by_another(conn, postgres.IMPORT_LOCK)
    database = Path(str(conn.path))
    try:
        descriptor = os.open(_lock_path(database), os.O_RDONLY)
    except OSError:
        return False  # never created (or unreadable): no import ran from here
    with os.fdopen(descriptor) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@contextmanager
def import_lock(conn: StoreConnection) -> Iterator[None]:
    """Hold the lock that keeps two imports into the store apart: the operating system's
    beside a SQLite file, an advisory lock of the connection's session on PostgreSQL.

    A killed import releases it by dying, and leaves its record to say how far it got.
    """
    busy = ImportUnfinished(
        f"another import into {conn.path} is running; nothing was changed. Wait for "
        "it to finish, then run this command again."
    )
    if conn.dialect == "postgresql":
        from newsletter import postgres

        with translate_errors(conn):
            if not postgres.try_lock(conn, postgres.IMPORT_LOCK):
                raise busy
        try:
            yield
        finally:
            # A connection that broke has lost the lock with its session anyway.
            with contextlib.suppress(StoreError), translate_errors(conn):
                postgres.unlock(conn, postgres.IMPORT_LOCK)
        return
    database = Path(str(conn.path))
    path = _lock_path(database)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ImportUnfinished(
            f"{path}: cannot create the lock that keeps two imports apart ({exc.strerror}); "
            "nothing was changed. Check the folder's permissions and free space."
        ) from None
    with os.fdopen(descriptor, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- Applying ----------------------------------------------------------------------------------


def begin(
    conn: StoreConnection, file: str, options: str, fingerprint: str, staged: int
) -> ImportRecord:
    """Record a new import as applying; purge what finished imports left in the undo log."""
    purge_undo_log(conn)
    with slice_of(conn):
        conn.execute(
            "INSERT INTO imports (file, options, fingerprint, state, staged, started_at)"
            " VALUES (?, ?, ?, 'applying', ?, ?)",
            (file, options, fingerprint, staged, now_utc()),
        )
    record = unfinished(conn)
    assert record is not None
    return record


class _Pacing:
    """When this process may begin its next slice: one import runs at a time per store."""

    next_at = 0.0


@contextmanager
def slice_of(conn: StoreConnection) -> Iterator[float]:
    """One short write transaction, after a pause since the last; yields its deadline.

    A writer that began waiting during a slice of ``held`` seconds sleeps at most about
    ``2 * held`` before its next try (and never more than PAUSE_SECONDS while a slice lasts),
    so a pause that long lets it in; tiny slices need only tiny pauses.
    """
    time.sleep(max(0.0, _Pacing.next_at - time.monotonic()))
    with transaction(conn):
        start = time.monotonic()
        yield start + SLICE_SECONDS
    held = time.monotonic() - start
    # Jitter keeps the pauses from falling into step with another process's retries.
    pause = min(PAUSE_SECONDS, 2 * held + 0.002) * random.uniform(1.0, 1.3)
    if conn.dialect == "postgresql":
        # The server hands the write lock to whoever queued for it first, the moment this
        # slice commits: a waiting writer needs no pause to get in, only a turn.
        pause = 0.001
    _Pacing.next_at = time.monotonic() + pause


def log_changes(conn: StoreConnection, import_id: int, changes: Sequence[Change]) -> None:
    """Inside a slice: remember the subscribers the import is updating, for the undo."""
    conn.executemany(
        "INSERT INTO import_undo (import_id, line, email_key, before, status,"
        " status_changed_at, name, topics) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                import_id,
                c.line,
                c.email_key,
                json.dumps(c.before, ensure_ascii=False),
                c.status,
                c.status_changed_at,
                c.name,
                c.topics,
            )
            for c in changes
        ],
    )


def log_added(conn: StoreConnection, import_id: int, count: int) -> None:
    """Inside a slice, right after inserting ``count`` subscribers: remember their ids.

    Under the write lock AUTOINCREMENT gives one insert after another consecutive ids, and
    never gives them again, so a range names exactly the subscribers this import added.
    """
    if count:
        last = last_inserted_id(conn, "subscribers")
        conn.execute(
            "INSERT INTO import_added (import_id, first_id, last_id) VALUES (?, ?, ?)",
            (import_id, last - count + 1, last),
        )


def record_progress(
    conn: StoreConnection,
    import_id: int,
    *,
    applied_line: int,
    counts: tuple[int, int, int, int],
    kept: list[list[object]],
    done: bool,
) -> None:
    """Inside a slice: how far the import got, so that a re-run goes on from there."""
    added, updated, unchanged, kept_count = counts
    conn.execute(
        "UPDATE imports SET applied_line = ?, added = ?, updated = ?, unchanged = ?,"
        " kept_count = ?, kept = ?, state = CASE WHEN ? THEN 'done' ELSE state END,"
        " finished = ?, finished_at = CASE WHEN ? THEN ? END WHERE id = ?",
        (
            applied_line,
            added,
            updated,
            unchanged,
            kept_count,
            json.dumps(kept, ensure_ascii=False),
            done,
            int(done),
            done,
            now_utc(),
            import_id,
        ),
    )


def purge_undo_log(conn: StoreConnection) -> None:
    """Delete the undo log of finished imports, a slice at a time."""
    finished = "import_id IN (SELECT id FROM imports WHERE finished != 0)"
    with translate_errors(conn):
        left = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM import_added WHERE {finished})"
            f" OR EXISTS (SELECT 1 FROM import_undo WHERE {finished})"
        ).fetchone()[0]
    if not left:
        return
    with slice_of(conn):
        conn.execute(f"DELETE FROM import_added WHERE {finished}")  # one row per batch
    while True:
        with slice_of(conn) as deadline:
            while True:
                deleted = conn.execute(
                    "DELETE FROM import_undo WHERE (import_id, line) IN"
                    f" (SELECT import_id, line FROM import_undo WHERE {finished} LIMIT ?)",
                    (STEP_ROWS * 4,),
                ).rowcount
                if deleted < STEP_ROWS * 4:
                    return
                if time.monotonic() >= deadline:
                    break


# --- Undoing -----------------------------------------------------------------------------------


def undo(conn: StoreConnection, import_id: int) -> int:
    """Put back what the import changed, a slice at a time; return how many subscribers kept
    a later change (someone unsubscribed or chose topics meanwhile) instead."""
    with transaction(conn):
        conn.execute("UPDATE imports SET state = 'undoing' WHERE id = ?", (import_id,))
    kept = 0
    while True:
        with slice_of(conn) as deadline:
            while True:
                step = _undo_added(conn, import_id)
                if step is None:
                    step = _undo_updated(conn, import_id)
                if step is None:
                    conn.execute(
                        "UPDATE imports SET state = 'undone', finished = 1, finished_at = ?"
                        " WHERE id = ?",
                        (now_utc(), import_id),
                    )
                    # The consent events and welcomes of the rows it added go with them.
                    # NOT EXISTS, not NOT IN: PostgreSQL runs NOT IN (SELECT …) as a scan of
                    # the subscribers per row once their ids outgrow work_mem.
                    conn.execute(
                        "DELETE FROM consent_events WHERE NOT EXISTS (SELECT 1 FROM subscribers"
                        " AS s WHERE s.id = consent_events.subscriber_id)"
                    )
                    conn.execute(
                        "DELETE FROM journal WHERE state = 'queued' AND NOT EXISTS (SELECT 1"
                        " FROM subscribers AS s WHERE s.id = journal.subscriber_id)"
                    )
                    return kept
                kept += step
                if time.monotonic() >= deadline:
                    break


def _undo_added(conn: StoreConnection, import_id: int) -> int | None:
    """Delete up to STEP_ROWS subscribers the import added; None when none are left.

    A subscriber whose status or topics changed since (an unsubscribe through the web, a
    choice of topics) stays: forgetting them would forget that choice. Returns how many did.
    """
    found = conn.execute(
        "SELECT first_id, last_id FROM import_added WHERE import_id = ? LIMIT 1", (import_id,)
    ).fetchone()
    if found is None:
        return None
    first, last = int(found[0]), min(int(found[1]), int(found[0]) + STEP_ROWS - 1)
    present = conn.execute(
        "SELECT count(*) FROM subscribers WHERE id BETWEEN ? AND ?", (first, last)
    ).fetchone()[0]
    deleted = conn.execute(
        "DELETE FROM subscribers WHERE id BETWEEN ? AND ? AND status_source = ?"
        " AND status_changed_at = created_at AND NOT EXISTS"
        " (SELECT 1 FROM topic_changes WHERE subscriber_id = subscribers.id)",
        (first, last, SOURCE_IMPORT),
    ).rowcount
    if last == int(found[1]):
        conn.execute(
            "DELETE FROM import_added WHERE import_id = ? AND first_id = ?", (import_id, first)
        )
    else:
        conn.execute(
            "UPDATE import_added SET first_id = ? WHERE import_id = ? AND first_id = ?",
            (last + 1, import_id, first),
        )
    return int(present) - int(deleted)


def _undo_updated(conn: StoreConnection, import_id: int) -> int | None:
    """Put back up to STEP_ROWS subscribers the import updated; None when none are left."""
    rows = conn.execute(
        "SELECT line, email_key, before, status, status_changed_at, name, topics"
        " FROM import_undo WHERE import_id = ? ORDER BY line LIMIT ?",
        (import_id, STEP_ROWS),
    ).fetchall()
    if not rows:
        return None
    kept = sum(not _undo_one(conn, row[1:]) for row in rows)
    conn.execute(
        "DELETE FROM import_undo WHERE import_id = ? AND line <= ?", (import_id, rows[-1][0])
    )
    return kept


def _undo_one(conn: StoreConnection, logged: Sequence[object]) -> bool:
    """Put one updated subscriber back; False if a later change was kept instead."""
    key, before, *after = logged
    current = conn.execute(
        "SELECT id, status, status_changed_at, name, topics FROM subscribers WHERE email_key = ?",
        (key,),
    ).fetchone()
    if current is None:
        return True  # removed since: nothing to put back
    row_id, *now = current
    old = json.loads(str(before))
    if now[2] == after[2]:
        conn.execute("UPDATE subscribers SET name = ? WHERE id = ?", (old[0], row_id))
    if now[3] == after[3]:
        conn.execute("UPDATE subscribers SET topics = ? WHERE id = ?", (old[1], row_id))
    if now[:2] == after[:2]:
        conn.execute(
            "UPDATE subscribers SET status = ?, confirmed_at = ?, status_changed_at = ?,"
            " status_reason = ?, status_source = ? WHERE id = ?",
            (*old[2:], row_id),
        )
    return bool(now == after)


def undo_interrupted(conn: StoreConnection) -> tuple[ImportRecord, int]:
    """Undo the interrupted import (or finish undoing it); return it and how many subscribers
    kept a change someone else made meanwhile. InvalidInput if no import is unfinished."""
    with import_lock(conn):
        record = unfinished(conn)
        if record is None:
            raise InvalidInput(
                f"{conn.path}: no import was interrupted, so there is nothing to undo"
            )
        kept = undo(conn, record.id)
        purge_undo_log(conn)
    return record, kept
