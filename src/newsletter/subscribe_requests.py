"""Requests to subscribe, as the store keeps them: allowances, the pending cap and the queue.

The subscribe form is open to anyone, so what a request may cost is bounded in the store,
where the limits survive a restart and hold across every worker process:

- each client (an IPv4 address, or an IPv6 /64) may post a few requests an hour, and all
  clients together a few hundred (fixed windows: a burst at a window's edge gets at most
  twice the allowance);
- no more than ``max_pending`` unconfirmed subscribers wait at once, and those of the form
  that never confirm are forgotten once their link has expired;
- each address gets at most one confirmation email an hour.

A request is one transaction that does the same work whether the address is new, pending,
active or suppressed, and it sends nothing: it queues the confirmation, which a worker (the
web app's own thread, or ``newsletter run-due``) sends. So the answer, and the time it takes,
say nothing about whether an address is on the list, and a provider that is down loses no
request.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from newsletter import consent
from newsletter.consent import ConsentEvent
from newsletter.errors import SettingsError
from newsletter.settings import Settings
from newsletter.store import (
    SOURCE_WEB,
    Status,
    email_key,
    transaction,
    translate_errors,
)
from newsletter.tokens import CONFIRM_MAX_AGE

CONFIRMATION_INTERVAL_SECONDS = 3600
_ALLOWANCE = re.compile(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*")
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_UNIT_SECONDS |= {"h": 3600, "hour": 3600, "d": 86400, "day": 86400}


@dataclass(frozen=True)
class Allowance:
    """At most ``count`` requests per ``seconds``."""

    count: int
    seconds: int

    @classmethod
    def parse(cls, value: object, key: str) -> Allowance:
        """``"10/hour"`` (also ``/s``, ``/min``, ``/h``, ``/day``); SettingsError naming ``key``."""
        found = _ALLOWANCE.fullmatch(value) if isinstance(value, str) else None
        if found is None or int(found[1]) < 1:
            raise SettingsError(
                f'must be an allowance such as "10/hour" or "300/day", not {value!r}', key=key
            )
        return cls(int(found[1]), _UNIT_SECONDS[found[2]])


@dataclass(frozen=True)
class SubscribeLimits:
    per_client: Allowance = Allowance(10, 3600)
    overall: Allowance = Allowance(300, 3600)
    max_pending: int = 5000
    # Unconfirmed subscribers of the form are forgotten after this long (the link expires).
    pending_seconds: int = CONFIRM_MAX_AGE


class Verdict(StrEnum):
    ACCEPTED = "accepted"  # the same answer whatever the address: "check your inbox"
    CLIENT_LIMIT = "client-limit"  # this client asked too often
    BUSY = "busy"  # every client together asked too often, or too many wait unconfirmed


@dataclass(frozen=True)
class QueuedConfirmation:
    subscriber_id: int
    requested_at: float  # Unix time of the request: the confirmation link is issued at it
    attempts: int


@dataclass
class ExpiryReport:
    pending_forgotten: int = 0
    queue_dropped: int = 0
    windows_dropped: int = 0
    ids: list[int] = field(default_factory=list)


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _take(conn: sqlite3.Connection, bucket: str, allowance: Allowance, now: float) -> bool:
    """Count one request against ``bucket``; False (and nothing counted) when it is spent."""
    window = int(now // allowance.seconds)
    row = conn.execute(
        "SELECT hits FROM rate_windows WHERE bucket = ? AND window = ?", (bucket, window)
    ).fetchone()
    if row is not None and int(row[0]) >= allowance.count:
        return False
    conn.execute(
        "INSERT INTO rate_windows (bucket, window, hits, expires) VALUES (?, ?, 1, ?) "
        "ON CONFLICT (bucket, window) DO UPDATE SET hits = hits + 1",
        (bucket, window, (window + 1) * allowance.seconds),
    )
    return True


def record_request(
    conn: sqlite3.Connection,
    *,
    email: str,
    name: str,
    topics: Sequence[str],
    client: str,
    limits: SubscribeLimits,
    now: float,
    evidence: ConsentEvent | None = None,
) -> Verdict:
    """Record one request of the form (already validated and normalised) in one transaction.

    A new address is added as pending with ``name`` and ``topics``; an address already in the
    store keeps its row as it is (a form anyone can post must not change someone else's
    data). A confirmation is queued unless the address is active, bounced or complained, or
    got one less than an hour ago. ``evidence`` joins the subscriber's consent trail,
    whatever their status, so that the work done says nothing about the address.
    """
    key = email_key(email)
    stamp = _stamp(now)
    with transaction(conn):
        if not _take(conn, f"client:{client}", limits.per_client, now):
            return Verdict.CLIENT_LIMIT
        if not _take(conn, "all", limits.overall, now):
            return Verdict.BUSY
        pending = conn.execute(
            "SELECT count(*) FROM subscribers WHERE status = 'pending'"
        ).fetchone()[0]
        if int(pending) >= limits.max_pending:
            return Verdict.BUSY
        conn.execute(
            "INSERT INTO subscribers (email, email_key, name, topics, status, source, created_at,"
            " status_changed_at, status_reason, status_source)"
            " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, 'asked to subscribe', ?)"
            " ON CONFLICT (email_key) DO NOTHING",
            (
                email,
                key,
                name,
                json.dumps(list(topics), ensure_ascii=False),
                SOURCE_WEB,
                stamp,
                stamp,
                SOURCE_WEB,
            ),
        )
        subscriber_id, status = conn.execute(
            "SELECT id, status FROM subscribers WHERE email_key = ?", (key,)
        ).fetchone()
        if evidence is not None:
            consent.record(conn, int(subscriber_id), evidence)
        if Status(status) in (Status.ACTIVE, Status.BOUNCED, Status.COMPLAINED):
            return Verdict.ACCEPTED
        last = conn.execute(
            "SELECT sent_at FROM confirmation_sends WHERE email_key = ?", (key,)
        ).fetchone()
        if last is not None and str(last[0]) > _stamp(now - CONFIRMATION_INTERVAL_SECONDS):
            return Verdict.ACCEPTED
        conn.execute(
            "INSERT INTO confirmation_sends (email_key, sent_at) VALUES (?, ?)"
            " ON CONFLICT (email_key) DO UPDATE SET sent_at = excluded.sent_at",
            (key, stamp),
        )
        conn.execute(
            "INSERT INTO confirmation_queue (subscriber_id, requested_at, attempts,"
            " next_attempt_at, last_error) VALUES (?, ?, 0, ?, '')"
            " ON CONFLICT (subscriber_id) DO UPDATE SET requested_at = excluded.requested_at,"
            " attempts = 0, next_attempt_at = excluded.next_attempt_at, last_error = ''",
            (int(subscriber_id), now, now),
        )
    return Verdict.ACCEPTED


def claim_due(
    conn: sqlite3.Connection, *, now: float, lease_seconds: float, limit: int = 20
) -> list[QueuedConfirmation]:
    """Take up to ``limit`` due confirmations for ``lease_seconds``.

    A claimed row is not due again until its lease ends, so two workers (two processes of
    the web app, or the app and ``run-due``) never send the same one at once; a worker that
    dies leaves it to be sent again after the lease (a second confirmation email at worst).
    """
    with transaction(conn):
        rows = conn.execute(
            "UPDATE confirmation_queue SET attempts = attempts + 1, next_attempt_at = ?"
            " WHERE subscriber_id IN (SELECT subscriber_id FROM confirmation_queue"
            " WHERE next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
            " RETURNING subscriber_id, requested_at, attempts",
            (now + lease_seconds, now, limit),
        ).fetchall()
    return [QueuedConfirmation(int(r[0]), float(r[1]), int(r[2])) for r in rows]


def finish(conn: sqlite3.Connection, subscriber_id: int) -> None:
    """The confirmation was sent (or is no longer wanted): out of the queue."""
    with transaction(conn):
        conn.execute("DELETE FROM confirmation_queue WHERE subscriber_id = ?", (subscriber_id,))


def retry_later(conn: sqlite3.Connection, subscriber_id: int, *, at: float, error: str) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE confirmation_queue SET next_attempt_at = ?, last_error = ?"
            " WHERE subscriber_id = ?",
            (at, error[:500], subscriber_id),
        )


def queued_count(conn: sqlite3.Connection) -> int:
    with translate_errors(conn):
        return int(conn.execute("SELECT count(*) FROM confirmation_queue").fetchone()[0])


def expire(conn: sqlite3.Connection, *, now: float, limits: SubscribeLimits) -> ExpiryReport:
    """Forget what has outlived its use: unconfirmed subscribers of the form whose link has
    expired (with their queued emails), and spent rate windows."""
    report = ExpiryReport()
    cutoff = _stamp(now - limits.pending_seconds)
    with transaction(conn):
        report.ids = [
            int(r[0])
            for r in conn.execute(
                "DELETE FROM subscribers WHERE status = 'pending' AND source = ?"
                " AND created_at < ? RETURNING id",
                (SOURCE_WEB, cutoff),
            )
        ]
        report.pending_forgotten = len(report.ids)
        # Their consent trail (the request) goes with them.
        conn.executemany(
            "DELETE FROM consent_events WHERE subscriber_id = ?", [(i,) for i in report.ids]
        )
        report.queue_dropped = conn.execute(
            "DELETE FROM confirmation_queue WHERE requested_at < ? OR subscriber_id NOT IN"
            " (SELECT id FROM subscribers)",
            (now - limits.pending_seconds,),
        ).rowcount
        report.windows_dropped = conn.execute(
            "DELETE FROM rate_windows WHERE expires < ?", (now,)
        ).rowcount
        conn.execute(
            "DELETE FROM confirmation_sends WHERE sent_at < ?",
            (_stamp(now - CONFIRMATION_INTERVAL_SECONDS),),
        )
    return report


def limits_from_settings(settings: Settings) -> SubscribeLimits:
    """The ``[web]`` keys ``subscribe_per_client``, ``subscribe_overall`` and ``max_pending``."""
    table = settings.section("web")
    where = settings.source or "settings"
    defaults = SubscribeLimits()
    try:
        per_client = table.get("subscribe_per_client")
        overall = table.get("subscribe_overall")
        limits = SubscribeLimits(
            per_client=defaults.per_client
            if per_client is None
            else Allowance.parse(per_client, "web.subscribe_per_client"),
            overall=defaults.overall
            if overall is None
            else Allowance.parse(overall, "web.subscribe_overall"),
            max_pending=_positive(table.get("max_pending", defaults.max_pending)),
        )
    except SettingsError as exc:
        raise SettingsError(str(exc).removeprefix("settings: "), path=where) from None
    return limits


def _positive(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(f"must be a whole number above 0, not {value!r}", key="web.max_pending")
    return value


def client_of(environ: dict[str, object], trusted_proxies: Sequence[str]) -> str:
    """Who sent a request, for the per-client allowance: an IPv4 address or an IPv6 /64."""
    client = _address(client_address(environ, trusted_proxies))
    if client is None:
        return "unknown"
    if client.version == 6:
        return str(ipaddress.ip_network(f"{client}/64", strict=False))
    return str(client)


def client_address(environ: dict[str, object], trusted_proxies: Sequence[str]) -> str:
    """The address a request came from, whole ("" when unknown); the consent trail cuts it.

    ``X-Forwarded-For`` counts only when the request came from a trusted proxy, and then its
    last address that is not itself a trusted proxy is the client: anything to the left of
    that was written by the client and proves nothing.
    """
    trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted)

    peer = _address(str(environ.get("REMOTE_ADDR") or ""))
    client = peer
    if peer is not None and is_trusted(peer):
        forwarded = str(environ.get("HTTP_X_FORWARDED_FOR") or "")
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            address = _address(hop)
            if address is None:
                break  # a garbled header: stay with the last address we could trust
            client = address
            if not is_trusted(address):
                break
    return "" if client is None else str(client)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted_proxies_from_settings(settings: Settings) -> list[str]:
    """``[web] trusted_proxies``: addresses or networks of the reverse proxies in front."""
    value = settings.section("web").get("trusted_proxies", [])
    where = settings.source or "settings"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(
            'must be a list of addresses or networks, e.g. ["127.0.0.1", "10.0.0.0/8"]',
            path=where,
            key="web.trusted_proxies",
        )
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise SettingsError(
                f"{entry!r} is not an IP address or network", path=where, key="web.trusted_proxies"
            ) from None
    return list(value)
