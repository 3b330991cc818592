from __future__ import annotations

import csv
import resource
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter import csvio, store
from newsletter.errors import ImportRejected, InvalidInput, NewsletterError, StoreError
from newsletter.store import Status
from newsletter.taxonomy import Taxonomy

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

TAXONOMY = Taxonomy.default()
EXAMPLE = Path(__file__).resolve().parents[1] / "subscribers.example.csv"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[store.StoreConnection]:
    connection = store.open_store(tmp_path / "newsletter.db")
    yield connection
    connection.close()


def snapshot(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return list(conn.execute("SELECT * FROM subscribers ORDER BY id"))


def write(tmp_path: Path, text: str, name: str = "list.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_importing_the_example_twice_changes_nothing_the_second_time(
    conn: sqlite3.Connection,
) -> None:
    first = csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    assert (first.added, first.updated, first.unchanged, first.rejected_count) == (20, 0, 0, 0)
    before = snapshot(conn)
    second = csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    assert (second.added, second.updated, second.unchanged, second.rejected_count) == (0, 0, 20, 0)
    assert second.kept_count == 0
    assert snapshot(conn) == before
    li = store.require_subscriber(conn, "li.na@example.cn")
    assert (li.name, li.topics, li.status) == (
        "李娜",
        ("Feedback and Progress Monitoring",),
        "active",
    )
    assert li.source == "import:subscribers.example.csv"


def test_export_of_the_example_reproduces_it_and_reimports_unchanged(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    out = tmp_path / "export.csv"
    assert csvio.export_csv(conn, out) == 20
    assert out.read_bytes() == EXAMPLE.read_bytes()
    report = csvio.import_csv(conn, out, TAXONOMY)
    assert report.unchanged == 20


def test_an_unsubscribed_address_imported_as_active_stays_unsubscribed(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    store.add_subscriber(conn, "left@example.org")
    store.set_status(conn, "left@example.org", Status.UNSUBSCRIBED, "one-click", "web")
    store.add_subscriber(conn, "bounced@example.org", status=Status.BOUNCED)
    path = write(
        tmp_path,
        "Email,Name,Status\nLEFT@example.org,New Name,active\nbounced@example.org,,pending\n",
    )
    report = csvio.import_csv(conn, path, TAXONOMY)
    left = store.require_subscriber(conn, "left@example.org")
    assert left.status is Status.UNSUBSCRIBED
    assert (left.status_reason, left.status_source) == ("one-click", "web")
    assert left.name == "New Name"  # other fields still update
    assert report.kept == [
        csvio.KeptStatus(2, "LEFT@example.org", Status.UNSUBSCRIBED, Status.ACTIVE),
        csvio.KeptStatus(3, "bounced@example.org", Status.BOUNCED, Status.PENDING),
    ]
    assert (report.updated, report.unchanged) == (1, 1)


def test_import_may_suppress_and_confirm(conn: sqlite3.Connection, tmp_path: Path) -> None:
    store.add_subscriber(conn, "a@example.org")
    store.add_subscriber(conn, "p@example.org", status=Status.PENDING)
    path = write(tmp_path, "email,status\na@example.org,complained\np@example.org,active\n")
    csvio.import_csv(conn, path, TAXONOMY)
    complained = store.require_subscriber(conn, "a@example.org")
    assert complained.status is Status.COMPLAINED
    assert complained.status_reason == "import of list.csv, line 2"
    assert store.require_subscriber(conn, "p@example.org").confirmed_at is not None


def test_export_neutralises_formulas_and_round_trips(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    names = ['=HYPERLINK("http://x")', "+1 555", "-2+3", "@SUM(A1)", "'=already", "'t Hooft"]
    for i, name in enumerate(names):
        store.add_subscriber(conn, f"user{i}@example.org", name=name)
    store.add_subscriber(conn, "=cmd@example.org", name="plain")
    store.add_subscriber(conn, "-dash@example.org", name="plain")
    before = snapshot(conn)
    out = tmp_path / "export.csv"
    csvio.export_csv(conn, out)
    with out.open(encoding="utf-8", newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [c for c in cells if c[:1] in csvio.FORMULA_TRIGGERS]
    assert "'t Hooft" in cells
    report = csvio.import_csv(conn, out, TAXONOMY)
    assert report.unchanged == len(names) + 2
    assert snapshot(conn) == before


@given(st.text(max_size=12))
def test_neutralising_is_undone_exactly(value: str) -> None:
    cell = csvio.neutralize_cell(value)
    assert cell[:1] not in csvio.FORMULA_TRIGGERS
    assert csvio.restore_cell(cell) == value


def test_export_filters_by_status(conn: sqlite3.Connection, tmp_path: Path) -> None:
    csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    out = tmp_path / "export.csv"
    assert csvio.export_csv(conn, out, statuses=[Status.UNSUBSCRIBED]) == 2
    assert csvio.export_csv(conn, out, statuses=[Status.BOUNCED, Status.COMPLAINED]) == 2
    with out.open(encoding="utf-8") as handle:
        assert {row["status"] for row in csv.DictReader(handle)} == {"bounced", "complained"}


def test_a_failed_export_leaves_no_file(conn: sqlite3.Connection, tmp_path: Path) -> None:
    with pytest.raises(NewsletterError, match="cannot write"):
        csvio.export_csv(conn, tmp_path / "missing" / "out.csv")
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith("newsletter.db")]
    out = tmp_path / "out.csv"
    out.write_text("earlier export\n", "utf-8")
    csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    # A file size limit makes the write fail part-way, as a full disk would, even for root.
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (500, limits[1]))
    try:
        with pytest.raises(NewsletterError, match="cannot write the export"):
            csvio.export_csv(conn, out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert out.read_text("utf-8") == "earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("newsletter.db")) == [
        "out.csv"
    ]


def test_headers_match_regardless_of_case_bom_and_extra_columns(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "\ufeff EMAIL ,Signup Date,TOPICS\r\nx@example.org,2020-01-01,empathy;  training \r\n",
    )
    report = csvio.import_csv(conn, path, TAXONOMY)
    assert report.added == 1
    assert report.ignored_columns == ["Signup Date"]
    x = store.require_subscriber(conn, "x@example.org")
    assert x.topics == ("Empathy", "Training")
    assert x.status is Status.ACTIVE


def test_other_encodings_need_to_be_named(conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\nf@example.fr,François Pérez\n", encoding="cp1252")
    with pytest.raises(ImportRejected, match=r"list.csv:2: not utf-8-sig text.*--encoding"):
        csvio.import_csv(conn, path, TAXONOMY)
    csvio.import_csv(conn, path, TAXONOMY, encoding="cp1252")
    assert store.require_subscriber(conn, "f@example.fr").name == "François Pérez"
    with pytest.raises(InvalidInput, match="unknown encoding"):
        csvio.import_csv(conn, path, TAXONOMY, encoding="klingon")


BAD_ROWS = (
    "email,name,topics,status\n"
    "good@example.org,Good,,\n"  # 2
    "not an address,,,\n"  # 3
    "GOOD@example.org,Again,,\n"  # 4
    "t@example.org,,Empaty,\n"  # 5
    "s@example.org,,,asleep\n"  # 6
    "r@example.org,too,many,cells,here\n"  # 7
    ",no address,,\n"  # 8
    'm@example.org,"Two\nLines",,\n'  # 9-10
    "also-good@example.org,,,\n"  # 11
    "after-two-lines@,,,\n"  # 12
)


def test_one_bad_row_changes_nothing_and_every_bad_row_is_reported(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    store.add_subscriber(conn, "old@example.org")
    before = snapshot(conn)
    path = write(tmp_path, BAD_ROWS)
    with pytest.raises(ImportRejected) as caught:
        csvio.import_csv(conn, path, TAXONOMY)
    assert snapshot(conn) == before
    problems = {p.line: p.message for p in caught.value.problems}
    assert sorted(problems) == [3, 4, 5, 6, 7, 8, 12]
    assert "invalid address" in problems[3]
    assert "duplicate of line 2" in problems[4]
    assert "did you mean 'Empathy'" in problems[5]
    assert "unknown status 'asleep'" in problems[6]
    assert "has 5 cells, but the header has 4" in problems[7]
    assert "no email address" in problems[8]
    assert "after-two-lines@: invalid address" in problems[12]
    assert "changed nothing" in str(caught.value)
    assert "--skip-invalid" in str(caught.value)


def test_skip_invalid_imports_the_good_rows(conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = write(tmp_path, BAD_ROWS)
    report = csvio.import_csv(conn, path, TAXONOMY, skip_invalid=True)
    assert report.added == 3  # lines 2, 9 (a two-line name is fine) and 11
    assert report.rejected_count == 7
    assert {s.email for s in store.iter_subscribers(conn)} == {
        "good@example.org",
        "m@example.org",
        "also-good@example.org",
    }
    assert store.require_subscriber(conn, "m@example.org").name == "Two Lines"


def test_dry_run_reports_and_changes_nothing(conn: sqlite3.Connection, tmp_path: Path) -> None:
    csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    before = snapshot(conn)
    path = write(
        tmp_path,
        "email,name\nmaria.gonzalez@example.org,María G.\nnew@example.org,\n"
        "j.okafor@example.com,Jide Okafor\n",
    )
    report = csvio.import_csv(conn, path, TAXONOMY, dry_run=True)
    assert (report.added, report.updated, report.unchanged) == (1, 1, 1)
    assert report.dry_run
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"name,topics\nAna,\n", "no 'email' column"),
        (b"email,Email\na@example.org,b@example.org\n", "names the column 'email' twice"),
        (b'email,name\na@example.org,"Ana"x\n', "not valid CSV"),
        (b'email,name\na@example.org,"Ana\n', "not valid CSV"),
        (b"email\na@example.org\n\x00\x01\x02junk\n", "bad.csv:3: contains NUL"),
        (b"email\na@example.org\n\x89PNG\x00\n", "bad.csv:3: not utf-8-sig text"),
        (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xa8", "is a spreadsheet"),
        ("email\na@example.org\n".encode("utf-16"), "pass --encoding utf-16"),
    ],
    ids=[
        "empty",
        "no-email-column",
        "twice",
        "bad-quote",
        "unclosed-quote",
        "nul",
        "binary",
        "xlsx",
        "utf-16",
    ],
)
def test_malformed_files_are_refused_whole(
    conn: sqlite3.Connection, tmp_path: Path, content: bytes, message: str
) -> None:
    csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    before = snapshot(conn)
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    for skip in (False, True):
        with pytest.raises(ImportRejected, match=message) as caught:
            csvio.import_csv(conn, path, TAXONOMY, skip_invalid=skip)
        assert "nothing was changed" in str(caught.value)
    assert snapshot(conn) == before


def test_a_missing_file_is_a_clear_error(conn: sqlite3.Connection, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read the file"):
        csvio.import_csv(conn, tmp_path / "nope.csv", TAXONOMY)


def test_a_full_disk_during_import_changes_nothing(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    before = snapshot(conn)
    lines = ["email,name"] + [f"person{i}@example.org,{'N' * 150}" for i in range(5000)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 20}")
    with pytest.raises(StoreError, match="full; nothing was changed"):
        csvio.import_csv(conn, path, TAXONOMY)
    assert snapshot(conn) == before


def test_a_locked_store_refuses_the_import(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.db"
    store.open_store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    conn = store.open_store(path, timeout=0.1)
    try:
        with pytest.raises(StoreError, match="locked"):
            csvio.import_csv(conn, EXAMPLE, TAXONOMY)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.count_subscribers(conn) == 0
    conn.close()


def test_duplicates_are_found_across_batches(conn: sqlite3.Connection, tmp_path: Path) -> None:
    count = csvio.BATCH_SIZE * 2 + 10
    lines = ["email"] + [f"u{i}@example.org" for i in range(count)] + ["U5@example.org"]
    path = write(tmp_path, "\n".join(lines) + "\n")
    progress: list[int] = []
    with pytest.raises(ImportRejected, match=f"{count + 2}: U5@example.org: duplicate of line 7"):
        csvio.import_csv(conn, path, TAXONOMY, on_progress=progress.append)
    assert progress == sorted(progress)
    assert progress[-1] == path.stat().st_size
    assert store.count_subscribers(conn) == 0


_CELL = st.one_of(
    st.text(max_size=15),
    st.sampled_from(
        ["a@example.org", "A@EXAMPLE.org", "b@example.org", "Empathy", "active", "bounced", ""]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.lists(_CELL, min_size=0, max_size=5), max_size=8),
    junk=st.binary(max_size=20),
    skip=st.booleans(),
)
def test_random_rows_never_raise_foreign_errors_nor_import_partially(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]], junk: bytes, skip: bool
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    conn = store.open_store(folder / "newsletter.db")
    try:
        store.add_subscriber(conn, "b@example.org", status=Status.UNSUBSCRIBED)
        before = snapshot(conn)
        path = folder / "random.csv"
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "name", "topics", "status"])
            writer.writerows(rows)
        with path.open("ab") as handle:
            handle.write(junk)
        try:
            report = csvio.import_csv(conn, path, TAXONOMY, skip_invalid=skip)
        except NewsletterError:
            assert snapshot(conn) == before
            return
        after = snapshot(conn)
        assert len(after) == len(before) + report.added
        assert skip or report.rejected_count == 0
        # The unsubscribe is never undone.
        assert store.require_subscriber(conn, "b@example.org").status is Status.UNSUBSCRIBED
    finally:
        conn.close()
