"""A private PostgreSQL server for the benchmarks, on this machine, and the CPU time it uses.

It is tests/pg_cluster.py's server (initdb and pg_ctl in a temporary folder, on a free port; as
``nobody`` when run as root) with two changes, so that its figures mean what they would in
production: commits are durable (``fsync``, ``synchronous_commit`` and ``full_page_writes``
on, which the tests turn off), and its data is on disk beside the SQLite stores the benchmarks
compare it with, not in RAM (``/dev/shm``) where the tests put it.

The server runs on the same cores as the benchmark, so every figure is read beside
:func:`server_cpu_seconds`: the CPU time of all of its processes (the backends that served
the benchmark, and the writer, checkpointer and autovacuum), including those that have exited.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import pg_cluster
from tests.pg_cluster import PostgresCluster

__all__ = [
    "PostgresCluster",
    "describe",
    "server_cpu_seconds",
    "settled_cpu_seconds",
    "start_server",
]

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def start_server() -> PostgresCluster:
    """Start a durable private server with its data on disk; ``stop()`` it when done."""
    pg_cluster.SERVER_SETTINGS = {**pg_cluster.SERVER_SETTINGS, **DURABLE}
    pg_cluster.TMPFS_ROOM = 1 << 62  # never room enough in RAM: the data goes on disk
    return PostgresCluster().start()


def describe(cluster: PostgresCluster) -> str:
    """One line: the server's version, where its data is and how it commits."""
    import psycopg

    with psycopg.connect(cluster.admin_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    shown = version[0] if version else "?"
    return (
        f"PostgreSQL {shown} on this machine (data in {cluster.base_dir.parent}, on disk; "
        "fsync, synchronous_commit and full_page_writes on; default memory settings)"
    )


def server_cpu_seconds(cluster: PostgresCluster) -> float:
    """User + system CPU seconds of the server so far: the postmaster, its live children, and
    (through the postmaster's counters of reaped children) every backend that has exited.

    A backend that has exited but is not reaped yet shows no CPU time at all, so it is waited
    for: read just after a client disconnects, its whole work would go missing.
    """
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    deadline = time.monotonic() + 5.0
    while True:
        children = [
            int(entry.name)
            for entry in os.scandir("/proc")
            if entry.name.isdigit() and _parent_of(int(entry.name)) == postmaster
        ]
        exited = any(_stat_fields(pid)[:1] == ["Z"] for pid in children)
        if not exited or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    total = _cpu_of(postmaster, children_too=True)
    for pid in children:
        total += _cpu_of(pid, children_too=True)
    return total


def settled_cpu_seconds(cluster: PostgresCluster, database: str) -> float:
    """:func:`server_cpu_seconds` once no client is connected to ``database`` any more and the
    figure has stopped moving: read the moment a client process ends, its backend may not
    have noticed yet, or be half-way out."""
    import psycopg

    deadline = time.monotonic() + 10.0
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.02)
    last = server_cpu_seconds(cluster)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = server_cpu_seconds(cluster)
        if now == last:
            break
        last = now
    return last


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command's name (which may hold spaces), or [] if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[1].split()


def _parent_of(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def _cpu_of(pid: int, *, children_too: bool) -> float:
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # Fields 14-17 of proc(5) (utime, stime, cutime, cstime), counted from the state (field 3).
    ticks = int(fields[11]) + int(fields[12])
    if children_too:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")
