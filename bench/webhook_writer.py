"""CPU time per webhook request of the group commit, by how many requests share a transaction.

    python bench/webhook_writer.py [--requests 3000] [--subscribers 10000] [--repeat 3]

The webhook writer (``newsletter.webhooks.writer``) records every request that waits together
in one transaction. Here its transaction is timed alone, in one thread, without HTTP or
signature checks: ``--requests`` one-event requests (a delivery each, for known subscribers,
mixed kinds as ``bench/webhooks.py`` posts them) written in groups of 1 (the baseline: a
transaction and a flush to disk per request), 2, 4, 8 and 32, into a SQLite store on the
disk of ``--folder`` (default: the system's temporary folder). Shown: CPU time and wall time
per request, best of ``--repeat`` runs each, and the ratio to the baseline's CPU time.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from newsletter import store
from newsletter.database_url import StoreLocation
from newsletter.events import DeliveryEvent, EventKind
from newsletter.webhooks.writer import EventWriter, _Job

GROUPS = (1, 2, 4, 8, 32)
KINDS = [EventKind.DELIVERED] * 17 + [
    EventKind.SOFT_BOUNCE,
    EventKind.HARD_BOUNCE,
    EventKind.COMPLAINT,
]


def add_readers(database: StoreLocation, count: int) -> None:
    """Active subscribers reader0@example.net ... in a new store (the webhook benchmarks')."""
    stamp = store.now_utc()
    with closing(store.open_store(database)) as conn, store.transaction(conn):
        conn.executemany(
            "INSERT INTO subscribers (email, email_key, status, source, created_at,"
            " status_changed_at, status_source) VALUES (?, ?, 'active', 'bench', ?, ?, 'bench')",
            (
                (f"reader{n}@example.net", f"reader{n}@example.net", stamp, stamp)
                for n in range(count)
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None, help="where the store is made")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        database = Path(tmp) / "newsletter.db"
        stamp = store.now_utc()
        add_readers(database, args.subscribers)
        writer = EventWriter(database, soft_bounce_threshold=3, remember_seconds=600.0)
        conn = store.open_store(database, create=False)
        numbers = itertools.count()

        def job() -> _Job:
            n = next(numbers)
            event = DeliveryEvent(
                "mailgun",
                f"event-{n}",
                KINDS[n % len(KINDS)],
                f"reader{(n * 7919) % args.subscribers}@example.net",
                stamp,
                message_ids=(f"message-{n}",),
            )
            return _Job([event], ("mailgun", f"delivery-{n}", time.time()))

        results: dict[int, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for size in GROUPS:  # interleaved, so that a busy moment hits every size alike
                groups = [[job() for _ in range(size)] for _ in range(args.requests // size)]
                cpu, wall = time.thread_time(), time.perf_counter()
                for group in groups:
                    writer._write(conn, group)
                cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                count = len(groups) * size
                best = results.get(size, (float("inf"), float("inf")))
                results[size] = (min(best[0], cpu / count), min(best[1], wall / count))
        conn.close()

    print(f"{args.requests:,} one-event requests per size, best of {args.repeat} runs")
    print(
        f"{'requests per transaction':<26}{'CPU ms/request':>15}{'wall ms/request':>16}{'CPU ratio':>10}"
    )
    baseline = results[1][0]
    for size in GROUPS:
        cpu, wall = results[size]
        print(f"{size:<26}{cpu * 1000:>15.3f}{wall * 1000:>16.3f}{cpu / baseline:>10.2f}")


if __name__ == "__main__":
    main()
