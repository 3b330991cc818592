"""``newsletter send``: one issue to every active subscriber, exactly once, whatever happens.

The loop, batch by batch, in subscriber id order::

    journal rows queued/deferred ──read──▶ mark "sending" (commit) ──▶ provider.send_batch
          ▲                                                                   │
          └──── deferred (temporary; retried with backoff, then next run) ◀───┤
                 sent (accepted) / failed (permanent) / sending (fate unknown)◀┘  (commit)

The "sending" mark is committed before the provider is called and the outcome right after it
answers, so a crash at any instant leaves, for each subscriber, either a final state, a row
still queued (never handed over), or a row in "sending" (handed over, fate unknown). Running
the same command again skips the first, sends the second, and reports the third by name
without resending it, unless asked to (``resend_uncertain``) or unless the provider honours
idempotency keys, which makes a resend harmless.

Memory does not grow with the list: recipients are read from the store one batch at a time.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from newsletter import audit
from newsletter.check import check_issue
from newsletter.english import counted
from newsletter.errors import IssueFileError, MessageError, ProviderError, SendError, StoreError
from newsletter.journal import JournalEntry, JournalState, Outcome, Resend, SendJournal
from newsletter.messages import OutgoingMessage, PreparedIssue, Recipient, prepare_issue
from newsletter.providers import Provider, create_provider, rehearsal_providers
from newsletter.providers.base import DeliveryResult
from newsletter.providers.outbox import DryRunWriter
from newsletter.rate import TokenBucket, parse_rate
from newsletter.render import RenderedIssue
from newsletter.send_lock import SendLock, send_lock
from newsletter.settings import Settings
from newsletter.store import StoreConnection, get_subscriber, normalize_email, open_store
from newsletter.tokens import Signer, unsubscribe_url, web_url

# After this many provider calls in a row that delivered nothing, the provider is taken to be
# down (or refusing everything): the send stops instead of grinding through the list.
MAX_CONSECUTIVE_FAILED_CALLS = 6
# Permanent refusals of every message for this many messages in a row (a relay that denies
# relaying, a suspended account) also stop the send.
MAX_CONSECUTIVE_REFUSED_MESSAGES = 50
DEFAULT_RETRY_BUDGET = 300.0  # seconds of waiting for temporary failures, per run
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
# The report names at most this many uncertain (and failed) recipients; `status` lists all.
UNCERTAIN_LISTED = 1000


@dataclass
class SendOptions:
    dry_run: bool = False
    limit: int | None = None
    rate: float | None = None  # messages per second
    provider: str | None = None
    resend_uncertain: bool = False
    retry_failed: bool = False
    retry_budget: float = DEFAULT_RETRY_BUDGET
    # Injected by tests and the benchmark; real sends sleep for real.
    sleep: Callable[[float], None] = time.sleep
    # Asked before each batch: a reason to stop here (e.g. the send window closed), or "".
    # What is not sent stays queued for the next run.
    pause: Callable[[], str] | None = None


@dataclass
class SendReport:
    """What a run did, for the summary and for ``newsletter status``."""

    issue: str
    provider: str
    dry_run: bool
    to_send: int = 0  # queued or deferred when the run started
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    skipped_already_sent: int = 0
    left_the_list: int = 0  # unsubscribed (or bounced…) before their turn
    uncertain: list[JournalEntry] = field(default_factory=list)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (id, email, reason)
    missing_credentials: list[str] = field(default_factory=list)
    outbox: Path | None = None
    stopped: str = ""  # why the run stopped early, if it did
    # Other senders of the issue were still running when this one finished (PostgreSQL).
    other_senders: bool = False

    @property
    def handled(self) -> int:
        return self.sent + self.failed + self.deferred


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    sent: int
    failed: int
    deferred: int
    elapsed: float


@dataclass
class PreparedSend:
    """Everything decided before the first message: the issue, its render, the provider."""

    settings: Settings
    issue_path: Path
    rendered: RenderedIssue
    prepared: PreparedIssue
    provider: Provider
    signer: Signer
    options: SendOptions

    @property
    def month(self) -> str:
        return self.rendered.issue.month

    @property
    def topics(self) -> tuple[str, ...]:
        return self.rendered.issue.topics


def prepare_send(settings: Settings, issue_path: Path, options: SendOptions) -> PreparedSend:
    """Check the issue (as ``check --offline``), render it once, and set up the provider.

    Everything that can stop a send stops it here, before any journal row is written.
    """
    report = check_issue(issue_path, settings, offline=True)
    if report.errors or report.rendered is None:
        raise IssueFileError(report.errors)
    rendered = report.rendered
    prepared = prepare_issue(rendered, settings)
    signer = Signer.for_settings(settings)
    where = settings.source or "the embedded settings"
    links = web_url(settings)
    if not links.startswith("https://"):
        raise SendError(
            f"{where}: unsubscribe links would start with {links}/, but mail providers honour "
            "one-click unsubscribe (RFC 8058) only over https. Set [web] url (or [newsletter] "
            "base_url) to the https:// address where `newsletter serve` answers."
        )
    provider = create_provider(settings, options.provider, dry_run=options.dry_run)
    if options.rate is None:
        configured = settings.provider_options.get("rate")
        if configured is not None:
            try:
                options.rate = parse_rate(str(configured))
            except SendError as exc:
                raise SendError(f"{where}: [provider] rate: {exc}") from None
    return PreparedSend(settings, issue_path, rendered, prepared, provider, signer, options)


def pending_count(job: PreparedSend) -> tuple[int, int]:
    """(to send, already sent) for the job's issue, as its run would count them; no writes."""
    conn = open_store(job.settings.paths.database, readonly=True)
    try:
        journal = SendJournal(conn, job.month)
        resend = resend_policy(journal, job)
        to_send = journal.count_to_send(job.topics, resend)
        already = journal.count_sent(excluding_providers=resend.rehearsals)
    finally:
        conn.close()
    return to_send, already


def resend_policy(journal: SendJournal, job: PreparedSend) -> Resend:
    """Which recorded outcomes this run sends again: its options, and earlier rehearsals."""
    rehearsals = rehearsal_providers(journal.providers_used()) if job.provider.delivers else []
    return Resend(
        failed=job.options.retry_failed,
        uncertain=job.options.resend_uncertain,
        rehearsals=tuple(rehearsals),
    )


class Sender:
    """Runs one send; see the module docstring for the guarantees."""

    def __init__(self, job: PreparedSend, on_progress: Callable[[Progress], None] | None = None):
        self.job = job
        self.options = job.options
        self.provider = job.provider
        self.on_progress = on_progress
        self.report = SendReport(job.month, self.provider.name, self.options.dry_run)
        self.bucket = (
            TokenBucket(self.options.rate, self.options.sleep) if self.options.rate else None
        )
        self.retry_deadline = time.monotonic() + self.options.retry_budget
        self.consecutive_failed_calls = 0
        self.consecutive_refused_messages = 0
        # Messages handed to the provider whose outcome is not recorded yet, and the count of
        # sent messages the journal holds before them: what a store failure leaves uncertain.
        self.in_flight = 0
        self.sent_recorded = 0
        self.started = time.monotonic()
        self.interrupted = threading.Event()

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> SendReport:
        database = self.job.settings.paths.database
        conn = open_store(database, readonly=self.options.dry_run, create=False)
        try:
            if self.options.dry_run:
                self._dry_run(conn)
            else:
                alone = self.options.resend_uncertain or self.options.retry_failed
                with send_lock(conn, self.job.month, alone=alone) as lock:
                    try:
                        self._send(conn, lock)
                    finally:
                        self._audit(conn)
        finally:
            conn.close()
        return self.report

    def _audit(self, conn: StoreConnection) -> None:
        """One row in the audit log for this run, however it ended."""
        report = self.report
        detail = (
            f"issue {self.job.month} via {self.provider.name}: {report.sent} sent, "
            f"{report.failed} failed, {report.deferred} deferred"
        )
        # The store failing is what the caller is already told about.
        with contextlib.suppress(StoreError):
            audit.record(conn, "send", detail, report.sent)

    def _send(self, conn: StoreConnection, lock: SendLock) -> None:
        journal = SendJournal(conn, self.job.month)
        journal.record_issue(self.job.topics, self.job.rendered.subject)
        # --resend-uncertain takes a person's word even with an idempotency key: the key of a
        # batch depends on its exact messages, and a later run may group them differently.
        self.report.left_the_list = journal.start_run(
            self.job.topics, resend_policy(journal, self.job)
        )
        counts = journal.counts()
        self.report.to_send = counts[JournalState.QUEUED] + counts[JournalState.DEFERRED]
        self.report.skipped_already_sent = counts[JournalState.SENT]
        total = (
            self.report.to_send
            if self.options.limit is None
            else min(self.options.limit, self.report.to_send)
        )

        chunk = self.provider.batch_size
        handed_over = 0
        last = 0
        self.provider.open()
        try:
            # Rows deferred in this run are picked up again by the next run, not this one:
            # the keyset (after_id) only moves forward.
            while True:
                reason = self.options.pause() if self.options.pause is not None else ""
                if reason:
                    # Stopped only if work was left; asked before the claim, so that a pause
                    # leaves nothing marked "sending".
                    if journal.any_to_send(after_id=last):
                        self.report.stopped = reason
                    break
                size = chunk
                if self.options.limit is not None:
                    size = min(chunk, self.options.limit - handed_over)
                    if size <= 0:
                        break
                rows = journal.claim_batch(size, self.provider.name, after_id=last)
                if not rows:
                    break
                last = rows[-1][0]
                handed_over += len(rows)
                self._deliver(journal, rows)
                self._progress(total)
        except StoreError as exc:
            raise self._store_failed(exc) from None
        finally:
            self.provider.close()
        # Those who left while the send ran were passed over by the batch reads; forget them.
        if self.options.limit is None:
            self.report.left_the_list += journal.drop_inactive_queued()
        # Rows other senders have in flight look just like uncertain ones: only the last
        # sender of the issue to finish can tell which are.
        self.report.other_senders = lock.others_running()
        if not self.report.other_senders:
            self.report.uncertain = journal.entries(JournalState.SENDING, limit=UNCERTAIN_LISTED)
        self.report.failures = [
            (e.subscriber_id, e.email, e.reason)
            for e in journal.entries(JournalState.FAILED, limit=UNCERTAIN_LISTED)
        ]

    def _store_failed(self, exc: StoreError) -> SendError:
        """What a store failure in the middle of a run means for the journal, in words."""
        # The failed statement changed nothing, so the journal is true up to it: rows that
        # were marked "sending" and handed over stay so, and are reported as uncertain.
        flight = self.in_flight
        recorded = self.sent_recorded if flight else self.report.sent
        lost = (
            f" The last {counted(flight, 'message')} were handed to {self.provider.name} but their "
            "outcome could not be recorded: they stay 'sending' and are reported as "
            "uncertain (`newsletter status`); check with the provider before resending them "
            "with --resend-uncertain."
            if flight
            else ""
        )
        return SendError(
            f"the store could not be written in the middle of the send ({exc.cause}). "
            f"This run handed over and recorded {counted(recorded, 'message')}.{lost} "
            "Everything else is still queued. Fix the cause (e.g. free disk space) and run the "
            "same command again to resume."
        )

    def _messages(
        self, rows: Sequence[tuple[int, str, str]]
    ) -> tuple[list[OutgoingMessage], list[Outcome]]:
        messages: list[OutgoingMessage] = []
        refused: list[Outcome] = []
        for subscriber_id, email, name in rows:
            recipient = Recipient(
                subscriber_id,
                email,
                name,
                unsubscribe_url(self.job.settings, self.job.signer, subscriber_id),
            )
            try:
                messages.append(self.job.prepared.message_for(recipient))
            except MessageError as exc:
                # This subscriber's data cannot go in a header (e.g. a line break in the
                # name): a permanent failure for them alone.
                refused.append(Outcome(subscriber_id, JournalState.FAILED, reason=str(exc)))
        return messages, refused

    def _deliver(self, journal: SendJournal, rows: Sequence[tuple[int, str, str]]) -> None:
        """Hand over ``rows`` (claimed: already marked ``sending``) and record each outcome."""
        messages, refused = self._messages(rows)
        if refused:
            journal.record(refused)
            self.report.failed += len(refused)
        attempt = 0
        while messages:
            if self.bucket is not None:
                self.bucket.take(len(messages))
            self.in_flight = len(messages)
            self.sent_recorded = self.report.sent
            try:
                results = self.provider.send_batch(messages)
            except ProviderError as exc:
                # What the provider took before it stopped is sent; the rest waits for the
                # next run. Without a per-message account, nothing of the batch was taken.
                partial = exc.results if exc.results and len(exc.results) == len(messages) else None
                if partial is not None:
                    outcomes, _ = self._classify(messages, partial)
                    journal.record(outcomes)
                    self.in_flight = 0
                else:
                    journal.record(
                        Outcome(m.recipient_id, JournalState.DEFERRED, reason=str(exc)[:500])
                        for m in messages
                    )
                    self.report.deferred += len(messages)
                    self.in_flight = 0
                raise SendError(
                    f"the {self.provider.name} provider stopped the send: {exc}\n"
                    "Nothing more was sent. Fix the cause and run the same command again to resume."
                ) from exc
            outcomes, retry = self._classify(messages, results)
            journal.record(outcomes)
            self.in_flight = 0
            self._check_provider_health(results)
            if not retry:
                return
            delay = self._backoff(
                attempt, [r.retry_after for r in results if r.status == "temporary"]
            )
            if delay is None:
                return  # out of retry budget: the rows stay deferred for the next run
            self.options.sleep(delay)
            attempt += 1
            # Re-mark before retrying: a subscriber who left while we waited is not sent to.
            again = journal.mark_sending([m.recipient_id for m in retry], self.provider.name)
            self.report.deferred -= len(retry)
            self.report.left_the_list += len(retry) - len(again)
            messages = [m for m in retry if m.recipient_id in again]

    def _check_provider_health(self, results: Sequence[DeliveryResult]) -> None:
        """Stop the send when the provider has accepted nothing for too long.

        Calls that only fail temporarily (or leave their fate unknown) count at once: six in a
        row mean the service is down. Permanent refusals count too, but a list may hold a run
        of dead addresses, so those stop the send only after many messages in a row.
        """
        if any(r.status == "accepted" for r in results):
            self.consecutive_failed_calls = 0
            self.consecutive_refused_messages = 0
            return
        self.consecutive_failed_calls += 1
        refused = sum(1 for r in results if r.status == "permanent")
        self.consecutive_refused_messages += refused
        all_refused = refused == len(results)
        if all_refused and self.consecutive_refused_messages < MAX_CONSECUTIVE_REFUSED_MESSAGES:
            return
        if self.consecutive_failed_calls < MAX_CONSECUTIVE_FAILED_CALLS:
            return
        last = results[-1].reason if results else "no results"
        raise SendError(
            f"the {self.provider.name} provider accepted nothing in {self.consecutive_failed_calls} "
            f"calls in a row (last: {last}); stopped so as not to grind through the list. "
            "What was not sent stays queued or deferred: fix the cause and run the same command "
            "again to resume."
        )

    def _classify(
        self, messages: Sequence[OutgoingMessage], results: Sequence[DeliveryResult]
    ) -> tuple[list[Outcome], list[OutgoingMessage]]:
        outcomes: list[Outcome] = []
        retry: list[OutgoingMessage] = []
        for message, result in zip(messages, results, strict=True):
            if result.status == "accepted":
                outcomes.append(
                    Outcome(message.recipient_id, JournalState.SENT, result.provider_message_id)
                )
                self.report.sent += 1
            elif result.status == "permanent":
                outcomes.append(
                    Outcome(message.recipient_id, JournalState.FAILED, reason=result.reason)
                )
                self.report.failed += 1
            elif result.uncertain and not self.provider.idempotent_retries:
                # The provider may have it: leave the row "sending" so that no run resends it
                # unless told to. It is reported by name at the end. (With an idempotency key,
                # the retry below resends the same batch, which the service drops if it has it.)
                continue
            else:
                outcomes.append(
                    Outcome(message.recipient_id, JournalState.DEFERRED, reason=result.reason)
                )
                self.report.deferred += 1
                retry.append(message)
        return outcomes, retry

    def _backoff(self, attempt: int, retry_after: list[float | None]) -> float | None:
        """Seconds to wait before the next attempt, or None when the budget is spent."""
        exponential = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
        # Full jitter spreads retries from many senders; Retry-After is a floor, not a hint.
        delay = random.uniform(exponential / 2, exponential)
        hinted = [r for r in retry_after if r is not None]
        if hinted:
            delay = max(delay, max(hinted))
        if time.monotonic() + delay > self.retry_deadline:
            return None
        return delay

    def _progress(self, total: int) -> None:
        if self.on_progress is not None:
            r = self.report
            self.on_progress(
                Progress(
                    r.handled, total, r.sent, r.failed, r.deferred, time.monotonic() - self.started
                )
            )

    # --- the dry run ------------------------------------------------------------------------

    def _dry_run(self, conn: StoreConnection) -> None:
        """Everything but the sending: selection, personalisation, the provider's payloads."""
        outbox = self.job.settings.paths.build / "outbox" / self.job.month
        self.report.outbox = outbox
        writer = DryRunWriter(self.provider, outbox)
        journal = SendJournal(conn, self.job.month)
        resend = resend_policy(journal, self.job)
        self.report.skipped_already_sent = journal.count_sent(excluding_providers=resend.rehearsals)
        limit = self.options.limit
        for rows in journal.batches_to_send(self.job.topics, resend, self.provider.batch_size):
            if limit is not None:
                rows = rows[: max(0, limit - self.report.to_send)]
                if not rows:
                    break
            self.report.to_send += len(rows)
            messages, refused = self._messages(rows)
            self.report.failed += len(refused)
            self.report.failures.extend((o.subscriber_id, "", o.reason) for o in refused)
            writer.write(messages)
            self.report.sent += len(messages)
            self._progress(self.report.to_send)
        writer.close()
        self.report.missing_credentials = list(self.provider.missing_credentials)


def send_test(
    settings: Settings, issue_path: Path, address: str, *, provider: str | None = None
) -> DeliveryResult:
    """Send the personalised issue to one address, outside the journal (``--to``)."""
    job = prepare_send(settings, issue_path, SendOptions(provider=provider))
    email = normalize_email(address)
    conn = open_store(settings.paths.database, create=False)
    try:
        subscriber = get_subscriber(conn, email)
    finally:
        conn.close()
    # A subscriber gets their own links; anyone else a link that leads to "not on the list".
    subscriber_id = subscriber.id if subscriber else 0
    name = subscriber.name if subscriber else ""
    recipient = Recipient(
        subscriber_id, email, name, unsubscribe_url(settings, job.signer, subscriber_id)
    )
    message = job.prepared.message_for(recipient)
    with job.provider as opened:
        (result,) = opened.send_batch([message])
    return result
