"""``newsletter backup FILE``: a consistent copy of the store while sends and the web run.

Copying ``newsletter.db`` with ``cp`` while it is in use can catch a half-written page, and
misses whatever sits in the write-ahead log (``newsletter.db-wal``). SQLite's online backup
API copies the database as one read transaction sees it: every change committed before the
copy began is in it, nothing after, and writers are not held up meanwhile (WAL mode lets them
go on beside a reader). The copy is written beside FILE under a temporary name, checked with
``PRAGMA integrity_check``, turned into a single self-contained file (rollback journal, not
WAL), and only then renamed to FILE, so a FILE that exists is always a whole backup.

A store on a PostgreSQL server is backed up to the same kind of file: ``newsletter store copy``
(newsletter.store_copy) writes it from one ``REPEATABLE READ`` snapshot of the server, compares
every table's row count and SHA-256 on both sides, and the file then goes through the same
checks and rename. (The server's own tools, pg_dump, remain the way to back up the server.)
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from newsletter.database_url import DatabaseUrl
from newsletter.errors import StoreError
from newsletter.private_files import create_private
from newsletter.settings import Settings
from newsletter.store import SqliteConnection, open_store, translate_errors
from newsletter.store_copy import CopyReport, copy_store


@dataclass(frozen=True)
class BackupReport:
    target: Path
    size: int  # bytes
    subscribers: int
    journal_rows: int
    schema_version: int
    # A server's store: what the copy checked (every table's rows and SHA-256) on both sides.
    copied: CopyReport | None = None


def backup_store(settings: Settings, target: Path) -> BackupReport:
    """Copy the store to ``target`` (which must not exist yet) and check the copy."""
    target = Path(target)
    if target.exists():
        raise StoreError(
            f"{target} already exists; a backup never overwrites a file. Choose a new name "
            "(e.g. with the date in it) or move the old one away first."
        )
    if not target.parent.is_dir():
        raise StoreError(f"{target.parent}: no such folder; create it or choose another FILE")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    location = settings.paths.database
    copied = None
    try:
        # The copy holds every address: owner-only, like the store (the rename keeps it).
        try:
            create_private(partial)
        except OSError as exc:
            raise StoreError(
                f"{partial}: cannot create the backup file ({exc.strerror}); no backup was written"
            ) from None
        if isinstance(location, DatabaseUrl):
            copied = copy_store(location, partial)
        else:
            _online_backup(location, partial)
        with closing(_connect(partial)) as copy:
            _finish(copy, partial)
            counts = _describe(copy, target)
        os.replace(partial, target)
    except BaseException:
        for leftover in (partial, *(partial.with_name(partial.name + s) for s in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
        raise
    return BackupReport(target, target.stat().st_size, *counts, copied=copied)


def _online_backup(location: Path, partial: Path) -> None:
    """SQLite's online backup API: the store at ``location`` into the file ``partial``."""
    source = open_store(location, create=False)
    assert isinstance(source, SqliteConnection)
    try:
        with closing(_connect(partial)) as copy:
            # pages=-1: one step, under one read transaction, so the copy is one moment of
            # the store; copied in steps, every write by the web would restart it.
            source.backup(copy, pages=-1)
    except sqlite3.Error as exc:
        raise _copy_failed(source, partial, exc) from None
    finally:
        source.close()


def _copy_failed(source: SqliteConnection, partial: Path, exc: sqlite3.Error) -> StoreError:
    """Say which side failed: the store being read, or the disk the copy goes to."""
    code = getattr(exc, "sqlite_errorname", "")
    if code.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
        return StoreError(
            f"{partial.parent}: cannot write the backup there ({exc}); is its disk full or "
            "read-only? No backup was written, and the store was not touched."
        )
    with translate_errors(source):
        raise exc


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot create the backup file ({exc})") from None


def _finish(copy: sqlite3.Connection, partial: Path) -> None:
    try:
        verdict = [row[0] for row in copy.execute("PRAGMA integrity_check").fetchall()]
        if verdict != ["ok"]:
            raise StoreError(
                f"the copy failed SQLite's integrity check ({'; '.join(verdict[:5])}); the "
                "store itself may be damaged: run `newsletter doctor`. No backup was written."
            )
        # One file a restore can copy back by itself, without a -wal beside it.
        copy.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise StoreError(
            f"{partial}: cannot check the copy ({exc}); no backup was written"
        ) from None


def _describe(copy: sqlite3.Connection, target: Path) -> tuple[int, int, int]:
    try:
        subscribers = int(copy.execute("SELECT count(*) FROM subscribers").fetchone()[0])
        journal = int(copy.execute("SELECT count(*) FROM journal").fetchone()[0])
        version = int(copy.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise StoreError(
            f"{target}: the copy cannot be read ({exc}); no backup was written"
        ) from None
    return subscribers, journal, version
