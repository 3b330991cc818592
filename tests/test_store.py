from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter import store, subscribe_requests
from newsletter.database_url import StoreLocation
from newsletter.errors import InvalidInput, StoreError
from newsletter.store import Status
from newsletter.taxonomy import Taxonomy

from .pg_cluster import PostgresCluster

TAXONOMY = Taxonomy.default()


@pytest.fixture
def conn(store_location: StoreLocation) -> Iterator[store.StoreConnection]:
    connection = store.open_store(store_location)
    yield connection
    connection.close()


def test_open_creates_a_versioned_wal_store(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "newsletter.db"
    conn = store.open_store(path, timeout=2.5)
    assert path.is_file()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    conn.close()
    # Opening again migrates nothing and keeps the data.
    conn = store.open_store(path)
    assert store.count_subscribers(conn) == 0
    conn.close()


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.db"
    store.open_store(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="upgrade newsletter"):
        store.open_store(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.db"
    junk = b"this is a spreadsheet, honestly\n" * 200
    path.write_bytes(junk)
    with pytest.raises(StoreError, match="is not a newsletter database"):
        store.open_store(path)
    assert path.read_bytes() == junk


def test_add_normalises_and_is_unique_regardless_of_case(conn: store.StoreConnection) -> None:
    added = store.add_subscriber(
        conn,
        " Ana.Silva@Example.ORG ",
        name="Ana  Silva",
        topics=["empathy", "ATTACHMENT"],
        taxonomy=TAXONOMY,
    )
    assert added.email == "Ana.Silva@example.org"
    assert added.name == "Ana Silva"
    assert added.topics == ("Attachment", "Empathy")  # taxonomy order
    assert added.status is Status.ACTIVE
    assert added.confirmed_at == added.created_at
    assert added.source == store.SOURCE_COMMAND
    with pytest.raises(InvalidInput, match="already in the store"):
        store.add_subscriber(conn, "ana.silva@EXAMPLE.org")
    assert store.get_subscriber(conn, "ANA.SILVA@example.org") == added
    assert store.get_subscriber(conn, added.id) == added
    assert store.count_subscribers(conn) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"email": "not-an-address"}, "invalid address"),
        ({"email": "a@b.org", "topics": ["Empaty"]}, "did you mean 'Empathy'"),
        ({"email": "a@b.org", "name": "Bob\x00"}, "control characters"),
    ],
    ids=["address", "topic", "name"],
)
def test_add_rejects_bad_values(
    conn: store.StoreConnection, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        store.add_subscriber(conn, taxonomy=TAXONOMY, **kwargs)
    assert store.count_subscribers(conn) == 0


def test_set_status_records_when_why_and_who(conn: store.StoreConnection) -> None:
    store.add_subscriber(conn, "p@example.org", status=Status.PENDING)
    pending = store.require_subscriber(conn, "p@example.org")
    assert pending.confirmed_at is None
    confirmed = store.set_status(conn, "p@example.org", Status.ACTIVE, "confirmed", "web")
    assert confirmed.confirmed_at is not None
    gone = store.set_status(conn, confirmed.id, Status.UNSUBSCRIBED, "one-click", "web")
    assert (gone.status, gone.status_reason, gone.status_source) == (
        Status.UNSUBSCRIBED,
        "one-click",
        "web",
    )
    # A second unsubscribe (say, from the provider's list) keeps the first one's record.
    again = store.set_status(conn, gone.id, Status.UNSUBSCRIBED, "suppression list", "provider")
    assert again == gone
    with pytest.raises(InvalidInput, match="no subscriber"):
        store.set_status(conn, "nobody@example.org", Status.BOUNCED)


def test_batches_are_keyset_paginated_and_filtered(conn: store.StoreConnection) -> None:
    for i in range(25):
        store.add_subscriber(
            conn,
            f"user{i}@example.org",
            status=Status.BOUNCED if i % 5 == 0 else Status.ACTIVE,
            topics=["Empathy"] if i % 2 else [],
        )
    batches = list(store.iter_subscriber_batches(conn, status=Status.ACTIVE, batch_size=7))
    ids = [s.id for batch in batches for s in batch]
    assert ids == sorted(ids)
    assert len(ids) == 20
    assert all(len(batch) <= 7 for batch in batches)
    resumed = [
        s.id
        for b in store.iter_subscriber_batches(conn, status=Status.ACTIVE, after_id=ids[9])
        for s in b
    ]
    assert resumed == ids[10:]
    # Interested in Empathy: those naming it plus those who want every topic.
    wanting = list(store.iter_subscribers(conn, topic="Empathy"))
    assert len(wanting) == 25
    naming_only_other = list(store.iter_subscribers(conn, topic="Training"))
    assert {s.topics for s in naming_only_other} == {()}


def test_stats_counts_by_status_topic_and_month(conn: store.StoreConnection) -> None:
    store.add_subscriber(conn, "a@example.org", topics=["Empathy", "Training"])
    store.add_subscriber(conn, "b@example.org", topics=["Empathy"], status=Status.PENDING)
    store.add_subscriber(conn, "c@example.org")
    conn.execute("UPDATE subscribers SET created_at = '2024-01-15T00:00:00Z' WHERE id = 1")
    result = store.stats(conn)
    assert result.total == 3
    assert result.by_status[Status.ACTIVE] == 2
    assert result.by_status[Status.COMPLAINED] == 0
    assert result.by_topic == {"Empathy": 2, "Training": 1}
    assert result.all_topics == 1
    assert result.growth[0] == ("2024-01", 1, 1)
    assert result.growth[-1][2] == 3


def test_remove_forgets_the_address(conn: store.StoreConnection) -> None:
    store.add_subscriber(conn, "gone@example.org")
    removed = store.remove_subscriber(conn, "GONE@example.org")
    assert removed.email == "gone@example.org"
    assert store.get_subscriber(conn, "gone@example.org") is None


def test_a_locked_store_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.db"
    store.open_store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    conn = store.open_store(path, timeout=0.1)
    with pytest.raises(StoreError, match="locked by another process"):
        store.add_subscriber(conn, "a@example.org")
    holder.execute("ROLLBACK")
    holder.close()
    assert store.count_subscribers(conn) == 0
    conn.close()


# --- PostgreSQL's own failures -------------------------------------------------------------


def test_a_postgres_store_is_made_and_versioned_once(postgres_url: str) -> None:
    with closing(store.open_store(postgres_url)) as conn:
        assert store.schema_version(conn) == store.SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM newsletter_schema").fetchone()[0] == 1
        store.add_subscriber(conn, "a@example.org")
    with closing(store.open_store(postgres_url, create=False)) as conn:  # migrates nothing
        assert store.count_subscribers(conn) == 1


def test_an_empty_postgres_database_is_no_store_unless_asked_to_create_one(
    postgres_url: str,
) -> None:
    with pytest.raises(StoreError, match="there is no subscriber store in this database"):
        store.open_store(postgres_url, create=False)
    with pytest.raises(StoreError, match="there is no subscriber store"):
        store.open_store(postgres_url, readonly=True)


def test_a_postgres_store_from_a_newer_version_is_refused(postgres_url: str) -> None:
    with closing(store.open_store(postgres_url)) as conn:
        conn.execute("UPDATE newsletter_schema SET version = ?", (store.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="upgrade newsletter"):
        store.open_store(postgres_url)


def test_an_unreachable_server_names_the_url_without_its_password(
    postgres_cluster: PostgresCluster,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://newsletter:s3cret-pw@127.0.0.1:{port}/list"
    with pytest.raises(StoreError) as raised:
        store.open_store(url, timeout=1)
    message = str(raised.value)
    assert "cannot connect to the PostgreSQL store" in message
    assert f"postgresql://newsletter:***@127.0.0.1:{port}/list" in message
    assert "s3cret-pw" not in message
    missing = postgres_cluster.url("no_such_database")
    with pytest.raises(StoreError, match='database "no_such_database" does not exist'):
        store.open_store(missing)


def test_a_postgres_store_held_by_another_writer_is_a_clear_error(postgres_url: str) -> None:
    store.open_store(postgres_url).close()
    holder = store.open_store(postgres_url)
    conn = store.open_store(postgres_url, timeout=0.2)
    try:
        with store.transaction(holder):
            with pytest.raises(StoreError, match="locked by another process"):
                store.add_subscriber(conn, "a@example.org")
            assert not conn.in_transaction
        assert store.count_subscribers(conn) == 0
        store.add_subscriber(conn, "a@example.org")  # free again
    finally:
        holder.close()
        conn.close()


def test_a_full_disk_is_a_clear_error_and_rolls_back(tmp_path: Path) -> None:
    conn = store.open_store(tmp_path / "newsletter.db")  # SQLite's size limit plays the disk
    store.add_subscriber(conn, "first@example.org")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match="full"), store.transaction(conn):
        for i in range(5000):
            conn.execute(
                "INSERT INTO subscribers (email, email_key, status, source, created_at,"
                " status_changed_at, status_source) VALUES (?, ?, 'active', 'x', '', '', 'x')",
                (f"{i}@example.org" + "x" * 200, f"{i}" + "x" * 200),
            )
    assert not conn.in_transaction
    assert [s.email for s in store.iter_subscribers(conn)] == ["first@example.org"]


_ADDRESS_PARTS = st.text(alphabet="abcXYZ09.-_+=!'#@ü", max_size=20)


@settings(max_examples=400, deadline=None)
@given(
    local=_ADDRESS_PARTS,
    domain=st.one_of(_ADDRESS_PARTS, st.sampled_from(["Example.ORG", "a.b.c", "x-.org", "a..b"])),
)
def test_fast_normalisation_agrees_with_email_validator(local: str, domain: str) -> None:
    _assert_normalised_like_email_validator(f"{local}@{domain}")


@given(st.emails())
@settings(max_examples=200, deadline=None)
def test_fast_normalisation_agrees_on_generated_addresses(address: str) -> None:
    _assert_normalised_like_email_validator(address)


def _assert_normalised_like_email_validator(address: str) -> None:
    try:
        valid = validate_email(address, check_deliverability=False)
        # What no provider delivers to is refused on top (test_normalisation_collisions.py).
        local = address.strip().rpartition("@")[0]
        deliverable = local.isascii() and len(local) <= 64 and valid.ascii_email
        expected: str | None = valid.ascii_email if deliverable else None
    except EmailNotValidError:
        expected = None
    try:
        got: str | None = store.normalize_email(address)
    except InvalidInput:
        got = None
    assert got == expected


def test_invalid_input_is_a_value_error_and_never_a_store_failure(
    conn: store.StoreConnection,
) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.add_subscriber(conn, "not an address")
    assert isinstance(caught.value, ValueError)
    assert not isinstance(caught.value, StoreError)


def _store_at_version(path: Path, version: int) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    for step in store.MIGRATIONS[:version]:
        for statement in step:
            raw.execute(statement)
    raw.execute(f"PRAGMA user_version = {version}")
    raw.close()


def test_an_id_is_never_given_twice_even_after_the_highest_is_removed(
    conn: store.StoreConnection,
) -> None:
    first = store.add_subscriber(conn, "a@example.org")
    last = store.add_subscriber(conn, "b@example.org")
    store.remove_subscriber(conn, last.id)
    newcomer = store.add_subscriber(conn, "c@example.org")
    assert newcomer.id not in (first.id, last.id)
    assert newcomer.id > last.id


def test_an_older_store_keeps_its_rows_and_never_reuses_an_id_the_journal_names(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    _store_at_version(path, 4)
    raw = sqlite3.connect(path, isolation_level=None)
    for n in (1, 2):
        raw.execute(
            "INSERT INTO subscribers (id, email, email_key, status, source, created_at,"
            " status_changed_at, status_source) VALUES (?, ?, ?, 'active', 'x', 't', 't', 'x')",
            (n, f"r{n}@example.org", f"r{n}@example.org"),
        )
    # Subscriber 3 was removed before the upgrade; the journal still names the id.
    raw.execute(
        "INSERT INTO journal (issue, subscriber_id, state, queued_at, updated_at)"
        " VALUES ('2026-10', 3, 'sent', 't', 't')"
    )
    raw.close()
    upgraded = store.open_store(path)
    assert [s.email for s in store.iter_subscribers(upgraded)] == [
        "r1@example.org",
        "r2@example.org",
    ]
    assert store.add_subscriber(upgraded, "new@example.org").id == 4
    upgraded.close()


def test_remove_forgets_topics_history_confirmations_and_reasons(
    conn: store.StoreConnection,
) -> None:
    ana = store.add_subscriber(
        conn, "ana@example.org", topics=["Empathy"], taxonomy=TAXONOMY, status=Status.PENDING
    )
    store.set_topics(conn, ana.id, ["Training"], taxonomy=TAXONOMY)
    verdict = subscribe_requests.record_request(
        conn,
        email="ana@example.org",
        name="",
        topics=(),
        client="192.0.2.1",
        limits=subscribe_requests.SubscribeLimits(),
        now=time.time(),
    )
    assert verdict is subscribe_requests.Verdict.ACCEPTED
    assert subscribe_requests.queued_count(conn) == 1
    conn.execute(
        "INSERT INTO journal (issue, subscriber_id, state, reason, queued_at, updated_at)"
        " VALUES ('2026-10', ?, 'failed', '550 <ana@example.org>: no such user', 't', 't')",
        (ana.id,),
    )
    store.remove_subscriber(conn, "ana@example.org")
    dump = repr([conn.execute(f"SELECT * FROM {t}").fetchall() for t in store.table_names(conn)])
    assert "ana@example.org" not in dump
    assert store.topic_history(conn, ana.id) == []
    assert subscribe_requests.queued_count(conn) == 0
    # What the send did stays countable, by id alone.
    assert conn.execute("SELECT state FROM journal").fetchall() == [("failed",)]


def _add_half(conn: store.StoreConnection) -> None:
    conn.execute(
        "INSERT INTO subscribers (email, email_key, status, source, created_at,"
        " status_changed_at, status_source) VALUES (?, ?, 'active', 'cli', ?, ?, 'cli')",
        ("half@example.org", "half@example.org", store.now_utc(), store.now_utc()),
    )


def _has_half(conn: store.StoreConnection) -> bool:
    found = conn.execute("SELECT count(*) FROM subscribers WHERE email = 'half@example.org'")
    return bool(found.fetchone()[0])


def test_ctrl_c_stays_ctrl_c_when_it_leaves_the_connection_unusable(
    store_location: StoreLocation,
) -> None:
    conn = store.open_store(store_location)
    with pytest.raises(KeyboardInterrupt), store.transaction(conn):
        _add_half(conn)
        conn.close()  # as Ctrl-C half-way through talking to the server leaves it
        raise KeyboardInterrupt
    with closing(store.open_store(store_location)) as again:
        assert not _has_half(again)


def test_an_error_raised_while_ctrl_c_is_handled_is_ctrl_c(conn: store.StoreConnection) -> None:
    # psycopg, interrupted in the middle of a pipeline, raises "another command is already in
    # progress" from its clean-up: the command must still say it was interrupted.
    with pytest.raises(KeyboardInterrupt), store.transaction(conn):
        _add_half(conn)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("another command is already in progress") from None
    assert not _has_half(conn)
