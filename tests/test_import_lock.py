"""A large import never locks the web out, and an interrupted one is finished by a re-run.

Real SQLite files, real threads and real processes killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from newsletter import csvio, imports, store
from newsletter.database_url import DatabaseUrl, StoreLocation
from newsletter.errors import ImportRejected, StoreError
from newsletter.store import SUPPRESSED, Status
from newsletter.taxonomy import Taxonomy

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

TAXONOMY = Taxonomy.default()
_STATUSES = ["active"] * 17 + ["pending", "unsubscribed", "bounced"]


def generate(path: Path, rows: int, *, first: int = 0) -> Path:
    """A list of ``rows`` distinct addresses with names, topics and mixed statuses."""
    topics = TAXONOMY.topics
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csvio.COLUMNS)
        for n in range(first, first + rows):
            writer.writerow(
                [
                    f"person.{n}@mail{n % 97}.example.org",
                    f"Person {n}",
                    "; ".join(topics[n % len(topics) : n % len(topics) + n % 3]),
                    _STATUSES[n % len(_STATUSES)],
                ]
            )
    return path


def web_writer(
    database: StoreLocation, addresses: list[str], stop: threading.Event, waits: list[float]
) -> None:
    """Unsubscribe and resubscribe like the web endpoints do, every ~50 ms; time each write."""
    conn = store.open_store(database, timeout=5.0)
    try:
        n = 0
        while not stop.is_set():
            address = addresses[n % len(addresses)]
            status = Status.UNSUBSCRIBED if n % 2 == 0 else Status.ACTIVE
            start = time.perf_counter()
            # A write that gives up (StoreError) was lost: its whole wait counts.
            with contextlib.suppress(StoreError):
                store.set_status(conn, address, status, "one-click", store.SOURCE_WEB)
            waits.append(time.perf_counter() - start)
            n += 1
            stop.wait(0.05)
    finally:
        conn.close()


def test_web_writes_never_wait_long_during_a_large_import(tmp_path: Path) -> None:
    database = location_of(tmp_path)
    conn = store.open_store(database)
    addresses = [f"web{i}@example.org" for i in range(20)]
    for address in addresses:
        store.add_subscriber(conn, address)
    big = generate(tmp_path / "big.csv", 200_000)
    stop = threading.Event()
    waits: list[float] = []
    writer = threading.Thread(target=web_writer, args=(database, addresses, stop, waits))
    writer.start()
    try:
        report = csvio.import_csv(conn, big, TAXONOMY)
    finally:
        stop.set()
        writer.join()
        conn.close()
    waits.sort()
    assert waits[-1] < 1.0, f"a web write waited {waits[-1]:.2f} s (of {len(waits)} writes)"
    assert report.added == 200_000
    assert len(waits) >= 20, "the import ended before the web could try to write"
    print(f"{len(waits)} web writes, longest wait {waits[-1] * 1000:.0f} ms")


# --- An import killed while it applies ---------------------------------------------------------

# Addresses already in the store; the file lists each as active with a new name.
SEEDED = {
    "left@example.org": Status.UNSUBSCRIBED,
    "bounced@example.org": Status.BOUNCED,
    "complained@example.org": Status.COMPLAINED,
    "waiting@example.org": Status.PENDING,
    "reader@example.org": Status.ACTIVE,
}
# Listed last in the file: unsubscribes through the web after the import was killed.
LATE_LEAVER = "late.leaver@example.org"
ROWS = 40_000


def location_of(folder: Path) -> StoreLocation:
    """The store of the newsletter folder ``folder`` (its file, or the test's PostgreSQL one)."""
    url = os.environ.get("NEWSLETTER_DATABASE_URL")
    return DatabaseUrl(url) if url else folder / "newsletter.db"


def seed(folder: Path) -> Path:
    (folder / "newsletter.toml").write_text('[paths]\ndatabase = "newsletter.db"\n', "utf-8")
    conn = store.open_store(location_of(folder))
    for address, status in SEEDED.items():
        store.add_subscriber(conn, address, name="Old Name", status=status)
    store.add_subscriber(conn, LATE_LEAVER, name="Old Name")
    conn.close()
    path = generate(folder / "list.csv", ROWS)
    with path.open("a", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        for address in [*SEEDED, LATE_LEAVER]:
            writer.writerow([address, "New Name", "", "active"])
    return path


def cli(folder: Path, *args: str) -> list[str]:
    config = str(folder / "newsletter.toml")
    return [sys.executable, "-m", "newsletter", "--config", config, "subscribers", *args]


def run_cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(folder, *args), capture_output=True, text=True, timeout=120)


def comparable(database: StoreLocation) -> list[tuple[object, ...]]:
    """Every subscriber as stored, in id order, without the times (a re-run happens later).

    The ids themselves only on SQLite: a PostgreSQL sequence never takes back the numbers a
    killed transaction drew, so a re-run's ids may start after a gap (never reused, still).
    """
    conn = store.open_store(database)
    try:
        ids = "id, " if conn.dialect == "sqlite" else ""
        return [
            tuple(row)
            for row in conn.execute(
                f"SELECT {ids}email, email_key, name, topics, status, source,"
                " confirmed_at IS NULL, status_reason, status_source FROM subscribers ORDER BY id"
            )
        ]
    finally:
        conn.close()


def applied_fraction(database: StoreLocation) -> float | None:
    """How far the running import got, from its record; None before it has one."""
    try:
        conn = store.open_store(database, timeout=5, create=False)
    except StoreError:
        return None
    try:
        row = conn.execute(
            "SELECT added + updated + unchanged, staged FROM imports WHERE finished = 0"
        ).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0] / row[1]


def kill_when_applied(
    folder: Path, path: Path, fraction: float, sig: signal.Signals = signal.SIGKILL
) -> str:
    """Start the import, send ``sig`` once ``fraction`` of it is applied; return its stderr."""
    process = subprocess.Popen(
        cli(folder, "import", str(path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            done = applied_fraction(location_of(folder))
            if done is not None and done >= fraction:
                break
            time.sleep(0.002)
        assert process.poll() is None, "the import finished before it could be killed"
        os.kill(process.pid, sig)
    finally:
        _, stderr = process.communicate()
    return stderr


def suppressed_made_active(database: StoreLocation) -> list[str]:
    conn = store.open_store(database)
    try:
        return [
            address
            for address, status in SEEDED.items()
            if status in SUPPRESSED and store.require_subscriber(conn, address).status is not status
        ]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def clean_import(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[object, ...]], str]:
    """The store (SQLite's, with ids) and the report that an uninterrupted import gives."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
        return _clean_import(tmp_path_factory)


def as_stored_in(
    database: StoreLocation, rows: list[tuple[object, ...]]
) -> list[tuple[object, ...]]:
    """``rows`` from a SQLite store as ``comparable`` gives them for ``database``."""
    return rows if isinstance(database, Path) else [row[1:] for row in rows]


def _clean_import(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[object, ...]], str]:
    folder = tmp_path_factory.mktemp("clean")
    path = seed(folder)
    conn = store.open_store(location_of(folder))
    store.set_status(conn, LATE_LEAVER, Status.UNSUBSCRIBED, "one-click", store.SOURCE_WEB)
    conn.close()
    result = run_cli(folder, "import", str(path))
    assert result.returncode == 0, result.stderr
    counts = result.stdout.splitlines()[0]
    assert counts.startswith("Imported list.csv: ")
    return comparable(location_of(folder)), counts


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.8], ids=["early", "middle", "late"])
def test_a_killed_import_is_finished_by_running_it_again(
    tmp_path: Path, fraction: float, clean_import: tuple[list[tuple[object, ...]], str]
) -> None:
    expected, counts = clean_import
    path = seed(tmp_path)
    database = location_of(tmp_path)
    kill_when_applied(tmp_path, path, fraction)
    assert suppressed_made_active(database) == []
    conn = store.open_store(database)
    store.set_status(conn, LATE_LEAVER, Status.UNSUBSCRIBED, "one-click", store.SOURCE_WEB)
    conn.close()

    # Until it is finished, the list says it holds part of an import, and no other one starts.
    other = generate(tmp_path / "other.csv", 10, first=10_000_000)
    before = comparable(database)
    refused = run_cli(tmp_path, "import", str(other))
    assert refused.returncode == 1
    assert "an import of " in refused.stderr and "list.csv" in refused.stderr
    assert "was interrupted after" in refused.stderr
    assert f"`newsletter subscribers import {path}` again to finish it" in refused.stderr
    assert "--undo-interrupted" in refused.stderr
    assert comparable(database) == before
    assert "so the list holds part of it" in run_cli(tmp_path, "stats").stderr

    finished = run_cli(tmp_path, "import", str(path))
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("Finished the interrupted import of")
    assert counts in finished.stdout
    assert comparable(database) == as_stored_in(database, expected)
    assert suppressed_made_active(database) == []
    conn = store.open_store(database)
    assert conn.execute("SELECT count(*) FROM import_undo").fetchone() == (0,)
    assert conn.execute("SELECT state FROM imports").fetchall() == [("done",)]
    conn.close()
    assert "Warning" not in run_cli(tmp_path, "stats").stderr


def test_a_killed_import_can_be_undone_keeping_later_unsubscribes(tmp_path: Path) -> None:
    path = seed(tmp_path)
    database = location_of(tmp_path)
    before = comparable(database)
    kill_when_applied(tmp_path, path, 0.5)
    with closing(store.open_store(database)) as held, imports.import_lock(held):
        running = run_cli(tmp_path, "stats").stderr  # as if the import were still running
    assert "Warning: an import of " in running and "is in progress (" in running
    assert "was interrupted" in run_cli(tmp_path, "stats").stderr
    # Someone the import added unsubscribes before the undo: that must not be lost.
    conn = store.open_store(database)
    store.set_status(conn, "person.1@mail1.example.org", Status.UNSUBSCRIBED, "one-click", "web")
    conn.close()
    undone = run_cli(tmp_path, "import", "--undo-interrupted")
    assert undone.returncode == 0, undone.stderr
    assert undone.stdout.startswith("Undid the interrupted import of")
    assert "1 subscribers were changed by someone else meanwhile" in undone.stdout
    after = comparable(database)
    assert [row for row in after if row not in before] == [
        row for row in after if row[1] == "person.1@mail1.example.org"
    ]
    assert after[: len(before)] == before
    assert suppressed_made_active(database) == []
    nothing = run_cli(tmp_path, "import", "--undo-interrupted")
    assert nothing.returncode == 1
    assert "no import was interrupted" in nothing.stderr


def test_ctrl_c_says_what_was_left_and_what_to_do(tmp_path: Path) -> None:
    path = seed(tmp_path)
    stderr = kill_when_applied(tmp_path, path, 0.3, signal.SIGINT)
    assert stderr.startswith("Error: interrupted: an import of ")
    assert "so the list holds part of it" in stderr
    assert "again to finish it" in stderr
    assert "Traceback" not in stderr
    assert run_cli(tmp_path, "import", str(path)).returncode == 0
    assert suppressed_made_active(location_of(tmp_path)) == []


def test_one_rejected_row_in_a_large_file_changes_nothing(tmp_path: Path) -> None:
    database = location_of(tmp_path)
    conn = store.open_store(database)
    store.add_subscriber(conn, "person.7@mail7.example.org", status=Status.UNSUBSCRIBED)
    before = comparable(database)
    path = generate(tmp_path / "list.csv", 20_000)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("not an address,,,\n")
    with pytest.raises(ImportRejected, match="20002: not an address") as caught:
        csvio.import_csv(conn, path, TAXONOMY)
    assert "changed nothing" in str(caught.value)
    assert comparable(database) == before
    assert conn.execute("SELECT count(*) FROM imports").fetchone() == (0,)
    conn.close()


def test_unsubscribes_during_an_import_are_never_undone_by_it(tmp_path: Path) -> None:
    """The status is read again in every slice: an unsubscribe between two slices holds."""
    database = location_of(tmp_path)
    conn = store.open_store(database)
    leavers = [f"person.{n}@mail{n % 97}.example.org" for n in range(0, 40_000, 400)]
    for address in leavers:
        store.add_subscriber(conn, address, name="Old Name")
    path = generate(tmp_path / "list.csv", 40_000)  # lists every leaver as active or pending

    def leave() -> None:
        web = store.open_store(database)
        while applied_fraction(database) is None:
            time.sleep(0.001)
        for address in reversed(leavers):  # the last rows first: the import gets there later
            store.set_status(web, address, Status.UNSUBSCRIBED, "one-click", store.SOURCE_WEB)
            time.sleep(0.01)
        web.close()

    thread = threading.Thread(target=leave)
    thread.start()
    try:
        report = csvio.import_csv(conn, path, TAXONOMY)
    finally:
        thread.join()
    assert report.kept_count > 0  # some left before the import reached their row
    assert report.kept_count < len(leavers)  # and some after
    for address in leavers:
        assert store.require_subscriber(conn, address).status is Status.UNSUBSCRIBED, address
    conn.close()


@pytest.mark.sqlite_file  # SQLite's page limit plays the full disk
def test_a_store_that_fails_part_way_is_put_back_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices already committed are undone: the updated rows get back every column."""
    monkeypatch.setattr(imports, "SLICE_SECONDS", 0.0)  # one step of rows per transaction
    monkeypatch.setattr(imports, "PAUSE_SECONDS", 0.0)
    conn = store.open_store(location_of(tmp_path))
    old = [f"old{n}@example.org" for n in range(300)]
    for n, address in enumerate(old):
        store.add_subscriber(conn, address, name="Old", status=[*Status][n % 5])
    before = list(conn.execute("SELECT * FROM subscribers ORDER BY id"))
    lines = ["email,name,status"]
    lines += [f"{a},New,{['active', 'unsubscribed'][n % 2]}" for n, a in enumerate(old)]
    lines += [f"person{n}@example.org,{'N' * 150}," for n in range(5000)]
    path = tmp_path / "list.csv"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 60}")
    with pytest.raises(StoreError, match="full; nothing was changed"):
        csvio.import_csv(conn, path, TAXONOMY)
    assert list(conn.execute("SELECT * FROM subscribers ORDER BY id")) == before
    assert conn.execute("SELECT state, applied_line > 400 FROM imports").fetchall() == [
        ("undone", 1)
    ]
    assert conn.execute("SELECT count(*) FROM import_undo").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM import_added").fetchone() == (0,)
    conn.close()


def test_a_dry_run_records_nothing_and_mentions_an_unfinished_import(tmp_path: Path) -> None:
    path = seed(tmp_path)
    database = location_of(tmp_path)
    before = comparable(database)
    dry = run_cli(tmp_path, "import", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: nothing was changed." in dry.stdout
    assert comparable(database) == before
    conn = store.open_store(database)
    assert conn.execute("SELECT count(*) FROM imports").fetchone() == (0,)
    conn.close()
    kill_when_applied(tmp_path, path, 0.3)
    noted = run_cli(tmp_path, "import", str(path), "--dry-run")
    assert "Note: an import of " in noted.stdout and "was interrupted after" in noted.stdout
