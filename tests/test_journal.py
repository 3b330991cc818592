"""The send journal's state machine, driven directly (the send tests drive it through sends)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from newsletter import store
from newsletter.database_url import StoreLocation
from newsletter.errors import StoreError
from newsletter.journal import JournalState, Outcome, Resend, SendJournal
from newsletter.store import Status
from newsletter.taxonomy import Taxonomy

ISSUE = "2026-10"
EMPATHY = "Empathy"
TRAINING = "Common Factors"
TOPICS = (EMPATHY,)


@pytest.fixture
def conn(store_location: StoreLocation) -> Iterator[store.StoreConnection]:
    connection = store.open_store(store_location)
    taxonomy = Taxonomy.default()
    # 1-6 active (4 chose Common Factors only, 5 chose Empathy), 7 unsubscribed, 8 pending.
    for n in range(1, 9):
        status = {7: Status.UNSUBSCRIBED, 8: Status.PENDING}.get(n, Status.ACTIVE)
        topics = {4: [TRAINING], 5: [EMPATHY]}.get(n, [])
        store.add_subscriber(
            connection, f"r{n}@example.org", status=status, topics=topics, taxonomy=taxonomy
        )
    yield connection
    connection.close()


def states(journal: SendJournal) -> dict[int, str]:
    rows = journal.conn.execute(
        "SELECT subscriber_id, state FROM journal WHERE issue = ? ORDER BY subscriber_id",
        (journal.issue,),
    )
    return {int(i): str(s) for i, s in rows}


def claim_all(journal: SendJournal, size: int = 100) -> list[int]:
    """Claim every row a run would hand over, as the send loop does; their ids in order."""
    ids: list[int] = []
    while batch := journal.claim_batch(size, "smtp", after_id=ids[-1] if ids else 0):
        ids += [row[0] for row in batch]
    return ids


def test_start_run_queues_the_audience_of_the_issues_topics_once(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    assert journal.start_run(TOPICS, Resend()) == 0
    # Not 4 (chose another topic only), not 7 (unsubscribed), not 8 (pending).
    assert states(journal) == {n: "queued" for n in (1, 2, 3, 5, 6)}
    journal.start_run(TOPICS, Resend())
    assert len(states(journal)) == 5
    assert journal.count_not_yet_queued(TOPICS) == 0
    assert journal.count_not_yet_queued((TRAINING,)) == 1  # subscriber 4


def test_a_row_moves_queued_sending_then_one_outcome_and_never_back(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    journal.start_run(TOPICS, Resend())
    assert journal.mark_sending([1, 2, 3], "smtp") == {1, 2, 3}
    # A row already "sending" cannot be marked again: a second sender would skip it.
    assert journal.mark_sending([1, 5], "smtp") == {5}
    journal.record(
        [
            Outcome(1, JournalState.SENT, "<id-1@x>"),
            Outcome(2, JournalState.FAILED, reason="550 no such user"),
            Outcome(3, JournalState.DEFERRED, reason="421 try later"),
        ]
    )
    # Only rows in "sending" take an outcome: a late answer cannot undo a recorded one.
    journal.record([Outcome(1, JournalState.FAILED, reason="late")])
    assert states(journal) == {1: "sent", 2: "failed", 3: "deferred", 5: "sending", 6: "queued"}
    counts = journal.counts()
    assert counts[JournalState.SENT] == 1 and counts[JournalState.SENDING] == 1
    (sent,) = [e for e in journal.entries(JournalState.SENT)]
    assert sent.provider_message_id == "<id-1@x>" and sent.attempts == 1
    assert claim_all(journal) == [3, 6]
    assert journal.claim_batch(100, "smtp") == []  # claimed rows are never handed out twice


def test_uncertain_and_failed_rows_are_sent_again_only_when_asked(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    journal.start_run(TOPICS, Resend())
    journal.mark_sending([1, 2], "smtp")
    journal.record([Outcome(2, JournalState.FAILED, reason="550")])
    journal.start_run(TOPICS, Resend())
    assert states(journal)[1] == "sending" and states(journal)[2] == "failed"
    journal.start_run(TOPICS, Resend(uncertain=True))
    assert states(journal)[1] == "queued" and states(journal)[2] == "failed"
    journal.start_run(TOPICS, Resend(failed=True))
    assert states(journal)[2] == "queued"


def test_rows_a_rehearsal_sent_go_back_to_the_queue_for_a_real_provider(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    journal.start_run(TOPICS, Resend())
    journal.mark_sending([1, 2], "outbox")
    journal.record([Outcome(1, JournalState.SENT), Outcome(2, JournalState.SENT)])
    assert journal.providers_used() == ["outbox"]
    assert journal.count_sent() == 2
    assert journal.count_sent(excluding_providers=["outbox"]) == 0
    journal.start_run(TOPICS, Resend(rehearsals=("outbox",)))
    assert states(journal)[1] == "queued" and states(journal)[2] == "queued"


@pytest.mark.parametrize(
    "resend",
    [Resend(), Resend(failed=True), Resend(uncertain=True), Resend(rehearsals=("outbox",))],
    ids=["plain", "retry-failed", "resend-uncertain", "after-a-rehearsal"],
)
def test_the_count_and_the_dry_run_select_exactly_what_the_run_hands_over(
    conn: store.StoreConnection, resend: Resend
) -> None:
    journal = SendJournal(conn, ISSUE)
    journal.start_run(TOPICS, Resend())
    journal.mark_sending([1, 2, 3], "outbox")
    journal.record([Outcome(1, JournalState.SENT), Outcome(2, JournalState.FAILED, reason="x")])
    journal.mark_sending([5], "smtp")
    journal.record([Outcome(5, JournalState.SENT)])
    # 3 is left uncertain; 6 and a newcomer (9) have not been handed over yet.
    store.add_subscriber(conn, "r9@example.org")
    before = states(journal)
    expected_before = journal.count_to_send(TOPICS, resend)
    dry_run = [row[0] for batch in journal.batches_to_send(TOPICS, resend, 2) for row in batch]
    assert states(journal) == before  # neither the count nor the dry run wrote anything
    journal.start_run(TOPICS, resend)
    real = claim_all(journal, 2)
    assert dry_run == real
    assert expected_before == len(real)


def test_who_left_before_their_turn_is_dropped_and_never_marked(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    journal.start_run(TOPICS, Resend())
    store.set_status(conn, 2, Status.UNSUBSCRIBED)
    assert [row[0] for row in journal.claim_batch(2, "smtp")] == [1, 3]  # 2 passed over
    assert journal.mark_sending([2], "smtp") == set()
    store.set_status(conn, 5, Status.BOUNCED)
    assert journal.drop_inactive_queued() == 2  # 2 and 5
    assert set(states(journal)) == {1, 3, 6}


def test_a_claim_marks_what_it_returns_and_moves_on_from_after_id(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    journal.start_run(TOPICS, Resend())
    first = journal.claim_batch(2, "mailgun")
    assert first == [(1, "r1@example.org", ""), (2, "r2@example.org", "")]
    assert states(journal) == {1: "sending", 2: "sending", 3: "queued", 5: "queued", 6: "queued"}
    assert [row[0] for row in journal.claim_batch(2, "mailgun", after_id=3)] == [5, 6]
    assert journal.any_to_send(after_id=0) and not journal.any_to_send(after_id=3)
    (entry, _) = journal.entries(JournalState.SENDING, limit=2)
    assert entry.attempts == 1 and journal.providers_used() == ["mailgun"]


def test_the_issue_records_the_topics_its_latest_run_used(conn: store.StoreConnection) -> None:
    journal = SendJournal(conn, ISSUE)
    assert journal.recorded_topics() is None
    journal.record_issue(TOPICS, "October")
    journal.record_issue((EMPATHY, TRAINING), "October, revised")
    assert journal.recorded_topics() == (EMPATHY, TRAINING)
    assert SendJournal(conn, "2026-11").recorded_topics() is None


def test_a_removed_subscribers_row_keeps_a_placeholder_address(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    journal.start_run(TOPICS, Resend())
    journal.mark_sending([1], "smtp")
    store.remove_subscriber(conn, 1)
    (entry,) = journal.entries(JournalState.SENDING)
    assert entry.subscriber_id == 1 and entry.email == "(removed subscriber)"


def test_journal_statements_fail_as_store_errors_naming_the_file(
    conn: store.StoreConnection,
) -> None:
    journal = SendJournal(conn, ISSUE)
    conn.execute("DROP TABLE journal")
    with pytest.raises(StoreError, match=re.escape(str(conn.path))):
        journal.counts()
