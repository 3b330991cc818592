"""`newsletter store copy` and the backup of a PostgreSQL store, against the tests' real server."""

from __future__ import annotations

import itertools
import socket
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from newsletter import audit, consent, csvio, erasure, events, store, subscribe_requests
from newsletter.backup import backup_store
from newsletter.cli import main
from newsletter.database_url import StoreLocation
from newsletter.errors import InvalidInput, StoreError
from newsletter.journal import JournalState, Outcome, SendJournal
from newsletter.store import Status, StoreConnection
from newsletter.store_copy import copy_store, store_checks, table_check
from newsletter.taxonomy import Taxonomy
from newsletter.tokens import Signer

from .conftest import write_settings

TAXONOMY = Taxonomy.default()
# Every status, names from several scripts (and quotes, an emoji), every kind of topic choice.
PEOPLE = [
    ("zoe@example.net", "Zoë Ünïcode-Åström", ("Attachment",), Status.ACTIVE),
    ("li@example.net", "李小龙", (), Status.ACTIVE),
    ("soren@example.net", "Søren Kierkegård", ("Adherence", "Anxiety Disorders"), Status.PENDING),
    ("owl@example.net", 'Ana 🦉 O\'Brien "the owl"', (), Status.UNSUBSCRIBED),
    ("olafur@example.net", "Ólafur Nguyễn", ("Attachment",), Status.BOUNCED),
    ("tab@example.net", "Back\\slash", (), Status.COMPLAINED),
]
NOW = 1_790_000_000.0  # a REAL with no fractional part: must hash as it does on the other side


@contextmanager
def opened(location: StoreLocation | str, *, create: bool = False) -> Iterator[StoreConnection]:
    with closing(store.open_store(location, create=create)) as conn:
        yield conn


def fill(conn: StoreConnection, folder: Path) -> None:
    """A little of everything the store holds, written through the library where it can be."""
    ids = []
    for email, name, topics, status in PEOPLE:
        added = store.add_subscriber(conn, email, name=name, topics=topics, taxonomy=TAXONOMY)
        store.set_status(conn, added.id, status, reason=f"« {status} » per test")
        ids.append(added.id)
    store.set_topics(conn, ids[0], ["Attachment", "Adherence"], taxonomy=TAXONOMY)
    journal = SendJournal(conn, "2026-10")
    journal.record_issue(["Attachment"], "Octobre — “ruptures” & repair")
    journal.queue_active()
    journal.mark_sending(ids[:2], "smtp")
    journal.record(
        [
            Outcome(ids[0], JournalState.SENT, "<nl.2026-10.1.abc@example.org>"),
            Outcome(ids[1], JournalState.FAILED, reason="550 Postfach nicht verfügbar"),
        ]
    )
    events.record_events(
        conn,
        [
            events.DeliveryEvent(
                "mailgun",
                "ev-1",
                events.EventKind.SOFT_BOUNCE,
                PEOPLE[0][0],
                "2026-10-02T10:00:00Z",
            ),
            events.DeliveryEvent(
                "mailgun", "ev-2", events.EventKind.DELIVERED, PEOPLE[1][0], "2026-10-02T10:01:00Z"
            ),
        ],
        via=events.VIA_WEBHOOK,
        delivery=("mailgun", "delivery-1", NOW),
    )
    consent.record(
        conn,
        ids[0],
        consent.ConsentEvent(
            "subscribe", "web", "2026-09-30T08:00:00Z", "203.0.113.0", "Firefox ☃"
        ),
    )
    audit.record(conn, "note", "a tab\there, a newline\nand a backslash \\ in 𝔘nicode", 3)
    for n, moment in enumerate((NOW, NOW + 0.25)):
        subscribe_requests.record_request(
            conn,
            email=f"form{n}@example.org",
            name="Ærøskøbing",
            topics=[],
            client="198.51.100.7",
            limits=subscribe_requests.SubscribeLimits(),
            now=moment,
        )
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO schedules (issue, path, due_at, timezone, state, scheduled_at, updated_at)"
            " VALUES ('2026-11', 'issues/2026-11.md', '2026-11-05T07:00:00Z', 'Europe/Zürich',"
            " 'scheduled', '2026-10-30T12:00:00Z', '2026-10-30T12:00:00Z')"
        )
    csv = folder / "list.csv"
    csv.write_text("email,name,topics,status\nnew@example.org,Naïve Import,Attachment,active\n")
    csvio.import_csv(conn, csv, TAXONOMY)
    # What an unfinished import leaves (a finished one clears it).
    with store.transaction(conn):
        conn.execute("INSERT INTO import_added (import_id, first_id, last_id) VALUES (99, 7, 8)")
        conn.execute(
            "INSERT INTO import_undo (import_id, line, email_key, before, status,"
            " status_changed_at, name, topics) VALUES (99, 2, 'x@example.net', '{}', 'active',"
            " '2026-10-01T00:00:00Z', 'Ëx', '[]')"
        )
    gone = store.add_subscriber(conn, "gone@example.net", name="Erased Soon")
    erasure.erase(conn, gone.id, Signer(b"k" * 32, "test"), who="test")


def rows_of(conn: StoreConnection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted, as Python values (a check independent of the hash)."""
    return {
        table: sorted(
            (tuple(row) for row in conn.execute(f"SELECT * FROM {table}").fetchall()), key=repr
        )
        for table in store.table_names(conn)
    }


def subscriber_floor(conn: StoreConnection) -> int:
    """The id the next new subscriber gets, less one, without adding one."""
    if conn.dialect == "postgresql":
        sql = "SELECT last_value FROM subscribers_id_seq"
    else:
        sql = "SELECT seq FROM sqlite_sequence WHERE name = 'subscribers'"
    return int(conn.execute(sql).fetchone()[0])


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "first.db"
    with opened(path, create=True) as conn:
        fill(conn, tmp_path)
    return path


# --- Copies -----------------------------------------------------------------------------------


def test_a_store_goes_to_postgresql_and_back_unchanged(
    filled: Path, postgres_url: str, tmp_path: Path
) -> None:
    with opened(filled) as conn:
        before, rows, floor = store_checks(conn), rows_of(conn), subscriber_floor(conn)
        subscribers = list(store.iter_subscribers(conn))
    assert all(check.rows for check in before), [c.table for c in before if not c.rows]
    assert {s.status for s in subscribers} == set(Status)

    to_server = copy_store(filled, postgres_url)
    back = copy_store(postgres_url, tmp_path / "back.db")

    assert to_server.tables == before == back.tables
    assert to_server.rows == back.rows == sum(c.rows for c in before)
    assert to_server.sha256 == back.sha256
    assert to_server.id_floors["subscribers"] == back.id_floors["subscribers"] == floor
    with opened(postgres_url) as conn:
        assert store_checks(conn) == before
        assert list(store.iter_subscribers(conn)) == subscribers
        assert subscriber_floor(conn) == floor
    with opened(tmp_path / "back.db") as conn:
        assert store_checks(conn) == before == store_checks(conn, batch_rows=2)
        assert rows_of(conn) == rows
        assert subscriber_floor(conn) == floor


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_store_is_copied_to_another_of_its_kind(
    kind: str, filled: Path, new_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    source: StoreLocation | str = filled
    target: StoreLocation | str = tmp_path / "second.db"
    if kind == "postgresql":
        source, target = new_postgres_database(), new_postgres_database()
        copy_store(filled, source)
    with opened(source) as conn:
        before = store_checks(conn)
    made = copy_store(source, target)
    with opened(target) as conn:
        assert made.tables == store_checks(conn) == before


def test_a_target_with_any_row_is_refused_and_left_as_it_was(
    filled: Path, postgres_url: str, tmp_path: Path
) -> None:
    with opened(postgres_url, create=True) as conn:
        store.add_subscriber(conn, "already@example.org")
        before = store_checks(conn)
    with pytest.raises(InvalidInput, match=r"is not empty \(rows in subscribers\)") as refused:
        copy_store(filled, postgres_url)
    assert "changed nothing" in str(refused.value) and postgres_url in str(refused.value)
    with opened(postgres_url) as conn:
        assert store_checks(conn) == before

    other = tmp_path / "other.db"
    with opened(other, create=True) as conn:
        audit.record(conn, "note")  # one row, in a table far from the subscribers
    with pytest.raises(InvalidInput, match=r"rows in audit_log\)"):
        copy_store(filled, other)
    with opened(other) as conn:
        assert [c.table for c in store_checks(conn) if c.rows] == ["audit_log"]


def test_a_removed_subscribers_id_is_never_given_again_after_any_copy(
    new_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    """SQLite → PostgreSQL → PostgreSQL → SQLite → SQLite, the highest subscriber removed
    before each copy: the next subscriber added after it gets a higher id still."""
    first = tmp_path / "first.db"
    with opened(first, create=True) as conn:
        for n in range(3):
            store.add_subscriber(conn, f"reader{n}@example.net")
    places: list[StoreLocation | str] = [
        first,
        new_postgres_database(),
        new_postgres_database(),
        tmp_path / "third.db",
        tmp_path / "fourth.db",
    ]
    highest = 3
    for step, (source, target) in enumerate(itertools.pairwise(places)):
        with opened(source) as conn:
            store.remove_subscriber(conn, highest)
        made = copy_store(source, target)
        assert made.id_floors["subscribers"] == highest, step
        with opened(target) as conn:
            assert store.get_subscriber(conn, highest) is None
            newcomer = store.add_subscriber(conn, f"newcomer{step}@example.net")
        assert newcomer.id == highest + 1, step
        highest = newcomer.id


# --- The check --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (
            "UPDATE subscribers SET name = 'Mallory' WHERE id = 1",
            r"subscribers: the same \d+ rows counted, but SHA-256 \w{12} in SRC and \w{12} in DST",
        ),
        ("DELETE FROM consent_events", r"consent_events: \d+ rows in SRC, 0 in DST"),
    ],
    ids=["changed", "missing"],
)
def test_a_copy_that_differs_from_its_source_is_rolled_back(
    kind: str, damage: str, says: str, filled: Path, postgres_url: str, tmp_path: Path
) -> None:
    target: StoreLocation | str = postgres_url if kind == "postgresql" else tmp_path / "t.db"
    damaged = []

    def corrupt(table: str, dst: StoreConnection) -> None:
        # Written by the copy's own connection, inside its transaction, after the table.
        if table == "subscribers":
            dst.execute(damage)
            damaged.append(table)

    with pytest.raises(StoreError, match=says) as failed:
        copy_store(filled, target, after_table=corrupt)
    assert damaged and "rolled back, so DST is empty" in str(failed.value)
    with opened(target) as conn:
        assert not any(check.rows for check in store_checks(conn))
    copy_store(filled, target)  # and the empty target takes a copy afterwards


def test_the_hash_is_of_values_not_of_how_each_database_types_them(
    postgres_url: str, tmp_path: Path
) -> None:
    """5 from SQLite and 5.0 from PostgreSQL's double precision hash the same, and so do 1 and
    true; the text '5' does not, nor does any other value."""
    server = store.open_store(postgres_url, create=True)
    files = {name: store.open_store(tmp_path / f"{name}.db") for name in ("same", "text", "other")}
    try:
        server.execute(
            "CREATE TABLE probe (id BIGINT PRIMARY KEY, x DOUBLE PRECISION, flag BOOLEAN)"
        )
        server.execute("INSERT INTO probe VALUES (1, 5, true), (2, 0.5, false), (3, NULL, NULL)")
        # No declared types: SQLite keeps each value as given (5 stays an integer).
        values = {"same": (5, 1), "text": ("5", 1), "other": (5, 0)}
        for name, conn in files.items():
            conn.execute("CREATE TABLE probe (id INTEGER PRIMARY KEY, x, flag)")
            x, flag = values[name]
            conn.execute(
                "INSERT INTO probe VALUES (1, ?, ?), (2, 0.5, 0), (3, NULL, NULL)", (x, flag)
            )
        assert files["same"].execute("SELECT typeof(x) FROM probe WHERE id = 1").fetchone()[0] == (
            "integer"
        )
        expected = table_check(server, "probe")
        assert expected.rows == 3
        assert table_check(files["same"], "probe") == expected
        assert table_check(files["text"], "probe") != expected
        assert table_check(files["other"], "probe") != expected
    finally:
        server.close()
        for conn in files.values():
            conn.close()


def test_text_keys_are_ordered_alike_whatever_the_servers_collation(
    postgres_url: str, tmp_path: Path
) -> None:
    """A server whose locale sorts 'alpha' before 'Zeta' (most do; the tests' uses C) hashes
    the rows in the same order as SQLite, which compares bytes."""
    with opened(postgres_url, create=True) as conn:
        conn.execute('ALTER TABLE journal_issues ALTER COLUMN issue TYPE text COLLATE "en-x-icu"')
        sorted_there = conn.execute(
            "SELECT x FROM (VALUES ('Zeta'), ('alpha')) AS v (x) ORDER BY x COLLATE \"en-x-icu\""
        ).fetchall()
    assert sorted_there == [("alpha",), ("Zeta",)]
    source = tmp_path / "issues.db"
    with opened(source, create=True) as conn:
        for issue in ("Zeta", "alpha", "é", "e", "2026-10"):
            SendJournal(conn, issue).record_issue([], f"about {issue}")
        expected = table_check(conn, "journal_issues")
    made = copy_store(source, postgres_url)
    assert expected in made.tables
    with opened(postgres_url) as conn:
        assert table_check(conn, "journal_issues") == expected


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_writer_during_the_copy_is_in_neither_the_copy_nor_its_check(
    kind: str, filled: Path, new_postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    source: StoreLocation | str = filled
    if kind == "postgresql":
        source = new_postgres_database()
        copy_store(filled, source)
    with opened(source) as conn:
        before = store_checks(conn)
    written = []

    def write_to_the_source(table: str, dst: StoreConnection) -> None:
        if not written:  # after the first table, long before subscribers and topic_changes
            with opened(source) as other:
                added = store.add_subscriber(other, "late@example.org", name="Late")
                store.set_topics(other, added.id, ["Attachment"], taxonomy=TAXONOMY)
            written.append(table)

    made = copy_store(source, tmp_path / "copy.db", after_table=write_to_the_source)
    assert written == ["audit_log"]
    assert made.tables == before
    with opened(tmp_path / "copy.db") as conn:
        assert store.get_subscriber(conn, "late@example.org") is None
    with opened(source) as conn:
        assert store.get_subscriber(conn, "late@example.org") is not None


# --- Errors -----------------------------------------------------------------------------------


def test_a_missing_source_or_an_unreachable_target_is_a_clear_error(
    filled: Path, postgres_url: str, tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match=r"nowhere\.db: no such file\. SRC must be an existing"):
        copy_store(tmp_path / "nowhere.db", postgres_url)
    with pytest.raises(
        StoreError, match=r"cannot open SRC: .*no subscriber store in this database"
    ):
        copy_store(postgres_url, tmp_path / "from-empty.db")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError) as unreachable:
        copy_store(filled, f"postgresql://newsletter:s3cret-pw@127.0.0.1:{port}/list")
    message = str(unreachable.value)
    assert message.startswith("cannot open DST: ")
    assert f"postgresql://newsletter:***@127.0.0.1:{port}/list" in message
    assert "s3cret-pw" not in message
    with pytest.raises(InvalidInput, match="is both SRC and DST"):
        copy_store(filled, str(filled))
    with pytest.raises(InvalidInput, match="mysql:// is not a store this tool knows"):
        copy_store(filled, "mysql://db.example.org/list")


# --- The command and the backup ----------------------------------------------------------------


def test_the_command_copies_prints_each_table_and_hides_the_password(
    filled: Path, postgres_url: str
) -> None:
    # The tests' server trusts loopback, so it lets a URL with any password in.
    url = postgres_url.replace("postgres@", "postgres:s3cret-pw@")
    runner = CliRunner()
    made = runner.invoke(main, ["store", "copy", str(filled), url])
    assert made.exit_code == 0, made.output
    with opened(filled) as conn:
        checks = {c.table: c for c in store_checks(conn)}
        floor = subscriber_floor(conn)
    lines = made.output.splitlines()
    assert lines[0] == f"Copied {filled} to {url.replace('s3cret-pw', '***')}:"
    for table, check in checks.items():
        assert any(line.split() == [table, str(check.rows), check.sha256[:12]] for line in lines), (
            table
        )
    assert lines[-3].split()[:2] == ["total", str(sum(c.rows for c in checks.values()))]
    assert lines[-2] == "Row counts and SHA-256 of all 17 tables match on both sides."
    assert lines[-1] == f"New subscribers get ids above {floor}."
    assert "s3cret-pw" not in made.output

    again = runner.invoke(main, ["store", "copy", str(filled), url])
    assert again.exit_code == 1
    assert again.output.startswith("Error: postgresql://postgres:***@")
    assert "is not empty" in again.output and "Traceback" not in again.output
    assert "s3cret-pw" not in again.output


def test_a_postgresql_store_is_backed_up_to_a_checked_sqlite_file(
    filled: Path, postgres_url: str, tmp_path: Path
) -> None:
    copy_store(filled, postgres_url)
    settings = write_settings(tmp_path, f'[paths]\ndatabase = "{postgres_url}"\n')
    with opened(postgres_url) as conn:
        expected = store_checks(conn)
        subscribers = store.count_subscribers(conn)

    target = tmp_path / "backups" / "list.db"
    target.parent.mkdir()
    made = backup_store(settings, target)

    assert made.copied is not None and made.copied.tables == expected
    assert (made.subscribers, made.journal_rows) == (subscribers, 2)
    assert made.schema_version == store.SCHEMA_VERSION
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["list.db"]  # no -wal, no partial
    with closing(sqlite3.connect(f"{target.as_uri()}?mode=ro", uri=True)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    with opened(target) as conn:
        assert store_checks(conn) == expected
    with pytest.raises(StoreError, match="never overwrites"):
        backup_store(settings, target)

    runner = CliRunner()
    config = ["--config", str(tmp_path / "newsletter.toml")]
    again = runner.invoke(main, [*config, "backup", str(target.with_name("again.db"))])
    assert again.exit_code == 0, again.output
    assert f"{subscribers} subscribers, 2 journal rows" in again.output
    assert "integrity check ok; row counts and SHA-256 of all 17 tables match postgresql://" in (
        again.output
    )
