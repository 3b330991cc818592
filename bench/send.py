"""A real send to a million subscribers through the null provider, journal on.

    .venv/bin/python bench/send.py [--subscribers 1000000]

The null provider builds every complete message (as SMTP would get it) and accepts it, so the
run does all of the pipeline's own work: the journal before and after each batch, reading the
list, signing each unsubscribe link, personalising and encoding each message. Each phase runs
as `newsletter send` in a child process, pinned to one core, so its time and peak memory are
its own. The baseline is the same messages built in a bare loop, with no store and no journal.
Targets: send <= 180 s and <= 150 MB peak RSS; rerun of the completed send <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ISSUE = REPO / "issues" / "2026-10.md"


def make_folder(folder: Path, count: int) -> None:
    from newsletter.store import open_store

    shutil.copy(ISSUE, folder / ISSUE.name)
    (folder / "newsletter.toml").write_text(
        '[provider]\nname = "null"\nbatch_size = 1000\n', "utf-8"
    )
    (folder / ".newsletter-secret").write_text("benchmark-secret-of-enough-length\n", "utf-8")
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


def run_child(folder: Path, *args: str) -> tuple[float, float, str]:
    """Seconds and peak RSS (MB) of one `newsletter` command in a child process on one core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "newsletter",
        "--config",
        str(folder / "newsletter.toml"),
        *args,
    ]
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
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

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


if __name__ == "__main__":
    main()
