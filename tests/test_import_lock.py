"""A large import never locks the web out, and an interrupted one is finished by a re-run.

Real SQLite files, real threads and real processes killed with SIGKILL.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter import csvio, store
from newsletter.errors import ImportRejected, StoreError
from newsletter.store import SUPPRESSED, Status
from newsletter.taxonomy import Taxonomy

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
    database: Path, addresses: list[str], stop: threading.Event, waits: list[float]
) -> None:
    """Unsubscribe and resubscribe like the web endpoints do, every ~50 ms; time each write."""
    conn = store.open_store(database, timeout=5.0)
    try:
        n = 0
        while not stop.is_set():
            address = addresses[n % len(addresses)]
            status = Status.UNSUBSCRIBED if n % 2 == 0 else Status.ACTIVE
            start = time.perf_counter()
            try:
                store.set_status(conn, address, status, "one-click", store.SOURCE_WEB)
            except StoreError:
                pass  # counted as the whole wait below: the write was lost
            waits.append(time.perf_counter() - start)
            n += 1
            stop.wait(0.05)
    finally:
        conn.close()


def test_web_writes_never_wait_long_during_a_large_import(tmp_path: Path) -> None:
    database = tmp_path / "newsletter.db"
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
