"""Time subscriber import, export and stats on a generated list, pinned to one CPU core.

    python bench/subscribers.py [--rows 100000] [--skip-naive] [--skip-postgresql]
                                [--lock-rows 1000000 | --skip-lock]

Baselines come from the same run: the csv module merely reading the file, and a naive import
(email-validator on every row, one INSERT and one COMMIT per row). Peak memory of the import
is measured in child processes at two file sizes, to show that it does not grow with the file.

The same file is also imported into a PostgreSQL store, the same way (``csvio.import_csv`` in a
child process pinned to the same core), on a private server started for the run
(bench/pg_server.py: durable commits, data on disk). The server is not pinned: it runs on any
core, beside whatever else the machine runs, and its CPU time is printed with the table.

The second table is what the web endpoints go through during a large import: another process
writes a one-click-style status change every ~50 ms while a child process imports
``--lock-rows`` rows, and each write's wait is timed. Its baseline is the import as it was
before schema 6 (every row checked and applied in one write transaction), loaded from git at
BASELINE_COMMIT and run in the same way.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

from email_validator import validate_email

import pg_server
from newsletter import csvio, store
from newsletter.errors import StoreError
from newsletter.taxonomy import Taxonomy

IMPORT_LIMIT_SECONDS = 10.0
WEB_WAIT_LIMIT_SECONDS = 1.0
WEB_WRITE_INTERVAL = 0.05
# The last commit whose import held one write transaction for the whole file.
BASELINE_COMMIT = "f44d968"
REPO = Path(__file__).resolve().parents[1]
_GIVEN = ["Ana", "Jide", "Zoë", "Søren", "Mai", "Łukasz", "Na", "Aoife", "Ólafur", "Kenji"]
_FAMILY = ["Lima", "Okafor", "Müller", "Kierkegård", "Nguyễn", "Wąsik", "李", "Ní Bhriain"]
_HANDLES = ["ana", "jide", "zoe", "soren", "mai", "lukasz", "na", "aoife", "olafur", "kenji"]
_STATUSES = (
    ["active"] * 85 + ["pending"] * 5 + ["unsubscribed"] * 6 + ["bounced"] * 3 + ["complained"]
)


def generate(path: Path, rows: int, taxonomy: Taxonomy) -> None:
    """A list shaped like a real one: a few hundred domains, mixed names, topics and statuses."""
    rng = random.Random(2021)
    domains = [f"mail{n}.example.org" for n in range(300)] + ["example.com", "example.net"]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csvio.COLUMNS)
        for n in range(rows):
            given, family = rng.choice(_GIVEN), rng.choice(_FAMILY)
            topics = rng.sample(taxonomy.topics, rng.choice([0, 0, 1, 2, 3]))
            writer.writerow(
                [
                    f"{rng.choice(_HANDLES)}.{n}@{rng.choice(domains)}",
                    f"{given} {family}",
                    "; ".join(topics),
                    rng.choice(_STATUSES),
                ]
            )


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def read_only(path: Path) -> None:
    with path.open(encoding="utf-8", newline="") as handle:
        for _ in csv.reader(handle):
            pass


def naive_import(path: Path, database: Path) -> None:
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE subscribers (email TEXT UNIQUE, name TEXT, topics TEXT, status TEXT)"
    )
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            email = validate_email(row["email"], check_deliverability=False).normalized
            conn.execute("BEGIN")
            conn.execute(
                "INSERT OR REPLACE INTO subscribers VALUES (?, ?, ?, ?)",
                (email, row["name"], row["topics"], row["status"]),
            )
            conn.execute("COMMIT")
    conn.close()


def child_import(path: Path, database: str) -> None:
    """Run in a child process: import into the store at ``database`` (a SQLite file's path or a
    PostgreSQL URL), then print the time, this process's CPU time and peak RSS as JSON."""
    conn = store.open_store(database)
    seconds = timed(lambda: csvio.import_csv(conn, path, Taxonomy.default()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mib": usage.ru_maxrss / 1024}))


def one_transaction_csvio() -> types.ModuleType:
    """csvio as it was at BASELINE_COMMIT: the import that held the write lock throughout."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:src/newsletter/csvio.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("csvio_one_transaction")
    sys.modules[module.__name__] = module
    exec(compile(source, f"csvio.py@{BASELINE_COMMIT}", "exec"), module.__dict__)
    return module


def child_locking_import(path: Path, database: Path, old: bool) -> None:
    """Run in a child process: import (the old way, or today's); print the time as JSON."""
    importer = one_transaction_csvio() if old else csvio
    conn = store.open_store(database)
    seconds = timed(lambda: importer.import_csv(conn, path, Taxonomy.default()))
    print(json.dumps({"seconds": seconds}))


def web_writes_during_import(path: Path, database: Path, old: bool) -> dict[str, float]:
    """Import ``path`` in a child process while this one writes like the web endpoints."""
    conn = store.open_store(database)
    addresses = [f"web{n}@example.org" for n in range(20)]
    for address in addresses:
        store.add_subscriber(conn, address)
    waits: list[float] = []
    lost = 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--child-locking-import", str(path), str(database)]
        + (["--old"] if old else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    while child.poll() is None:
        status = store.Status.UNSUBSCRIBED if len(waits) % 2 == 0 else store.Status.ACTIVE
        start = time.perf_counter()
        try:
            store.set_status(conn, addresses[len(waits) % 20], status, "one-click", "web")
        except StoreError:
            lost += 1  # the busy timeout passed: a real one-click unsubscribe would be lost
        waits.append(time.perf_counter() - start)
        time.sleep(WEB_WRITE_INTERVAL)
    output, _ = child.communicate()
    conn.close()
    if child.returncode:
        raise SystemExit(f"the import in the child process failed ({child.returncode})")
    waits.sort()
    p99 = (
        statistics.quantiles(waits, n=100, method="inclusive")[98] if len(waits) > 1 else waits[-1]
    )
    result: dict[str, float] = json.loads(output)
    result |= {"writes": len(waits), "max": waits[-1], "p99": p99, "lost": lost}
    return result


def measure_in_child(path: Path, database: Path | str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child-import", str(path), str(database)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--skip-naive", action="store_true", help="skip the slow baseline")
    parser.add_argument(
        "--skip-postgresql", action="store_true", help="skip the import into PostgreSQL"
    )
    parser.add_argument(
        "--lock-rows", type=int, default=1_000_000, help="rows of the import the web waits for"
    )
    parser.add_argument("--skip-lock", action="store_true", help="skip the web-wait table")
    parser.add_argument("--child-import", nargs=2, metavar=("CSV", "DB"), help=argparse.SUPPRESS)
    parser.add_argument("--child-locking-import", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_import:
        child_import(Path(args.child_import[0]), args.child_import[1])
        return
    if args.child_locking_import:
        csv_path, database = args.child_locking_import
        child_locking_import(Path(csv_path), Path(database), args.old)
        return
    # Started before this process pins itself, which the server would inherit.
    server = None if args.skip_postgresql else pg_server.start_server()
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children inherit it
        import_table(args, server)
    finally:
        if server is not None:
            server.stop()
    if not args.skip_lock:
        web_wait_table(args.lock_rows, Taxonomy.default())


def import_table(args: argparse.Namespace, server: pg_server.PostgresCluster | None) -> None:
    taxonomy = Taxonomy.default()
    rows: int = args.rows
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        big, small = folder / "big.csv", folder / "small.csv"
        generate(big, rows, taxonomy)
        generate(small, max(rows // 5, 1), taxonomy)
        size_mib = big.stat().st_size / 2**20
        print(
            f"{rows:,} rows, {size_mib:.1f} MiB, one CPU core (of {os.cpu_count()}), "
            f"Python {sys.version.split()[0]}"
        )
        if server is not None:
            print(pg_server.describe(server))

        results: list[tuple[str, float]] = []
        results.append(("csv module reading the file (baseline)", timed(lambda: read_only(big))))
        if not args.skip_naive:
            naive = timed(lambda: naive_import(big, folder / "naive.db"))
            results.append(("naive import: validate, INSERT, COMMIT per row", naive))

        small_run = measure_in_child(small, folder / "small.db")
        big_run = measure_in_child(big, folder / "big.db")
        results.append(("import into an empty store (SQLite)", big_run["seconds"]))
        pg_run = None
        if server is not None:
            url = server.new_database("bench_import")
            before = pg_server.server_cpu_seconds(server)
            pg_run = measure_in_child(big, url)
            pg_run["server_cpu"] = pg_server.server_cpu_seconds(server) - before
            results.append(("import into an empty store (PostgreSQL)", pg_run["seconds"]))

        conn = store.open_store(folder / "big.db")
        again = timed(lambda: csvio.import_csv(conn, big, taxonomy))
        results.append(("import again, every row unchanged (SQLite)", again))
        results.append(
            ("export (SQLite)", timed(lambda: csvio.export_csv(conn, folder / "out.csv")))
        )
        results.append(("stats (SQLite)", timed(lambda: store.stats(conn))))
        conn.close()

    baseline = results[0][1]
    print(f"\n| {'step':<48} | {'seconds':>8} | {'rows/s':>9} | {'× baseline':>10} |")
    print(f"|{'-' * 50}|{'-' * 9}:|{'-' * 10}:|{'-' * 11}:|")
    for label, seconds in results:
        rate = rows / seconds if seconds else float("inf")
        print(f"| {label:<48} | {seconds:8.2f} | {rate:9,.0f} | {seconds / baseline:10.1f} |")
    print(
        f"\nImport peak RSS: {small_run['peak_mib']:.0f} MiB for {max(rows // 5, 1):,} rows, "
        f"{big_run['peak_mib']:.0f} MiB for {rows:,} rows."
    )
    runs = [("SQLite", big_run)] + ([("PostgreSQL", pg_run)] if pg_run is not None else [])
    for name, run in runs:
        verdict = "PASS" if run["seconds"] <= IMPORT_LIMIT_SECONDS else "FAIL"
        print(f"Import within {IMPORT_LIMIT_SECONDS:.0f} s ({name}): {verdict}")
    if pg_run is not None:
        print(
            f"CPU time of the import into PostgreSQL: {pg_run['cpu']:.1f} s in the importing "
            f"process, {pg_run['server_cpu']:.1f} s in the server (all of its processes); "
            f"{pg_run['seconds']:.1f} s wall. Into SQLite: {big_run['cpu']:.1f} s, all in the "
            "importing process."
        )


def web_wait_table(rows: int, taxonomy: Taxonomy) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        path = folder / "lock.csv"
        generate(path, rows, taxonomy)
        runs = [
            (f"one transaction ({BASELINE_COMMIT}; baseline)", True),
            ("short slices (schema 6)", False),
        ]
        results = [
            (label, web_writes_during_import(path, folder / f"lock{n}.db", old))
            for n, (label, old) in enumerate(runs)
        ]
    print(
        f"\nWeb writes every {WEB_WRITE_INTERVAL * 1000:.0f} ms from another process during an "
        f"import of {rows:,} rows into a store of 20:"
    )
    print(
        f"\n| {'import':<36} | {'seconds':>8} | {'× baseline':>10} | {'writes':>6} |"
        f" {'max wait':>9} | {'p99 wait':>9} | {'lost':>4} |"
    )
    print(f"|{'-' * 38}|{'-' * 9}:|{'-' * 11}:|{'-' * 7}:|{'-' * 10}:|{'-' * 10}:|{'-' * 5}:|")
    baseline = results[0][1]["seconds"]
    for label, r in results:
        print(
            f"| {label:<36} | {r['seconds']:8.1f} | {r['seconds'] / baseline:10.2f} |"
            f" {r['writes']:6.0f} | {r['max'] * 1000:6.0f} ms | {r['p99'] * 1000:6.0f} ms |"
            f" {r['lost']:4.0f} |"
        )
    worst = results[-1][1]["max"]
    verdict = "PASS" if worst < WEB_WAIT_LIMIT_SECONDS else "FAIL"
    print(f"No web write waits {WEB_WAIT_LIMIT_SECONDS:.0f} s or more during the import: {verdict}")


if __name__ == "__main__":
    main()
