"""Group commit: the events of every verified request that waits are written in one transaction.

SQLite has one writer at a time. With a transaction (and a flush to disk) per request,
concurrent webhook requests queue on the store's lock, and the waiting costs more than the
work. Here the request threads queue their events instead. The first to find no write under
way writes: it takes every request waiting, records them together
(:func:`newsletter.events.record_requests`: a replayed delivery is refused before it writes
anything), commits, wakes each request of the group with its outcome, and hands the writing
on to the first request that came in meanwhile. A request is answered only after the commit
that holds its events: an acknowledged event is on disk.

Why the request threads write, each waiting on a lock of its own: a writer thread of its own
costs two more hand-overs of the interpreter lock per group, and waking every waiting thread
to let each check whether its group was written costs one per waiting thread; here each
request thread is woken once. (Measured through HTTP, the difference from a writer thread is
within the noise of ``bench/webhooks.py``; the server keeps one thread fewer.)
"""

from __future__ import annotations

import contextlib
import threading
import time
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
    delivery: events.Delivery | None
    # Released once: when the group holding the job is written, or when the job's thread is
    # to write the next group. A bare lock is the cheapest signal.
    wake: threading.Lock = field(default_factory=_held_lock)
    done: bool = False
    result: events.Recorded | None = None
    error: BaseException | None = None


class EventWriter:
    """Records events for any number of request threads, one group transaction at a time."""

    def __init__(
        self, database: StoreLocation, *, soft_bounce_threshold: int, remember_seconds: float
    ):
        self.database = database
        self.soft_bounce_threshold = soft_bounce_threshold
        self.remember_seconds = remember_seconds
        self._lock = threading.Lock()  # guards the fields below
        self._waiting: list[_Job] = []
        self._writing = False  # a thread is writing, or has been handed the next group
        self._conn: StoreConnection | None = None
        self._used_at = 0.0
        self._closer: threading.Thread | None = None
        self._forgot_at = 0.0

    def record(
        self, found: Sequence[events.DeliveryEvent], delivery: events.Delivery | None
    ) -> events.Recorded:
        """Record ``found`` once committed; AlreadySeen for a replay, StoreError if the store
        fails (nothing of this request is then kept)."""
        job = _Job(found, delivery)
        with self._lock:
            self._waiting.append(job)
            writes = not self._writing
            self._writing = True
        if not writes:
            job.wake.acquire()
        # Written by another thread, or this one writes now (again, if more than MAX_GROUP
        # were waiting before it).
        while not job.done:
            with self._lock:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            try:
                self._write_group(group)
            finally:  # also when interrupted: nobody may be left waiting
                self._wake(group, job)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _wake(self, group: list[_Job], writer: _Job) -> None:
        """Wake the requests of a written group, and hand the writing on (or stop)."""
        with self._lock:
            successor = self._waiting[0] if writer.done and self._waiting else None
            if writer.done and successor is None:
                self._writing = False
            self._used_at = time.monotonic()
        for job in group:
            if job is not writer:
                job.wake.release()
        if successor is not None:
            successor.wake.release()

    def close(self) -> None:
        """Close the store connection, unless a group is being written (a later request
        opens it again)."""
        with self._lock:
            if not self._writing:
                self._close_connection()

    def _write_group(self, group: list[_Job]) -> None:
        try:
            if self._conn is None:
                self._conn = store.open_store(
                    self.database, create=False, handed_between_threads=True
                )
                self._start_closer()
            self._write(self._conn, group)
        except BaseException as exc:  # the store failed: nothing of this group was kept
            for job in group:
                if not isinstance(job.error, events.AlreadySeen):
                    job.result, job.error = None, exc
            self._close_connection()
            if not isinstance(exc, Exception):
                raise
        finally:
            for job in group:
                job.done = True

    def _write(self, conn: StoreConnection, jobs: list[_Job]) -> None:
        with store.transaction(conn):
            outcomes = events.record_requests(
                conn,
                [(job.found, job.delivery) for job in jobs],
                via=events.VIA_WEBHOOK,
                soft_bounce_threshold=self.soft_bounce_threshold,
            )
            for job, outcome in zip(jobs, outcomes, strict=True):
                if isinstance(outcome, events.AlreadySeen):
                    job.error = outcome  # refused before it wrote anything
                else:
                    job.result = outcome
            now = max((job.delivery[2] for job in jobs if job.delivery), default=0.0)
            if now - self._forgot_at >= _FORGET_EVERY_SECONDS:
                self._forgot_at = now
                conn.execute(
                    "DELETE FROM webhook_deliveries WHERE seen_at < ?",
                    (now - self.remember_seconds,),
                )

    def _close_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # a broken connection is dropped all the same
                conn.close()

    def _start_closer(self) -> None:
        if self._closer is None:
            self._closer = threading.Thread(
                target=self._close_when_idle, name="webhook-store-closer", daemon=True
            )
            self._closer.start()

    def _close_when_idle(self) -> None:
        # The connection is closed when no event came for a while: an idle app holds no file
        # open, and a store moved away is reopened, not written behind. The thread ends with
        # it; the next connection starts another.
        while True:
            time.sleep(IDLE_SECONDS / 2)
            with self._lock:
                idle = time.monotonic() - self._used_at >= IDLE_SECONDS
                if not self._writing and (idle or self._conn is None):
                    self._close_connection()
                    self._closer = None
                    return


__all__ = ["EventWriter", "StoreError"]
