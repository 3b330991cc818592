"""The webhook writer's group commit: requests that wait together share one transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from typing import Any

import pytest

from newsletter import events, store
from newsletter.database_url import StoreLocation
from newsletter.events import AlreadySeen, DeliveryEvent, EventKind
from newsletter.store import Status
from newsletter.webhooks import writer as writer_module
from newsletter.webhooks.writer import EventWriter

pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def location(store_location: StoreLocation) -> Iterator[StoreLocation]:
    with closing(store.open_store(store_location)) as conn:
        for n in range(12):
            store.add_subscriber(conn, f"reader{n}@example.net")
    yield store_location


def _event(n: int, kind: EventKind = EventKind.HARD_BOUNCE) -> DeliveryEvent:
    return DeliveryEvent("mailgun", f"event-{n}", kind, f"reader{n}@example.net", store.now_utc())


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _status(location: StoreLocation, n: int) -> Status:
    with closing(store.open_store(location, create=False)) as conn:
        return store.require_subscriber(conn, f"reader{n}@example.net").status


def test_requests_that_wait_together_share_a_commit_and_each_gets_its_own_outcome(
    location: StoreLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[int] = []
    record_requests = events.record_requests

    def counted(conn: Any, requests: Any, **kwargs: Any) -> Any:
        groups.append(len(requests))
        return record_requests(conn, requests, **kwargs)

    monkeypatch.setattr(events, "record_requests", counted)
    writer = EventWriter(location, soft_bounce_threshold=3, remember_seconds=600)
    outcomes: dict[int, object] = {}

    def post(n: int, delivery: str) -> None:
        try:
            outcomes[n] = writer.record([_event(n)], ("mailgun", delivery, time.time()))
        except AlreadySeen as exc:
            outcomes[n] = exc

    # Another writer holds the store: the first request waits inside its transaction, and the
    # next ones queue behind it.
    with (
        closing(store.open_store(location, create=False)) as blocker,
        store.transaction(blocker),
    ):
        first = threading.Thread(target=post, args=(0, "delivery-0"))
        first.start()
        _wait_until(lambda: writer._writing and not writer._waiting)  # first: writing
        queued = [threading.Thread(target=post, args=(n, f"delivery-{n}")) for n in range(1, 8)]
        queued.append(threading.Thread(target=post, args=(8, "delivery-3")))  # a replay
        for thread in queued:
            thread.start()
        _wait_until(lambda: len(writer._waiting) == 8)
    for thread in [first, *queued]:
        thread.join(10)
    assert groups == [1, 8]
    for n in range(8):
        outcome = outcomes[n]
        assert isinstance(outcome, events.Recorded) and outcome.recorded == 1
        assert outcome.changes == [(f"reader{n}@example.net", Status.ACTIVE, Status.BOUNCED)]
        assert _status(location, n) is Status.BOUNCED
    assert isinstance(outcomes[8], AlreadySeen)  # the replay changed nothing
    assert _status(location, 8) is Status.ACTIVE
    writer.close()


def test_a_failing_group_fails_each_of_its_requests_and_the_next_group_writes(
    location: StoreLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_requests = events.record_requests
    calls = []

    def failing_once(conn: Any, requests: Any, **kwargs: Any) -> Any:
        calls.append(len(requests))
        if len(calls) == 1:
            raise store.StoreError("the disk is full")
        return record_requests(conn, requests, **kwargs)

    monkeypatch.setattr(events, "record_requests", failing_once)
    writer = EventWriter(location, soft_bounce_threshold=3, remember_seconds=600)
    with pytest.raises(store.StoreError, match="the disk is full"):
        writer.record([_event(1)], ("mailgun", "delivery-1", time.time()))
    assert _status(location, 1) is Status.ACTIVE
    # Nothing of it was kept, its delivery id included: the provider's retry is recorded.
    recorded = writer.record([_event(1)], ("mailgun", "delivery-1", time.time()))
    assert recorded.recorded == 1 and _status(location, 1) is Status.BOUNCED
    writer.close()


def test_the_connection_is_closed_when_no_event_came_for_a_while(
    location: StoreLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "IDLE_SECONDS", 0.1)
    writer = EventWriter(location, soft_bounce_threshold=3, remember_seconds=600)
    writer.record([_event(1)], ("mailgun", "delivery-1", time.time()))
    assert writer._conn is not None
    _wait_until(lambda: writer._conn is None)
    # The next request opens it again.
    assert writer.record([_event(2)], ("mailgun", "delivery-2", time.time())).recorded == 1
    assert _status(location, 2) is Status.BOUNCED


def test_the_closing_thread_ends_with_the_connection(
    location: StoreLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "IDLE_SECONDS", 0.1)
    writer = EventWriter(location, soft_bounce_threshold=3, remember_seconds=600)
    writer.record([_event(1)], ("mailgun", "delivery-1", time.time()))
    closer = writer._closer
    assert closer is not None and closer.is_alive()
    closer.join(10)
    assert not closer.is_alive() and writer._conn is None


def test_a_group_larger_than_one_statement_refuses_each_replay_alone(
    location: StoreLocation,
) -> None:
    # More requests than one statement inserts (events._ROWS_PER_INSERT): a replayed delivery
    # and a repeated event in the second statement's rows name rows of the first.
    count = events._ROWS_PER_INSERT + 100
    now = time.time()
    requests: list[tuple[list[DeliveryEvent], events.Delivery]] = []
    for n in range(count):
        event = DeliveryEvent(
            "mailgun", f"event-{n}", EventKind.DELIVERED, "reader1@example.net", store.now_utc()
        )
        requests.append(([event], ("mailgun", f"delivery-{n}", now)))
    requests[-1] = (requests[-1][0], ("mailgun", "delivery-10", now))  # a replay of the 11th
    # A new delivery whose one event is the 21st request's event again.
    requests[-2] = ([replace(requests[-2][0][0], event_id="event-20")], requests[-2][1])
    with closing(store.open_store(location, create=False)) as conn, store.transaction(conn):
        outcomes = events.record_requests(conn, requests, via=events.VIA_WEBHOOK)
    assert isinstance(outcomes[-1], AlreadySeen)
    again = outcomes[-2]
    assert isinstance(again, events.Recorded) and (again.recorded, again.duplicates) == (0, 1)
    for outcome in outcomes[:-2]:
        assert isinstance(outcome, events.Recorded)
        assert (outcome.recorded, outcome.duplicates) == (1, 0)
    with closing(store.open_store(location, create=False)) as conn:
        assert conn.execute("SELECT count(*) FROM delivery_events").fetchone()[0] == count - 2
