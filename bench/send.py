"""A real send to a million subscribers through the null provider, journal on.

    .venv/bin/python bench/send.py [--subscribers 1000000] [--senders N]
                                   [--skip-sqlite] [--skip-postgresql]

(``--subscribers 100000`` for a quick run.)

The null provider builds every complete message (as SMTP would get it) and accepts it, so the
run does all of the pipeline's own work: the journal before and after each batch, reading the
list, signing each unsubscribe link, personalising and encoding each message. Each phase runs
as `newsletter send` in a child process, pinned to one core, so its time and peak memory are
its own. The baseline is the same messages built in a bare loop, with no store and no journal.
Targets: send <= 180 s and <= 150 MB peak RSS; rerun of the completed send <= 10 s.

The second table is the same send on a PostgreSQL store (a private server started for the run,
bench/pg_server.py), where several `newsletter send ISSUE --yes` may share an issue: first one
sender, then ``--senders`` of them (default: one per core, os.cpu_count()), each in its own child
process, started together on the same issue; none is pinned. Each run gets a fresh copy of the
same list, loaded by COPY. Wall time is from the start to the last sender's exit. Afterwards
the journal must hold, for every subscriber, one row, 'sent', with attempts = 1, and the
senders' own counts of messages sent must add up to the list. The server runs on the same cores
as the senders, so the CPU time of each sender and of the server is printed beside the times.
Target: N senders at least 0.75 * N times as fast as one.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pg_server

REPO = Path(__file__).resolve().parent.parent
ISSUE = REPO / "issues" / "2026-10.md"
SPEEDUP_SHARE = 0.75  # N senders at least this share of N times as fast as one
COLUMNS = (
    "email, email_key, name, topics, status, source, created_at, status_changed_at, "
    "status_reason, status_source"
)


def write_settings(folder: Path, database: str = "") -> None:
    """The issue, the settings (null provider; the store at ``database`` if given) and a secret."""
    shutil.copy(ISSUE, folder / ISSUE.name)
    paths = f'[paths]\ndatabase = "{database}"\n' if database else ""
    (folder / "newsletter.toml").write_text(
        f'{paths}[provider]\nname = "null"\nbatch_size = 1000\n', "utf-8"
    )
    secret = folder / ".newsletter-secret"
    secret.write_text("benchmark-secret-of-enough-length\n", "utf-8")
    secret.chmod(0o600)  # or every sender warns that others could read it


def make_folder(folder: Path, count: int) -> None:
    from newsletter.store import open_store

    write_settings(folder)
    conn = open_store(folder / "newsletter.db")
    conn.close()
    raw = sqlite3.connect(folder / "newsletter.db")
    now = "2026-01-01T00:00:00Z"
    with raw:
        raw.executemany(
            "INSERT INTO subscribers (id, email, email_key, name, topics, status, source, created_at, "
            "status_changed_at, status_reason, status_source) "
            "VALUES (?, ?, ?, ?, '[]', 'active', 'bench', ?, ?, '', 'bench')",
            (
                (n, f"reader{n}@example.net", f"reader{n}@example.net", f"Reader Nº {n}", now, now)
                for n in range(1, count + 1)
            ),
        )
    raw.close()


def newsletter_command(folder: Path, *args: str) -> list[str]:
    """`newsletter --config FOLDER/newsletter.toml ARGS…` as this interpreter runs it."""
    return [sys.executable, "-m", "newsletter", "--config", str(folder / "newsletter.toml"), *args]


def run_child(folder: Path, *args: str) -> tuple[float, float, str]:
    """Seconds and peak RSS (MB) of one `newsletter` command in a child process on one core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    command = newsletter_command(folder, *args)
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    done = subprocess.run(pin + command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: measure the send first.
    return elapsed, max(peak, before) / 1024, done.stdout.strip().splitlines()[-1]


def baseline(count: int) -> float:
    """Messages built in a bare loop: no store, no journal, no provider."""
    from newsletter.messages import Recipient, prepare_issue
    from newsletter.parse import parse_issue
    from newsletter.render import render_issue
    from newsletter.settings import load_settings

    settings = load_settings(None, root=REPO)
    prepared = prepare_issue(render_issue(parse_issue(ISSUE), settings), settings)
    start = time.perf_counter()
    for n in range(1, count + 1):
        recipient = Recipient(
            n,
            f"reader{n}@example.net",
            f"Reader Nº {n}",
            f"https://digest.example.org/unsubscribe/u.{n}.x",
        )
        prepared.message_for(recipient).as_bytes()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline-sample", type=int, default=100_000, help="messages timed for the baseline"
    )
    parser.add_argument(
        "--senders", type=int, default=os.cpu_count() or 1, help="senders sharing the issue"
    )
    parser.add_argument("--skip-sqlite", action="store_true", help="skip the first table")
    parser.add_argument("--skip-postgresql", action="store_true", help="skip the second table")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average {load()} at the start")
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    # Started before this process pins itself, which the server would inherit.
    server = None if args.skip_postgresql else pg_server.start_server()
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        if not args.skip_sqlite:
            sqlite_table(args)
        if server is not None:
            postgres_table(args, server, cores)
    finally:
        if server is not None:
            server.stop()
    print(f"\nload average {load()} at the end")


def load() -> str:
    return ", ".join(f"{n:.2f}" for n in os.getloadavg())


def sqlite_table(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="newsletter-bench-") as scratch:
        folder = Path(scratch)
        start = time.perf_counter()
        make_folder(folder, args.subscribers)
        setup = time.perf_counter() - start
        send_s, send_mb, send_line = run_child(folder, "send", "--yes", str(folder / ISSUE.name))
        rerun_s, _, rerun_line = run_child(folder, "send", "--yes", str(folder / ISSUE.name))
        sample = min(args.baseline_sample, args.subscribers)
        base_s = baseline(sample) * args.subscribers / sample

    n = args.subscribers
    print(f"{n:,} active subscribers (generated in {setup:.1f} s); null provider; one core")
    print(f"{'run':<44}{'seconds':>9}{'msgs/s':>10}{'peak MB':>9}{'vs baseline':>13}  target")
    rows = [
        ("baseline: messages built in a bare loop", base_s, None, ""),
        ("send, journal on", send_s, send_mb, "<= 180 s, <= 150 MB"),
        ("rerun of the completed send", rerun_s, None, "<= 10 s"),
    ]
    for name, seconds, mb, target in rows:
        rate = f"{n / seconds:,.0f}" if name != "rerun of the completed send" else "-"
        peak = f"{mb:.0f}" if mb is not None else "-"
        print(f"{name:<44}{seconds:>9.1f}{rate:>10}{peak:>9}{seconds / base_s:>12.2f}x  {target}")
    print(f"\nsend:  {send_line}\nrerun: {rerun_line}")
    ok = send_s <= 180 and send_mb <= 150 and rerun_s <= 10
    print("all targets met" if ok else "TARGET MISSED")


# --- PostgreSQL: one sender, then several on the same issue ---------------------------------


@dataclass
class SendersRun:
    senders: int
    seconds: float
    sender_cpu: list[float]  # user + system seconds of each sender process
    sender_mb: list[float]  # peak RSS of each
    server_cpu: float  # of every server process, during the run
    sent: list[int]  # what each sender says it sent
    summaries: list[str]
    journal: dict[str, int]


def populate_postgres(url: str, count: int) -> None:
    """The store's schema and ``count`` active subscribers (ids 1…count), by COPY."""
    import psycopg

    from newsletter.store import open_store

    open_store(url).close()
    now = "2026-01-01T00:00:00Z"
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(f"COPY subscribers ({COLUMNS}) FROM STDIN") as copy:
            for n in range(1, count + 1):
                address = f"reader{n}@example.net"
                row = (address, address, f"Reader Nº {n}", "[]", "active", "bench", now, now)
                copy.write_row((*row, "", "bench"))
        conn.execute("ANALYZE subscribers")


def copy_database(server: pg_server.PostgresCluster, template: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return server.url(name)


def run_senders(
    server: pg_server.PostgresCluster, folder: Path, senders: int, cores: set[int]
) -> SendersRun:
    """``senders`` processes of `newsletter send ISSUE --yes`, started together, on any core."""
    command = newsletter_command(folder, "send", "--yes", str(folder / ISSUE.name))
    # This process is pinned to one core; the senders may use them all.
    unpin = ["taskset", "-c", ",".join(map(str, sorted(cores)))] if cores else []
    outputs = [folder / f"sender{n}.out" for n in range(senders)]
    server_before = pg_server.server_cpu_seconds(server)
    start = time.perf_counter()
    processes = []
    for output in outputs:
        with output.open("w") as handle:
            processes.append(
                subprocess.Popen(unpin + command, stdout=handle, stderr=subprocess.STDOUT)
            )
    cpu, peak, failed = [], [], []
    for process, output in zip(processes, outputs, strict=True):
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu.append(usage.ru_utime + usage.ru_stime)
        peak.append(usage.ru_maxrss / 1024)
        if process.returncode != 0:
            failed.append(
                f"sender {output.stem} exited {process.returncode}:\n{output.read_text()}"
            )
    seconds = time.perf_counter() - start
    server_cpu = pg_server.server_cpu_seconds(server) - server_before
    if failed:
        raise SystemExit("\n".join(failed))
    summaries = [summary_line(output.read_text()) for output in outputs]
    sent = [sent_count(line) for line in summaries]
    return SendersRun(senders, seconds, cpu, peak, server_cpu, sent, summaries, {})


def summary_line(output: str) -> str:
    """The line `newsletter send` ends with: "ISSUE via PROVIDER: N sent, …"."""
    return next(line for line in output.splitlines() if " via null: " in line)


def sent_count(summary: str) -> int:
    found = re.search(r"([\d,]+) sent", summary)
    if found is None:
        raise SystemExit(f"no count of messages sent in: {summary}")
    return int(found[1].replace(",", ""))


def journal_check(url: str, month: str) -> dict[str, int]:
    """What the journal holds for the issue, against the list."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM subscribers WHERE status = 'active'),"
            " count(*), count(DISTINCT subscriber_id),"
            " count(*) FILTER (WHERE state = 'sent'),"
            " count(*) FILTER (WHERE attempts = 1),"
            " coalesce(max(attempts), 0) FROM journal WHERE issue = %s",
            (month,),
        ).fetchone()
    assert row is not None
    keys = ("subscribers", "rows", "distinct", "sent", "attempts_1", "max_attempts")
    return dict(zip(keys, (int(value) for value in row), strict=True))


def journal_ok(run: SendersRun) -> bool:
    j = run.journal
    n = j["subscribers"]
    return (
        j["rows"] == j["distinct"] == j["sent"] == j["attempts_1"] == n
        and j["max_attempts"] == 1
        and sum(run.sent) == n
    )


def postgres_table(
    args: argparse.Namespace, server: pg_server.PostgresCluster, cores: set[int]
) -> None:
    n = args.subscribers
    month = ISSUE.stem
    start = time.perf_counter()
    populate_postgres(server.new_database("send_list"), n)
    setup = time.perf_counter() - start
    runs: list[SendersRun] = []
    for senders in sorted({1, args.senders}):
        with tempfile.TemporaryDirectory(prefix="newsletter-bench-pg-") as scratch:
            folder = Path(scratch)
            url = copy_database(server, "send_list", f"send_{senders}")
            write_settings(folder, url)
            run = run_senders(server, folder, senders, cores)
            run.journal = journal_check(url, month)
            runs.append(run)
            print(f"  ({senders} sender(s) done; load average {load()})", flush=True)

    print(f"\n{pg_server.describe(server)}")
    print(
        f"{n:,} active subscribers (loaded by COPY in {setup:.1f} s); null provider; "
        f"{os.cpu_count()} cores shared by the senders and the server\n"
    )
    print(
        f"| {'PostgreSQL run':<22} | {'seconds':>8} | {'msgs/s':>8} | {'× 1 sender':>10} |"
        f" {'sender CPU s (each)':<21} | {'server CPU s':>12} | {'journal':<7} |"
    )
    print(f"|{'-' * 24}|{'-' * 9}:|{'-' * 9}:|{'-' * 11}:|{'-' * 23}|{'-' * 13}:|{'-' * 9}|")
    one = runs[0].seconds
    for run in runs:
        label = "1 sender" if run.senders == 1 else f"{run.senders} senders, same issue"
        each = " + ".join(f"{c:.1f}" for c in run.sender_cpu)
        print(
            f"| {label:<22} | {run.seconds:8.1f} | {n / run.seconds:8,.0f} |"
            f" {one / run.seconds:9.2f}x | {each:<21} | {run.server_cpu:12.1f} |"
            f" {'ok' if journal_ok(run) else 'WRONG':<7} |"
        )
    print()
    for run in runs:
        j = run.journal
        print(
            f"{run.senders} sender(s): journal rows {j['rows']:,} for {j['subscribers']:,} "
            f"subscribers ({j['distinct']:,} distinct), sent {j['sent']:,}, attempts = 1 on "
            f"{j['attempts_1']:,} (max {j['max_attempts']}); the senders say they sent "
            f"{' + '.join(f'{s:,}' for s in run.sent)}; peak RSS "
            f"{' + '.join(f'{mb:.0f}' for mb in run.sender_mb)} MB"
        )
        for line in run.summaries:
            print(f"  {line}")
    if len(runs) > 1:
        many = runs[-1]
        speedup, wanted = one / many.seconds, SPEEDUP_SHARE * many.senders
        verdict = "PASS" if speedup >= wanted else "FAIL"
        print(
            f"\n{many.senders} senders {speedup:.2f}x as fast as one "
            f"(target >= {wanted:.2f}x): {verdict}"
        )
    if not all(journal_ok(run) for run in runs):
        print("JOURNAL CHECK FAILED")


if __name__ == "__main__":
    main()
