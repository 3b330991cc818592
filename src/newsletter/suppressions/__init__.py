"""``newsletter subscribers sync``: the provider's suppression lists, applied to the store.

A provider's mail servers learn of hard bounces, spam complaints and unsubscribes (from its own
links or a mail client's one-click button) that the webhooks may have missed. Sync reads those
lists through the provider (``Provider.suppressions()``, part of the provider contract, so a
third-party provider can offer it too; the built-ins' readers are the modules of this
package), and marks the subscribers: hard bounce -> bounced, complaint -> complained,
unsubscribe -> unsubscribed. Every entry is also kept in the event log
(``newsletter.events``), once per address and list, beside the webhooks' events.

Only active and pending subscribers change; an address already unsubscribed, bounced or
complained keeps its status and the time it got it, so running sync again changes nothing.
Each change is its own transaction: a sync stopped part-way (Ctrl-C, a kill, a lost network)
has applied some changes and not others, and running it again applies the rest.
An address on several lists takes the gravest: complained, then bounced, then unsubscribed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from newsletter import events, store
from newsletter.errors import InvalidInput, ProviderConfigError
from newsletter.providers import Provider, create_provider, installed_providers, load_provider
from newsletter.providers.base import Suppression
from newsletter.settings import Settings
from newsletter.store import SOURCE_PROVIDER, Status, StoreConnection

__all__ = ["Suppression", "SyncChange", "SyncReport", "fetch_suppressions", "sync"]

_GRAVITY = {Status.UNSUBSCRIBED: 1, Status.BOUNCED: 2, Status.COMPLAINED: 3}


@dataclass(frozen=True)
class SyncChange:
    email: str
    subscriber_id: int
    before: Status
    after: Status
    reason: str


@dataclass
class SyncReport:
    provider: str
    dry_run: bool
    fetched: int = 0  # distinct addresses on the provider's lists
    changes: list[SyncChange] = field(default_factory=list)
    already_suppressed: int = 0
    not_on_the_list: int = 0


def fetch_suppressions(settings: Settings) -> Iterator[Suppression]:
    """Every entry on the configured provider's suppression lists, page after page."""
    if load_provider(settings.provider).suppressions is Provider.suppressions:
        supported = ", ".join(
            name
            for name in installed_providers()
            if load_provider(name).suppressions is not Provider.suppressions
        )
        raise ProviderConfigError(
            settings.provider,
            f"the {settings.provider} provider has no suppression list to sync; "
            f"sync works with {supported}",
        )
    with create_provider(settings) as provider:
        yield from provider.suppressions()


def sync(
    conn: StoreConnection,
    settings: Settings,
    *,
    dry_run: bool = False,
    suppressions: Iterable[Suppression] | None = None,
    on_fetched: Callable[[int], None] | None = None,
    on_change: Callable[[SyncChange], None] | None = None,
) -> SyncReport:
    """Mark the subscribers on the provider's lists; with ``dry_run``, only report.

    ``on_fetched`` hears how many entries have been read, every thousand and at the end;
    ``on_change`` hears of each change as soon as it is committed.
    """
    entries = fetch_suppressions(settings) if suppressions is None else suppressions
    gravest: dict[str, Suppression] = {}
    read = 0
    for entry in entries:
        read += 1
        if on_fetched is not None and read % 1000 == 0:
            on_fetched(read)
        key = store.email_key(entry.email.strip())
        known = gravest.get(key)
        if known is None or _GRAVITY[entry.status] > _GRAVITY[known.status]:
            gravest[key] = entry
    if on_fetched is not None:
        on_fetched(read)
    report = SyncReport(settings.provider, dry_run, fetched=len(gravest))
    if not dry_run:
        # The log keeps each entry once; the status rule is applied below, as it always was.
        log = [(e.email, e.status, e.reason) for e in gravest.values()]
        events.record_events(
            conn, events.sync_events(settings.provider, log), via=events.VIA_SYNC, apply=False
        )
    source = f"{SOURCE_PROVIDER}:{settings.provider}"
    for entry in gravest.values():
        try:
            address = store.normalize_email(entry.email)
        except InvalidInput:
            address = ""  # not an address the store could hold
        subscriber = store.get_subscriber(conn, address) if address else None
        if subscriber is None:
            report.not_on_the_list += 1
            continue
        if subscriber.status not in (Status.ACTIVE, Status.PENDING):
            report.already_suppressed += 1
            continue
        if not dry_run:
            store.set_status(conn, subscriber.id, entry.status, entry.reason, source=source)
        change = SyncChange(
            subscriber.email, subscriber.id, subscriber.status, entry.status, entry.reason
        )
        report.changes.append(change)
        if on_change is not None:
            on_change(change)
    return report
