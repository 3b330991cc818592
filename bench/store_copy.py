"""Time ``newsletter store copy`` of a generated SQLite store into PostgreSQL, and back.

    python bench/store_copy.py [--rows 100000] [--issues 1] [--repeat 3]

The store has ``--rows`` subscribers and the journals of ``--issues`` issues sent to all of
them (a row each). The server is the tests' private one (tests/pg_cluster.py: on /dev/shm when there is
room, fsync off), so the figures leave out a real disk's flushes; every copy goes into a new,
empty database. Rows reach PostgreSQL through ``COPY … FROM STDIN`` (what store copy does);
the baseline writes the same batches with ``executemany`` INSERTs instead. Also timed: the way
back into a new SQLite file, and the check (count and SHA-256) of the whole store on each side,
which every copy runs twice. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pg_cluster import PostgresCluster

from newsletter import store, store_copy

_NAMES = ["Ana Lima", "Zoë Müller", "Søren Kierkegård", "李 Wąsik", "Ólafur Nguyễn", ""]
_STATUSES = ["active"] * 17 + ["unsubscribed", "bounced", "pending"]


def generate(path: Path, rows: int, issues: int) -> None:
    """``rows`` subscribers, and for each a journal row of ``issues`` sent issues."""
    with closing(store.open_store(path)) as conn, store.transaction(conn):
        conn.executemany(
            "INSERT INTO subscribers (id, email, email_key, name, topics, status, source,"
            " created_at, confirmed_at, status_changed_at, status_reason, status_source)"
            " VALUES (?, ?, ?, ?, ?, ?, 'import:list.csv', '2025-01-01T00:00:00Z',"
            " '2025-01-01T00:00:00Z', '2025-06-01T00:00:00Z', '', 'import:list.csv')",
            (
                (
                    n,
                    f"reader{n}@mail{n % 300}.example.org",
                    f"reader{n}@mail{n % 300}.example.org",
                    _NAMES[n % len(_NAMES)],
                    json.dumps(["Attachment"] if n % 3 else []),
                    _STATUSES[n % len(_STATUSES)],
                )
                for n in range(1, rows + 1)
            ),
        )
        conn.executemany(
            "INSERT INTO journal (issue, subscriber_id, state, attempts, provider,"
            " provider_message_id, queued_at, updated_at, sent_at)"
            " VALUES (?, ?, 'sent', 1, 'smtp', ?, '2026-10-01T07:00:00Z',"
            " '2026-10-01T07:05:00Z', '2026-10-01T07:05:00Z')",
            (
                (f"2026-{month:02}", n, f"<nl.2026-{month:02}.{n}.x@example.org>")
                for month in range(1, issues + 1)
                for n in range(1, rows + 1)
            ),
        )


WriteTable = Callable[
    [store.StoreConnection, str, Sequence[str], Iterable[list[store_copy.Row]]], None
]


def insert_rows(copy_rows: WriteTable) -> WriteTable:
    """store_copy's writer, with executemany INSERTs instead of COPY on PostgreSQL."""

    def write(
        conn: store.StoreConnection,
        table: str,
        columns: Sequence[str],
        batches: Iterable[list[store_copy.Row]],
    ) -> None:
        if conn.dialect != "postgresql":
            copy_rows(conn, table, columns, batches)
            return
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join(["?"] * len(columns))
        for rows in batches:
            conn.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)

    return write


def best_of(repeat: int, run: Callable[[int], object]) -> float:
    times = []
    for attempt in range(repeat):
        started = time.perf_counter()
        run(attempt)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="subscribers in the store")
    parser.add_argument("--issues", type=int, default=1, help="sent issues in the journal")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    args = parser.parse_args()
    names = (f"bench_{n}" for n in itertools.count())
    with tempfile.TemporaryDirectory() as folder, PostgresCluster() as cluster:
        source = Path(folder) / "source.db"
        generate(source, args.rows, args.issues)
        print(
            f"{args.rows:,} subscribers, {args.rows * args.issues:,} journal rows: "
            f"{source.stat().st_size:,} bytes"
        )

        copy_rows = store_copy._write_table
        results = {}
        for label, writer in (("COPY", copy_rows), ("executemany", insert_rows(copy_rows))):
            with mock.patch.object(store_copy, "_write_table", writer):
                results[label] = best_of(
                    args.repeat,
                    lambda _: store_copy.copy_store(source, cluster.new_database(next(names))),
                )
        server = cluster.new_database(next(names))
        store_copy.copy_store(source, server)
        results["back to SQLite"] = best_of(
            args.repeat,
            lambda n: store_copy.copy_store(server, Path(folder) / f"back{n}.db"),
        )
        for label, location in (("check, SQLite", source), ("check, PostgreSQL", server)):
            with closing(store.open_store(location)) as conn:
                results[label] = best_of(args.repeat, lambda _: store_copy.store_checks(conn))

    print(f"{'':<40}{'seconds':>9}{'ratio':>8}")
    for label, seconds in results.items():
        what = {
            "COPY": "SQLite → PostgreSQL (COPY, store copy)",
            "executemany": "SQLite → PostgreSQL (executemany)",
            "back to SQLite": "PostgreSQL → SQLite",
        }.get(label, label)
        print(f"{what:<40}{seconds:>9.2f}{seconds / results['COPY']:>8.2f}")


if __name__ == "__main__":
    main()
