"""The subscriber store, shared by the CLI, the send path and the web endpoints: one SQLite
file (the default), or a database on a PostgreSQL server (newsletter.postgres).

Open it with :func:`open_store`; every other function takes the connection it returns. Writes
run in :func:`transaction` (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL), so
a writer waits for the busy timeout instead of failing half-way, and a failed write leaves the
store as it was. Any database failure surfaces as :class:`~newsletter.errors.StoreError`
naming the store and what to do.

The schema is versioned (``PRAGMA user_version`` on SQLite, the table ``newsletter_schema`` on
PostgreSQL): ``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1`` on both. Later
features append steps; never edit a step that has shipped.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from email_validator import EmailNotValidError, validate_email

from newsletter.database_url import DatabaseUrl, StoreLocation, is_database_url
from newsletter.errors import (
    InvalidInput,
    StoreError,
    StoreReadOnly,
    describe_character,
    excerpt,
)
from newsletter.issue import WELCOME
from newsletter.private_files import create_private
from newsletter.taxonomy import Taxonomy

BUSY_TIMEOUT_SECONDS = 10.0


class Status(StrEnum):
    PENDING = "pending"  # double opt-in not yet confirmed
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


# Statuses that only the subscriber (or their mail server) can lift: an import or a bulk
# operation must never turn them back into a mailing.
SUPPRESSED = frozenset({Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED})

# Where a subscriber or a status change came from. Imports record "import:<file name>".
SOURCE_COMMAND = "command"
SOURCE_WEB = "web"
SOURCE_PROVIDER = "provider"
SOURCE_IMPORT = "import"


# The send journal's key for the welcome email: one row per subscriber under this "issue".
WELCOME_ISSUE = WELCOME


def import_source(path: Path | str) -> str:
    return f"{SOURCE_IMPORT}:{Path(path).name}"


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str
    topics: tuple[str, ...]  # empty: interested in every topic
    status: Status
    source: str
    created_at: str  # ISO 8601, UTC
    confirmed_at: str | None
    status_changed_at: str
    status_reason: str
    status_source: str


@dataclass(frozen=True)
class StoreStats:
    by_status: dict[Status, int]
    by_topic: dict[str, int]  # subscribers naming the topic; all_topics counts the rest
    all_topics: int
    growth: list[tuple[str, int, int]]  # (YYYY-MM, added that month, total at month end)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


class StoreConnection(Protocol):
    """What the store's functions need of a connection, on SQLite and on PostgreSQL alike."""

    dialect: str  # "sqlite" or "postgresql"

    @property
    def path(self) -> Path | DatabaseUrl: ...  # where the store is, for messages

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, seq: Any, /) -> Any: ...

    def begin(self, *, exclusive: bool = True) -> None: ...

    def describe_error(self, exc: BaseException) -> StoreError | None: ...

    def close(self) -> None: ...


class SqliteConnection(sqlite3.Connection):
    """A connection to a SQLite store that remembers its file, so that errors can name it."""

    dialect = "sqlite"
    path: Path

    def begin(self, *, exclusive: bool = True) -> None:
        # One writer at a time is SQLite's only way; ``exclusive`` matters on PostgreSQL.
        self.execute("BEGIN IMMEDIATE")

    def describe_error(self, exc: BaseException) -> StoreError | None:
        return _store_error(self, exc) if isinstance(exc, sqlite3.Error) else None


class SqliteOnly(str):
    """A migration statement with no counterpart on PostgreSQL (see step 5)."""

    __slots__ = ()


# --- Schema -------------------------------------------------------------------------------

_STATUS_CHECK = ", ".join(f"'{s.value}'" for s in Status)

# On PostgreSQL, newsletter.postgres.translate_ddl gives each statement that server's types,
# and statements marked SqliteOnly are left out.
MIGRATIONS: list[tuple[str, ...]] = [
    # 0 -> 1: subscribers
    (
        f"""
        CREATE TABLE subscribers (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL DEFAULT '',
            topics TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL CHECK (status IN ({_STATUS_CHECK})),
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            confirmed_at TEXT,
            status_changed_at TEXT NOT NULL,
            status_reason TEXT NOT NULL DEFAULT '',
            status_source TEXT NOT NULL
        )
        """,
        "CREATE INDEX subscribers_by_status ON subscribers (status, id)",
    ),
    # 1 -> 2: the send journal, one row per (issue, subscriber); see newsletter.journal
    (
        """
        CREATE TABLE journal (
            issue TEXT NOT NULL,
            subscriber_id INTEGER NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'deferred')),
            attempts INTEGER NOT NULL DEFAULT 0,
            provider TEXT NOT NULL DEFAULT '',
            provider_message_id TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            queued_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sent_at TEXT,
            PRIMARY KEY (issue, subscriber_id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX journal_by_state ON journal (issue, state, subscriber_id)",
    ),
    # 2 -> 3: the web endpoints. When each address last got a confirmation email (the rate
    # limit must survive a restart), and the history of topic choices with their source.
    (
        """
        CREATE TABLE confirmation_sends (
            email_key TEXT PRIMARY KEY,
            sent_at TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE topic_changes (
            id INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL,
            topics TEXT NOT NULL,
            source TEXT NOT NULL,
            changed_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX topic_changes_by_subscriber ON topic_changes (subscriber_id, id)",
    ),
    # 3 -> 4: what each issue's send was about, so that `newsletter status` reports the
    # audience the send used instead of re-reading an issue file that may have changed.
    (
        """
        CREATE TABLE journal_issues (
            issue TEXT PRIMARY KEY,
            topics TEXT NOT NULL,
            subject TEXT NOT NULL,
            first_run_at TEXT NOT NULL,
            last_run_at TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # 4 -> 5: subscriber ids are never used twice. Signed links and journal rows name a
    # subscriber by id, so a removed person's id given to a newcomer would let the old links
    # act on the newcomer and count them as already sent. AUTOINCREMENT never hands out an id
    # again; the sequence starts above every id any table has seen. (On PostgreSQL the id is
    # an identity column from step 1, whose sequence never goes back: nothing to do there.)
    (
        SqliteOnly(
            """
        CREATE TABLE subscribers_v5 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL DEFAULT '',
            topics TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL CHECK (status IN ({_STATUS_CHECK})),
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            confirmed_at TEXT,
            status_changed_at TEXT NOT NULL,
            status_reason TEXT NOT NULL DEFAULT '',
            status_source TEXT NOT NULL
        )
        """.replace("{_STATUS_CHECK}", _STATUS_CHECK)
        ),
        SqliteOnly("INSERT INTO subscribers_v5 SELECT * FROM subscribers"),
        SqliteOnly("DROP TABLE subscribers"),
        SqliteOnly("ALTER TABLE subscribers_v5 RENAME TO subscribers"),
        SqliteOnly("CREATE INDEX subscribers_by_status ON subscribers (status, id)"),
        # (The copy above made a sequence row already; there must be only one.)
        SqliteOnly("DELETE FROM sqlite_sequence WHERE name = 'subscribers'"),
        SqliteOnly(
            """
        INSERT INTO sqlite_sequence (name, seq) SELECT 'subscribers', max(
            (SELECT coalesce(max(id), 0) FROM subscribers),
            (SELECT coalesce(max(subscriber_id), 0) FROM journal),
            (SELECT coalesce(max(subscriber_id), 0) FROM topic_changes))
        """
        ),
    ),
    # 5 -> 6: the subscribe form's allowances (per client and overall, in fixed windows) and
    # the queue of confirmation emails, sent outside the request; see subscribe_requests.
    (
        """
        CREATE TABLE rate_windows (
            bucket TEXT NOT NULL,
            window INTEGER NOT NULL,
            hits INTEGER NOT NULL,
            expires REAL NOT NULL,
            PRIMARY KEY (bucket, window)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE confirmation_queue (
            subscriber_id INTEGER PRIMARY KEY,
            requested_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX confirmation_queue_due ON confirmation_queue (next_attempt_at)",
    ),
    # 6 -> 7: imports applied in short transactions, so the web endpoints can write while a
    # large one runs (newsletter.imports). Each import is a row that says how far it got; the
    # undo log holds what it changed, so that a failed import is undone and an interrupted
    # one is finished by a re-run or undone. At most one import is unfinished at a time.
    # import_added: the ids each slice added (AUTOINCREMENT makes them one range per batch).
    # import_undo: each subscriber the import updated, by file line; ``before`` is the row's
    # columns as JSON, the others are what the import left, to tell whether anyone changed
    # the row since.
    (
        """
        CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            file TEXT NOT NULL,
            options TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('applying', 'undoing', 'done', 'undone')),
            finished INTEGER NOT NULL DEFAULT 0,
            staged INTEGER NOT NULL,
            applied_line INTEGER NOT NULL DEFAULT 0,
            added INTEGER NOT NULL DEFAULT 0,
            updated INTEGER NOT NULL DEFAULT 0,
            unchanged INTEGER NOT NULL DEFAULT 0,
            kept_count INTEGER NOT NULL DEFAULT 0,
            kept TEXT NOT NULL DEFAULT '[]',
            started_at TEXT NOT NULL,
            finished_at TEXT
        )
        """,
        "CREATE UNIQUE INDEX imports_one_unfinished ON imports (finished) WHERE finished = 0",
        """
        CREATE TABLE import_added (
            import_id INTEGER NOT NULL,
            first_id INTEGER NOT NULL,
            last_id INTEGER NOT NULL,
            PRIMARY KEY (import_id, first_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE import_undo (
            import_id INTEGER NOT NULL,
            line INTEGER NOT NULL,
            email_key TEXT NOT NULL,
            before TEXT NOT NULL,
            status TEXT NOT NULL,
            status_changed_at TEXT NOT NULL,
            name TEXT NOT NULL,
            topics TEXT NOT NULL,
            PRIMARY KEY (import_id, line)
        ) WITHOUT ROWID
        """,
    ),
    # 7 -> 8: scheduled sends, one row per issue; see newsletter.schedule
    (
        """
        CREATE TABLE schedules (
            issue TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            due_at TEXT NOT NULL,
            timezone TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('scheduled', 'sent')),
            reason TEXT NOT NULL DEFAULT '',
            scheduled_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # 8 -> 9: delivery events (newsletter.events): one row per provider event, tied to the issue
    # and journal row it concerns; the webhook deliveries already seen (replays are refused);
    # the soft-bounce score of each subscriber; journal rows found by the provider's message id.
    (
        """
        CREATE TABLE delivery_events (
            id INTEGER PRIMARY KEY,
            provider TEXT NOT NULL,
            event_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN
                ('delivered', 'soft_bounce', 'hard_bounce', 'complaint', 'unsubscribe')),
            email TEXT NOT NULL,
            email_key TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            via TEXT NOT NULL,
            issue TEXT,
            subscriber_id INTEGER,
            status_change TEXT NOT NULL DEFAULT '',
            UNIQUE (provider, event_id)
        )
        """,
        "CREATE INDEX delivery_events_by_issue ON delivery_events (issue, kind)",
        """
        CREATE TABLE webhook_deliveries (
            source TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (source, delivery_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE soft_bounce_scores (
            subscriber_id INTEGER PRIMARY KEY,
            score INTEGER NOT NULL,
            last_day TEXT NOT NULL
        )
        """,
        "CREATE INDEX journal_by_provider_message_id ON journal (provider_message_id)"
        " WHERE provider_message_id != ''",
    ),
    # 9 -> 10: the subscriber's lifecycle (newsletter.consent, newsletter.erasure,
    # newsletter.audit). consent_events: how and when each person consented, by subscriber id
    # (deleted with the subscriber). erased_addresses: a keyed hash of each erased address,
    # so that no import brings it back. audit_log: what the admin (or the web) did to the list.
    (
        """
        CREATE TABLE consent_events (
            id INTEGER PRIMARY KEY,
            subscriber_id INTEGER NOT NULL,
            event TEXT NOT NULL,
            form TEXT NOT NULL,
            at TEXT NOT NULL,
            ip TEXT NOT NULL DEFAULT '',
            user_agent TEXT NOT NULL DEFAULT '',
            text_version TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX consent_events_by_subscriber ON consent_events (subscriber_id, id)",
        """
        CREATE TABLE erased_addresses (
            address_hash TEXT PRIMARY KEY,
            erased_at TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            who TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            count INTEGER
        )
        """,
        "CREATE INDEX audit_log_by_time ON audit_log (at, id)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, email, name, topics, status, source, created_at, confirmed_at,"
    " status_changed_at, status_reason, status_source"
)


# --- Connection and errors ----------------------------------------------------------------


def open_store(
    location: StoreLocation | str,
    *,
    timeout: float = BUSY_TIMEOUT_SECONDS,
    create: bool = True,
    readonly: bool = False,
    handed_between_threads: bool = False,
) -> StoreConnection:
    """Open (creating on first use, unless ``create`` is False) and migrate the store.

    ``location`` is the SQLite file's path or a :class:`DatabaseUrl` (a ``postgresql://``
    string is taken as one). ``timeout`` is how long a write waits for another writer (a
    send, the web endpoints) before giving up with a StoreError. Commands that only read or
    send pass ``create=False``: a mistyped path must not look like an empty list. Commands
    that only read pass ``readonly=True`` (implies ``create=False``): they work on a store
    this user cannot write, which they read without its write-ahead log's shared memory.
    ``handed_between_threads`` is for a connection that several threads use, one at a time
    (the webhook writer's): SQLite then does not insist on the thread that opened it.
    """
    if isinstance(location, str):
        location = as_location(location)
    if isinstance(location, DatabaseUrl):
        return _open_postgres(location, timeout, create=create and not readonly)
    path = Path(location)
    if not create or readonly:
        _require_existing(path)
    if readonly:
        try:
            return _open_writable(path, timeout)
        except StoreReadOnly:
            return _open_readonly(path)
    return _open_writable(path, timeout, same_thread=not handed_between_threads)


class StoreConnections:
    """Connections to one store for a long-running process (the web app), one per use.

    SQLite connections are cheap: a fresh one each time, so that threads never share one.
    A PostgreSQL connection costs a round trip and a server process: those come from a pool.
    """

    def __init__(self, location: StoreLocation, *, timeout: float = BUSY_TIMEOUT_SECONDS):
        self.location = location
        self.timeout = timeout
        self._pool: Any = None
        if isinstance(location, DatabaseUrl):
            from newsletter.postgres import PostgresPool

            self._pool = PostgresPool(location, timeout=timeout)

    @contextmanager
    def connection(self) -> Iterator[StoreConnection]:
        if self._pool is None:
            with closing(open_store(self.location, timeout=self.timeout, create=False)) as conn:
                yield conn
        else:
            with self._pool.connection() as conn:
                yield conn

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def may_exist(location: StoreLocation) -> bool:
    """False when the store surely does not exist yet (no SQLite file); a server is asked later."""
    return isinstance(location, DatabaseUrl) or Path(location).exists()


def as_location(value: str) -> StoreLocation:
    """A store's location as the settings or the command line give it."""
    return DatabaseUrl(value) if is_database_url(value) else Path(value)


def _open_postgres(location: DatabaseUrl, timeout: float, *, create: bool) -> StoreConnection:
    # Imported here: the driver costs a tenth of a second, which SQLite users need not pay.
    from newsletter.postgres import PostgresConnection

    conn = PostgresConnection.connect(location, timeout=timeout)
    try:
        if not create and schema_version(conn) == 0:
            raise StoreError(
                f"{location}: there is no subscriber store in this database. Check [paths] "
                "database (or NEWSLETTER_DATABASE_URL), or create it first (`newsletter "
                "subscribers import FILE.csv`, or `newsletter store copy` from a SQLite store)."
            )
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _open_writable(path: Path, timeout: float, *, same_thread: bool = True) -> StoreConnection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create its folder ({exc.strerror})") from None
    try:
        # Personal data: owner-only from the first byte (SQLite gives -wal and -shm the same).
        create_private(path)
        conn = sqlite3.connect(
            path,
            timeout=timeout,
            isolation_level=None,
            factory=SqliteConnection,
            check_same_thread=same_thread,
        )
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"{path}: cannot open the subscriber store ({exc})") from None
    conn.path = path
    try:
        with translate_errors(conn):
            # WAL lets the web endpoints write while a send reads and writes its journal.
            # synchronous stays FULL: an unsubscribe must survive a power cut.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _open_readonly(path: Path) -> StoreConnection:
    """The store of another user (or on a read-only disk), for reading only."""
    # WAL readers need to write its shared-memory index; "immutable" reads the main file
    # alone, which is only the whole truth when no log holds changes not yet copied back.
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreReadOnly(
            f"{path}: this user cannot write the store, and it has recent changes in "
            f"{wal.name} that only a user who can write it will fold in. Run the command as "
            "the store's owner (or any command that writes, as the owner, first)."
        )
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, factory=SqliteConnection)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the subscriber store ({exc})") from None
    conn.path = path
    try:
        with translate_errors(conn):
            version = schema_version(conn)
    except BaseException:
        conn.close()
        raise
    if version != SCHEMA_VERSION:
        conn.close()
        raise StoreReadOnly(
            f"{path}: the store has schema version {version} and this version of newsletter "
            f"uses {SCHEMA_VERSION}; this user cannot write it to upgrade it. Run any "
            "`newsletter subscribers` command as the store's owner once."
        )
    return conn


def _require_existing(path: Path) -> None:
    """Refuse a missing or empty file: SQLite would quietly make it a new, empty store."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise StoreError(
            f"{path}: there is no subscriber store here. Check [paths] database in "
            "newsletter.toml, or add subscribers first (`newsletter subscribers import FILE.csv`)."
        ) from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the subscriber store ({exc.strerror})") from None
    if size == 0:
        raise StoreError(
            f"{path} is an empty file, not a subscriber store. Check [paths] database in "
            "newsletter.toml; if the store was lost, restore it from a backup (or remove the "
            "empty file and import the list again)."
        )


def _migrate(conn: StoreConnection) -> None:
    with translate_errors(conn):
        version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{conn.path}: the store has schema version {version}, but this version of "
            f"newsletter knows only up to {SCHEMA_VERSION}; upgrade newsletter"
        )
    if version == SCHEMA_VERSION:
        return
    postgres = conn.dialect == "postgresql"
    if postgres:
        from newsletter.postgres import MIGRATION_LOCK, translate_ddl
    with transaction(conn):
        if postgres:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS newsletter_schema (version INTEGER NOT NULL)")
        # Another process may have migrated while this one waited for the lock.
        version = schema_version(conn)
        for step in MIGRATIONS[version:]:
            for statement in step:
                if not postgres:
                    conn.execute(statement)
                elif not isinstance(statement, SqliteOnly):
                    conn.execute(translate_ddl(statement))
        # Both keep the number in the transaction: a failed migration leaves the old one.
        if postgres:
            conn.execute("DELETE FROM newsletter_schema")
            conn.execute("INSERT INTO newsletter_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def schema_version(conn: StoreConnection) -> int:
    if conn.dialect == "postgresql":
        if conn.execute("SELECT to_regclass('newsletter_schema')").fetchone()[0] is None:
            return 0
        row = conn.execute("SELECT max(version) FROM newsletter_schema").fetchone()
        return int(row[0] or 0)
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def last_inserted_id(conn: StoreConnection, table: str) -> int:
    """The id this connection's latest insert into ``table`` was given."""
    if conn.dialect == "postgresql":
        row = conn.execute("SELECT currval(pg_get_serial_sequence(?, 'id'))", (table,)).fetchone()
    else:
        row = conn.execute("SELECT last_insert_rowid()").fetchone()
    return int(row[0])


def table_names(conn: StoreConnection) -> list[str]:
    """The store's tables (not the schema's version record), by name."""
    with translate_errors(conn):
        if conn.dialect == "postgresql":
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "current_schema() AND table_type = 'BASE TABLE' AND table_name != 'newsletter_schema'"
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _where(conn: StoreConnection | sqlite3.Connection) -> str:
    return str(getattr(conn, "path", "the subscriber store"))


@contextmanager
def translate_errors(conn: StoreConnection) -> Iterator[None]:
    """Turn the database's errors into StoreErrors a person can act on."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        described = conn.describe_error(exc)
        if described is None:
            raise
        raise described from exc


def _damaged(where: str, detail: str) -> StoreError:
    return StoreError(
        f"{where} is damaged ({detail}); nothing was changed. Keep the file: copy it aside, "
        "then restore the store from a backup, or rebuild one with `sqlite3 FILE .recover`. "
        "A send's journal is in it: do not start over with an empty store."
    )


def _disk_full(path: str) -> bool:
    try:
        disk = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return disk.f_bavail == 0 or (disk.f_files > 0 and disk.f_favail == 0)


def _store_error(conn: StoreConnection, exc: sqlite3.Error) -> StoreError:
    """What a SQLite error means, for a person."""
    where = _where(conn)
    code = getattr(exc, "sqlite_errorname", "")
    if code.startswith("SQLITE_BUSY") or code.startswith("SQLITE_LOCKED"):
        return StoreError(
            f"{where} is locked by another process (a running send or the web endpoints?); "
            "nothing was changed. Try again when it has finished.",
            cause=f"{where} was locked by another process for too long",
        )
    if code.startswith("SQLITE_FULL"):
        return StoreError(
            f"{where}: the disk (or the store's size limit) is full; nothing was changed. "
            "Free some space and run the command again.",
            cause=f"{where}: the disk (or the store's size limit) is full",
        )
    if code.startswith("SQLITE_NOTADB"):
        return StoreError(
            f"{where} is not a newsletter database ({exc}). Check [paths] database in "
            "newsletter.toml."
        )
    if code.startswith("SQLITE_CORRUPT"):
        return _damaged(where, str(exc))
    if code.startswith("SQLITE_CANTOPEN") and _disk_full(where):
        return StoreError(
            f"{where}: the disk holding the store is full (no free space or no free file "
            "entries), so SQLite cannot make the files it keeps beside it; nothing was "
            "changed. Free some space and run the command again.",
            cause=f"the disk holding {where} is full",
        )
    if code.startswith("SQLITE_READONLY") or code.startswith("SQLITE_CANTOPEN"):
        return StoreReadOnly(
            f"{where}: cannot write the store ({exc}); nothing was changed. Check the "
            "permissions of the file and of its folder (SQLite writes files beside it)."
        )
    return StoreError(f"{where}: {exc}")


@contextmanager
def transaction(conn: StoreConnection, *, exclusive: bool = True) -> Iterator[StoreConnection]:
    """A write transaction: everything inside commits together or not at all.

    ``exclusive`` (the default) keeps every other writer out, as SQLite always does, so what
    the transaction read stays true until it commits. The send journal's claims pass False:
    on PostgreSQL they then run beside each other, kept apart by their rows' locks.
    """
    with translate_errors(conn):
        try:
            conn.begin(exclusive=exclusive)  # on PostgreSQL, waiting for the lock may fail
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            interrupted = _interrupted(exc)
            # SQLite rolls back by itself after some errors (e.g. a full disk).
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except Exception:
                if not interrupted:
                    raise
                # Ctrl-C in the middle of talking to the server leaves the connection unusable;
                # the server drops what was not committed when it closes.
            if interrupted and not isinstance(exc, KeyboardInterrupt):
                raise KeyboardInterrupt from exc
            raise


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, or an error it caused: psycopg, interrupted half-way through
    a pipeline (executemany), raises "another command is already in progress" instead."""
    seen: BaseException | None = exc
    for _ in range(10):  # a short chain: the interrupt is close by when it is there at all
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


# --- Values -------------------------------------------------------------------------------

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MAX_LOCAL_PART = 64  # RFC 5321, 4.5.3.1.1
_ASCII_LOWERCASE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_PLAIN_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9.-]+)")


def normalize_email(address: str) -> str:
    """The canonical spelling of ``address`` (email-validator's, with an international domain
    in its ASCII form), or InvalidInput saying why not. Addresses no provider can deliver to
    are refused: non-ASCII before the @, or more than 64 characters there.

    Validating a domain is two thirds of email-validator's cost and a list has few distinct
    domains, so plain ASCII addresses take a path that validates each domain once; the
    result is the same as email-validator's (tests/test_store.py checks this).
    """
    address = address.strip()
    plain = _PLAIN_ADDRESS.fullmatch(address)
    if plain and len(plain[1]) <= _MAX_LOCAL_PART:
        domain = _normalized_domain(plain[2])
        if domain is not None:
            result = f"{plain[1]}@{domain}"
            if len(result) <= 254:
                return result
    _refuse_undeliverable(address)
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid address {excerpt(address)}: {exc}") from None
    # An international domain in its ASCII (IDNA) form, which every mail server takes.
    return valid.ascii_email or valid.normalized


def _refuse_undeliverable(address: str) -> None:
    """InvalidInput for a well-formed address no provider can deliver to.

    Outside ASCII, the part before the @ needs SMTPUTF8, which the providers' APIs do not
    take; and Unicode normalisation would make two mailboxes one (KELVIN SIGN and K).
    """
    local = address.rpartition("@")[0]
    strange = next((c for c in local if not c.isascii()), None)
    if strange is not None:
        raise InvalidInput(
            f"invalid address {excerpt(address)}: the part before the @ has a character outside "
            f"ASCII ({describe_character(strange)}), which the mail providers cannot deliver to; "
            "use an address with only ASCII letters, digits and punctuation before the @"
        )
    if len(local) > _MAX_LOCAL_PART:
        raise InvalidInput(
            f"invalid address {excerpt(address)}: the part before the @ is {len(local)} characters "
            f"long; mail servers take at most {_MAX_LOCAL_PART} (RFC 5321)"
        )


@functools.lru_cache(maxsize=4096)
def _normalized_domain(domain: str) -> str | None:
    try:
        return validate_email(f"x@{domain}", check_deliverability=False).ascii_domain
    except EmailNotValidError:
        return None  # the full validation says why, in terms of the real address


def email_key(email: str) -> str:
    """What makes two normalised addresses the same subscriber: the address regardless of the
    case of its ASCII letters.

    Only ASCII: Unicode case folding makes different mailboxes one (``straße`` and
    ``STRASSE``, and in a domain ``straße.de`` and ``strasse.de``, which IDNA 2008 keeps
    apart). A normalised address has only ASCII before the @, and its domain is in IDNA's
    lowercase form already.
    """
    return email.translate(_ASCII_LOWERCASE)


def canonical_topics(names: Iterable[str], taxonomy: Taxonomy) -> tuple[str, ...]:
    """The taxonomy's spelling of each name, in taxonomy order, without repeats."""
    found: set[str] = set()
    for name in names:
        if not name.strip():
            continue
        topic = taxonomy.canonical(name)
        if topic is None:
            suggestion = taxonomy.suggest(name.strip())
            hint = f"; did you mean '{suggestion}'?" if suggestion else ""
            raise InvalidInput(f"unknown topic '{name.strip()}'{hint}")
        found.add(topic)
    return tuple(t for t in taxonomy.topics if t in found)


def clean_name(name: str) -> str:
    """A display name fit for a To: header: one line, no control characters."""
    name = " ".join(name.split())
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"name {name!r} contains control characters")
    if len(name) > 200:
        raise InvalidInput(f"name is {len(name)} characters long; at most 200 are allowed")
    return name


# How the store writes a moment: ISO 8601 in UTC to the second, which sorts as text.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp_of(moment: float) -> str:
    """Unix time ``moment`` as the store writes times."""
    return datetime.fromtimestamp(moment, UTC).strftime(TIME_FORMAT)


def now_utc() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


# --- Reading ------------------------------------------------------------------------------


def _row_to_subscriber(row: tuple[Any, ...]) -> Subscriber:
    try:
        return _subscriber_from(row)
    except (ValueError, TypeError) as exc:
        # Only a damaged file (or a hand edit) gets past the schema's checks.
        raise _damaged("the subscriber store", f"subscriber {row[0]!r}: {exc}") from None


def _subscriber_from(row: tuple[Any, ...]) -> Subscriber:
    topics = json.loads(str(row[3]))
    return Subscriber(
        id=int(row[0]),
        email=str(row[1]),
        name=str(row[2]),
        topics=tuple(topics),
        status=Status(row[4]),
        source=str(row[5]),
        created_at=str(row[6]),
        confirmed_at=None if row[7] is None else str(row[7]),
        status_changed_at=str(row[8]),
        status_reason=str(row[9]),
        status_source=str(row[10]),
    )


def get_subscriber(conn: StoreConnection, email_or_id: str | int) -> Subscriber | None:
    """The subscriber with this id or address (any case, any valid spelling), or None."""
    with translate_errors(conn):
        if isinstance(email_or_id, int):
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM subscribers WHERE id = ?", (email_or_id,)
            ).fetchone()
        else:
            key = email_key(normalize_email(email_or_id))
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM subscribers WHERE email_key = ?", (key,)
            ).fetchone()
    return None if row is None else _row_to_subscriber(row)


def require_subscriber(conn: StoreConnection, email_or_id: str | int) -> Subscriber:
    found = get_subscriber(conn, email_or_id)
    if found is None:
        raise InvalidInput(
            f"no subscriber {email_or_id!r} in {_where(conn)}; "
            "`newsletter subscribers list` shows who is there"
        )
    return found


def _chose_any_of(table: str, topics: Sequence[str]) -> str:
    """SQL: the subscriber chose no topics (so every topic) or one of ``topics`` (as params)."""
    marks = ",".join("?" * len(topics)) or "NULL"
    return (
        f"({table}.topics = '[]' OR EXISTS "
        f"(SELECT 1 FROM json_each({table}.topics) WHERE value IN ({marks})))"
    )


def audience(topics: Sequence[str] | None, table: str = "subscribers") -> tuple[str, list[object]]:
    """Who gets an issue about ``topics``: an SQL condition on ``table`` and its parameters.

    Active subscribers who chose none of the topics (they want everything) or one of the
    issue's, as the preferences page promises. ``None`` means every active subscriber.
    """
    active = f"{table}.status = 'active'"
    if topics is None:
        return active, []
    return f"{active} AND {_chose_any_of(table, topics)}", list(topics)


def iter_subscriber_batches(
    conn: StoreConnection,
    *,
    status: Status | None = None,
    topic: str | None = None,
    after_id: int = 0,
    batch_size: int = 1000,
) -> Iterator[list[Subscriber]]:
    """Subscribers in id order, ``batch_size`` at a time, from the one after ``after_id``.

    Each batch is its own short query (keyset pagination), so memory stays flat and no read
    transaction is held open between batches: the web endpoints can write meanwhile, and a
    subscriber who unsubscribes before their batch is read is not included. ``topic``
    selects those interested in it, including those interested in every topic.
    """
    conditions = ["id > ?"]
    params: list[object] = []
    if status is not None:
        conditions.append("status = ?")
        params.append(status.value)
    if topic is not None:
        conditions.append(_chose_any_of("subscribers", [topic]))
        params.append(topic)
    sql = f"SELECT {_COLUMNS} FROM subscribers WHERE {' AND '.join(conditions)} ORDER BY id LIMIT ?"
    last = after_id
    while True:
        with translate_errors(conn):
            rows = conn.execute(sql, (last, *params, batch_size)).fetchall()
        if not rows:
            return
        batch = [_row_to_subscriber(row) for row in rows]
        yield batch
        last = batch[-1].id
        if len(rows) < batch_size:
            return


def iter_subscribers(
    conn: StoreConnection, *, status: Status | None = None, topic: str | None = None
) -> Iterator[Subscriber]:
    """Every matching subscriber in id order, streamed."""
    for batch in iter_subscriber_batches(conn, status=status, topic=topic):
        yield from batch


def count_subscribers(conn: StoreConnection, *, status: Status | None = None) -> int:
    with translate_errors(conn):
        if status is None:
            row = conn.execute("SELECT count(*) FROM subscribers").fetchone()
        else:
            row = conn.execute(
                "SELECT count(*) FROM subscribers WHERE status = ?", (status.value,)
            ).fetchone()
    return int(row[0])


def stats(conn: StoreConnection) -> StoreStats:
    """Counts by status and by topic, and how the list grew month by month."""
    with translate_errors(conn):
        by_status = {s: 0 for s in Status}
        for status, count in conn.execute(
            "SELECT status, count(*) FROM subscribers GROUP BY status"
        ):
            by_status[Status(status)] = int(count)
        by_topic = {
            str(topic): int(count)
            for topic, count in conn.execute(
                "SELECT value, count(*) FROM subscribers, json_each(subscribers.topics)"
                " GROUP BY value ORDER BY count(*) DESC, value"
            )
        }
        all_topics = int(
            conn.execute("SELECT count(*) FROM subscribers WHERE topics = '[]'").fetchone()[0]
        )
        growth: list[tuple[str, int, int]] = []
        total = 0
        for month, added in conn.execute(
            "SELECT substr(created_at, 1, 7) AS month, count(*) FROM subscribers"
            " GROUP BY month ORDER BY month"
        ):
            total += int(added)
            growth.append((str(month), int(added), total))
    return StoreStats(by_status, by_topic, all_topics, growth)


# --- Writing ------------------------------------------------------------------------------


def add_subscriber(
    conn: StoreConnection,
    email: str,
    *,
    name: str = "",
    topics: Sequence[str] = (),
    status: Status = Status.ACTIVE,
    source: str = SOURCE_COMMAND,
    taxonomy: Taxonomy | None = None,
) -> Subscriber:
    """Add a new subscriber; InvalidInput if the address is already in the store.

    ``topics`` are checked against ``taxonomy`` when given; otherwise they must already be
    canonical names.
    """
    normalized = normalize_email(email)
    wanted = canonical_topics(topics, taxonomy) if taxonomy is not None else tuple(topics)
    name = clean_name(name)
    stamp = now_utc()
    with transaction(conn):
        existing = conn.execute(
            "SELECT status FROM subscribers WHERE email_key = ?", (email_key(normalized),)
        ).fetchone()
        if existing is not None:
            raise InvalidInput(
                f"{normalized} is already in the store (status {existing[0]}); "
                "`newsletter subscribers show` gives the details"
            )
        conn.execute(
            "INSERT INTO subscribers (email, email_key, name, topics, status, source,"
            " created_at, confirmed_at, status_changed_at, status_reason, status_source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?)",
            (
                normalized,
                email_key(normalized),
                name,
                json.dumps(list(wanted), ensure_ascii=False),
                status.value,
                source,
                stamp,
                stamp if status is Status.ACTIVE else None,
                stamp,
                source,
            ),
        )
    return require_subscriber(conn, normalized)


def set_status(
    conn: StoreConnection,
    email_or_id: str | int,
    status: Status,
    reason: str = "",
    source: str = SOURCE_COMMAND,
) -> Subscriber:
    """Record a status change (unsubscribe, bounce, complaint, confirmation) and its reason.

    Setting the status a subscriber already has changes nothing and keeps the original
    timestamp and reason: the first unsubscribe is the one that counts. Returns the
    subscriber as stored afterwards; InvalidInput if there is no such subscriber.
    """
    stamp = now_utc()
    with transaction(conn):
        current = require_subscriber(conn, email_or_id)
        if current.status is status:
            return current
        conn.execute(
            "UPDATE subscribers SET status = ?, status_changed_at = ?, status_reason = ?,"
            " status_source = ?,"
            " confirmed_at = CASE WHEN ? = 'active' THEN coalesce(confirmed_at, ?)"
            " ELSE confirmed_at END"
            " WHERE id = ?",
            (status.value, stamp, reason, source, status.value, stamp, current.id),
        )
    return require_subscriber(conn, current.id)


def remove_subscriber(conn: StoreConnection, email_or_id: str | int) -> Subscriber:
    """Forget a subscriber and return what their row held.

    Unlike an unsubscribe, nothing of the address is kept: the row, the history of topic
    choices and the confirmation record go, and the provider's reasons in the send journal
    (which may quote the address) are blanked. The journal keeps, by id only, what each send
    did, so counts stay true; ids are never used again (schema 5), so those rows and the
    person's old links can never act on anyone else. A later import can add the address anew.
    """
    with transaction(conn):
        current = require_subscriber(conn, email_or_id)
        conn.execute("DELETE FROM subscribers WHERE id = ?", (current.id,))
        conn.execute("DELETE FROM topic_changes WHERE subscriber_id = ?", (current.id,))
        conn.execute("DELETE FROM confirmation_queue WHERE subscriber_id = ?", (current.id,))
        conn.execute("DELETE FROM consent_events WHERE subscriber_id = ?", (current.id,))
        # A welcome not sent yet must not go to an address that is gone.
        conn.execute(
            "DELETE FROM journal WHERE subscriber_id = ? AND issue = ?"
            " AND state IN ('queued', 'deferred')",
            (current.id, WELCOME_ISSUE),
        )
        # An unfinished import's undo log holds the row as it was: forget that copy too.
        conn.execute("DELETE FROM import_undo WHERE email_key = ?", (email_key(current.email),))
        conn.execute(
            "DELETE FROM confirmation_sends WHERE email_key = ?", (email_key(current.email),)
        )
        conn.execute(
            "UPDATE journal SET reason = '' WHERE subscriber_id = ? AND reason != ''",
            (current.id,),
        )
    return current


def set_topics(
    conn: StoreConnection,
    email_or_id: str | int,
    topics: Sequence[str],
    *,
    taxonomy: Taxonomy,
    source: str = SOURCE_COMMAND,
) -> Subscriber:
    """Replace a subscriber's topics (empty: every topic), recording the change and its source.

    Choosing the topics already stored changes nothing and records nothing.
    """
    wanted = json.dumps(list(canonical_topics(topics, taxonomy)), ensure_ascii=False)
    with transaction(conn):
        current = require_subscriber(conn, email_or_id)
        if json.dumps(list(current.topics), ensure_ascii=False) != wanted:
            conn.execute("UPDATE subscribers SET topics = ? WHERE id = ?", (wanted, current.id))
            conn.execute(
                "INSERT INTO topic_changes (subscriber_id, topics, source, changed_at)"
                " VALUES (?, ?, ?, ?)",
                (current.id, wanted, source, now_utc()),
            )
    return require_subscriber(conn, current.id)


def topic_history(
    conn: StoreConnection, subscriber_id: int
) -> list[tuple[str, tuple[str, ...], str]]:
    """Each recorded change of a subscriber's topics as (time, topics, source), oldest first."""
    with translate_errors(conn):
        rows = conn.execute(
            "SELECT changed_at, topics, source FROM topic_changes WHERE subscriber_id = ?"
            " ORDER BY id",
            (subscriber_id,),
        ).fetchall()
    return [(str(at), tuple(json.loads(str(topics))), str(source)) for at, topics, source in rows]


def forget_name(conn: StoreConnection, subscriber_id: int) -> None:
    """Clear a subscriber's display name (one typed by whoever filled in the form)."""
    with transaction(conn):
        conn.execute("UPDATE subscribers SET name = '' WHERE id = ?", (subscriber_id,))


def confirm_subscriber(
    conn: StoreConnection,
    subscriber_id: int,
    *,
    requested_at: str,
    source: str,
    on_confirmed: Callable[[Subscriber], None] | None = None,
) -> Subscriber | None:
    """Make a subscriber active after they confirmed a link issued at ``requested_at``.

    A pending subscriber becomes active. An unsubscribed one becomes active again only when
    they left before asking for the link: an old link must not undo a later unsubscribe.
    Bounced and complained addresses, and active ones, stay as they are. None if the
    subscriber no longer exists. ``on_confirmed`` runs in the same transaction, with the
    subscriber as it now is, when this call made them active (the consent record, the
    welcome), so that both happen or neither does.
    """
    with transaction(conn):
        current = get_subscriber(conn, subscriber_id)
        if current is None:
            return None
        can_return = (
            current.status is Status.UNSUBSCRIBED and current.status_changed_at < requested_at
        )
        if current.status is Status.PENDING or can_return:
            stamp = now_utc()
            conn.execute(
                "UPDATE subscribers SET status = 'active', status_changed_at = ?,"
                " status_reason = 'confirmed the subscription', status_source = ?,"
                " confirmed_at = ? WHERE id = ?",
                (stamp, source, stamp, current.id),
            )
            if on_confirmed is not None:
                confirmed = get_subscriber(conn, subscriber_id)
                assert confirmed is not None
                on_confirmed(confirmed)
    return get_subscriber(conn, subscriber_id)
