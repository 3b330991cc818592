"""Group commit: one thread writes the events of every verified request, many per transaction.

SQLite has one writer at a time. With a transaction (and a flush to disk) per request,
concurrent webhook requests queue on the store's lock, and the waiting costs more than the
work. Here one thread takes every request waiting, records each (a replayed delivery is
refused by its first statement, before it writes anything) and commits them together. A request is
answered only after the commit that holds its events: an acknowledged event is on disk.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from newsletter import events, store
from newsletter.database_url import StoreLocation
from newsletter.errors import StoreError
from newsletter.store import StoreConnection

MAX_GROUP = 256
IDLE_SECONDS = 2.0
_FORGET_EVERY_SECONDS = 600.0


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Job:
    found: Sequence[events.DeliveryEvent]
    delivery: tuple[str, str, float] | None
    # Held until the writer has dealt with the job: a bare lock is the cheapest signal.
    done: threading.Lock = field(default_factory=_held_lock)
    result: events.Recorded | None = None
    error: BaseException | None = None


class EventWriter:
    """Records events for any number of request threads through one connection and thread."""

    def __init__(
        self, database: StoreLocation, *, soft_bounce_threshold: int, remember_seconds: float
    ):
        self.database = database
        self.soft_bounce_threshold = soft_bounce_threshold
        self.remember_seconds = remember_seconds
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()
        self._forgot_at = 0.0

    def record(
        self, found: Sequence[events.DeliveryEvent], delivery: tuple[str, str, float] | None
    ) -> events.Recorded:
        """Record ``found`` once committed; AlreadySeen for a replay, StoreError if the store
        fails (nothing of this request is then kept)."""
        with self._start_lock:
            if not self._started:
                threading.Thread(target=self._run, name="webhook-writer", daemon=True).start()
                self._started = True
        job = _Job(found, delivery)
        self._queue.put(job)
        job.done.acquire()
        if job.error is not None:
            raise job.error
        result: events.Recorded | None = job.result
        assert result is not None
        return result

    def _run(self) -> None:
        conn: StoreConnection | None = None
        while True:
            try:
                # The connection is closed when no event came for a while: an idle app holds
                # no file open, and a store moved away is reopened, not written behind.
                jobs = [self._queue.get(timeout=IDLE_SECONDS if conn is not None else None)]
            except queue.Empty:
                if conn is not None:
                    conn.close()
                    conn = None
                continue
            while len(jobs) < MAX_GROUP:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if conn is None:
                    conn = store.open_store(self.database, create=False)
                self._write(conn, jobs)
            except Exception as exc:  # the store failed: nothing of this group was kept
                for job in jobs:
                    if not isinstance(job.error, events.AlreadySeen):
                        job.result, job.error = None, exc
                if conn is not None:
                    conn.close()
                    conn = None
            finally:
                for job in jobs:
                    job.done.release()

    def _write(self, conn: StoreConnection, jobs: list[_Job]) -> None:
        with store.transaction(conn):
            for job in jobs:
                try:
                    job.result = events.record_in_transaction(
                        conn,
                        job.found,
                        via=events.VIA_WEBHOOK,
                        soft_bounce_threshold=self.soft_bounce_threshold,
                        delivery=job.delivery,
                    )
                except events.AlreadySeen as exc:
                    # Refused before it wrote anything: the rest of the group goes on.
                    job.error = exc
            now = max((job.delivery[2] for job in jobs if job.delivery), default=0.0)
            if now - self._forgot_at >= _FORGET_EVERY_SECONDS:
                self._forgot_at = now
                conn.execute(
                    "DELETE FROM webhook_deliveries WHERE seen_at < ?",
                    (now - self.remember_seconds,),
                )


__all__ = ["EventWriter", "StoreError"]
