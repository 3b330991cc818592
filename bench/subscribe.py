"""What a stranger can time on the subscribe form: the answer for each kind of address.

    .venv/bin/python bench/subscribe.py [--requests 400] [--subscribers 10000]

The app runs on loopback (the standard library's server, one thread per request) with the
outbox provider and its confirmation thread on, over a store of active subscribers. Requests
for new, pending, active and unsubscribed addresses are interleaved at random; each kind's
median and 90th percentile are compared with the new addresses' (the form's usual case), and
with a GET of the form page as the baseline of the same run. Equal columns mean the timing
tells nothing about whether an address is on the list.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from newsletter import store
from newsletter.settings import load_settings
from newsletter.web import WebApp, make_server

SECRET = "benchmark-secret-of-enough-length"


def make_store(database: Path, count: int) -> None:
    store.open_store(database).close()
    raw = sqlite3.connect(database)
    now = "2026-01-01T00:00:00Z"
    with raw:
        raw.executemany(
            "INSERT INTO subscribers (email, email_key, name, topics, status, source, created_at,"
            " status_changed_at, status_reason, status_source)"
            " VALUES (?, ?, '', '[]', ?, 'bench', ?, ?, '', 'bench')",
            (
                (f"m{n}@example.net", f"m{n}@example.net", status, now, now)
                for n in range(count)
                for status in ("active" if n % 10 else "unsubscribed",)
            ),
        )
    raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests of each kind")
    parser.add_argument("--subscribers", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["NEWSLETTER_SECRET"] = SECRET
    with tempfile.TemporaryDirectory(prefix="newsletter-bench-") as scratch:
        root = Path(scratch)
        (root / "newsletter.toml").write_text(
            '[web]\nurl = "https://news.example.org"\nsubscribe_per_client = "100000/hour"\n'
            'subscribe_overall = "100000/hour"\nmax_pending = 1000000\n'
            'trusted_proxies = ["127.0.0.1"]\n',
            "utf-8",
        )
        settings = load_settings(root / "newsletter.toml")
        assert isinstance(settings.paths.database, Path)  # this benchmark's store is SQLite
        make_store(settings.paths.database, args.subscribers)
        app = WebApp(settings)
        server = make_server(app, "127.0.0.1", 0, log=False)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        session = requests.Session()
        rng = random.Random(7)
        # Pending addresses: asked once before the timed run.
        for n in range(args.requests):
            session.post(f"{base}/subscribe", data={"email": f"p{n}@example.org"})
        plan = [
            (kind, n)
            for kind in ("new", "pending", "active", "unsubscribed", "form")
            for n in range(args.requests)
        ]
        rng.shuffle(plan)
        times: dict[str, list[float]] = {kind: [] for kind, _ in plan}
        for kind, n in plan:
            address = {
                "new": f"n{n}@example.org",
                "pending": f"p{n}@example.org",
                "active": f"m{10 * n + 1}@example.net",
                "unsubscribed": f"m{10 * n}@example.net",
            }.get(kind, "")
            headers = {"X-Forwarded-For": f"198.51.{n // 250}.{n % 250}"}
            start = time.perf_counter()
            if kind == "form":
                answer = session.get(f"{base}/subscribe", headers=headers)
            else:
                answer = session.post(f"{base}/subscribe", data={"email": address}, headers=headers)
            times[kind].append(time.perf_counter() - start)
            if answer.status_code != 200:
                raise SystemExit(f"{kind} {address}: HTTP {answer.status_code}")
        app.close()
        server.shutdown()
        server.server_close()

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] * 1000

    reference = statistics.median(times["new"]) * 1000
    print(
        f"{args.requests} requests of each kind over {args.subscribers:,} subscribers; outbox "
        "provider, confirmation thread on"
    )
    print(f"{'request':<34}{'median ms':>10}{'p90 ms':>9}{'vs new':>9}")
    for kind, label in (
        ("form", "baseline: GET of the form page"),
        ("new", "POST, new address"),
        ("pending", "POST, pending (asked before)"),
        ("active", "POST, active subscriber"),
        ("unsubscribed", "POST, unsubscribed subscriber"),
    ):
        median = statistics.median(times[kind]) * 1000
        print(f"{label:<34}{median:>10.2f}{pct(times[kind], 90):>9.2f}{median / reference:>8.2f}x")


if __name__ == "__main__":
    main()
