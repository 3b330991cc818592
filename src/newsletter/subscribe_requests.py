"""Requests to subscribe, as the store keeps them: allowances, the pending cap and the queue.

The subscribe form is open to anyone, so what a request may cost is bounded in the store,
where the limits survive a restart and hold across every worker process:

- each client (an IPv4 address, or an IPv6 /64) may post a few requests an hour, its network
  (IPv4 /24, IPv6 /48) five clients' worth, and all clients together a few hundred (fixed
  windows: a burst at a window's edge gets at most twice the allowance); a refused request
  counts for nothing;
- no more than ``max_pending`` unconfirmed subscribers of the form wait at once, and those
  that never confirm are forgotten once the link of their latest request has expired;
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from newsletter import consent
from newsletter.consent import ConsentEvent
from newsletter.settings import Allowance, Settings
from newsletter.store import (
    SOURCE_WEB,
    StoreConnection,
    email_key,
    stamp_of,
    transaction,
    translate_errors,
)
from newsletter.tokens import CONFIRM_MAX_AGE

CONFIRMATION_INTERVAL_SECONDS = 3600
# A client's network (IPv4 /24, IPv6 /48) may post this many clients' allowances together.
NETWORK_CLIENTS = 5
# In [web] trusted_proxies: the proxy reaches the app through a unix socket (no peer address).
UNIX_PEER = "unix"


DEFAULT_PER_CLIENT = Allowance(10, 3600)
DEFAULT_OVERALL = Allowance(300, 3600)


@dataclass(frozen=True)
class SubscribeLimits:
    per_client: Allowance = DEFAULT_PER_CLIENT
    overall: Allowance = DEFAULT_OVERALL
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


def _take(conn: StoreConnection, bucket: str, allowance: Allowance, now: float) -> bool:
    """Count one request against ``bucket``; False (and nothing counted) when it is spent."""
    window = int(now // allowance.seconds)
    row = conn.execute(
        "SELECT hits FROM rate_windows WHERE bucket = ? AND window = ?", (bucket, window)
    ).fetchone()
    if row is not None and int(row[0]) >= allowance.count:
        return False
    conn.execute(
        "INSERT INTO rate_windows (bucket, window, hits, expires) VALUES (?, ?, 1, ?) "
        "ON CONFLICT (bucket, window) DO UPDATE SET hits = rate_windows.hits + 1",
        (bucket, window, (window + 1) * allowance.seconds),
    )
    return True


class _Refused(Exception):
    """Rolls the request's transaction back, counters included: a refused request costs nothing."""

    def __init__(self, verdict: Verdict):
        self.verdict = verdict


def record_request(
    conn: StoreConnection,
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
    data). A confirmation is queued unless the address got one less than an hour ago; the
    worker drops it for an address that is active, bounced or complained. So the statements
    run are the same whatever the store holds about the address: the answer's timing tells
    nothing. A refused request changes nothing, not even the counters. ``evidence`` joins the
    subscriber's consent trail, whatever their status, for the same reason.
    """
    key = email_key(email)
    stamp = stamp_of(now)
    try:
        with transaction(conn):
            _count_request(conn, client, limits, now)
            conn.execute(
                "INSERT INTO subscribers (email, email_key, name, topics, status, source,"
                " created_at, status_changed_at, status_reason, status_source)"
                " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, 'asked to subscribe', ?)"
                " ON CONFLICT (email_key) DO UPDATE SET status_changed_at = CASE"
                " WHEN subscribers.status = 'pending' THEN excluded.status_changed_at"
                " ELSE subscribers.status_changed_at END",
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
            # (A pending row's status time is its latest request: expiry counts from there.)
            (subscriber_id,) = conn.execute(
                "SELECT id FROM subscribers WHERE email_key = ?", (key,)
            ).fetchone()
            if evidence is not None:
                consent.record(conn, int(subscriber_id), evidence)
            queued = conn.execute(
                "INSERT INTO confirmation_sends (email_key, sent_at) VALUES (?, ?)"
                " ON CONFLICT (email_key) DO UPDATE SET sent_at = excluded.sent_at"
                " WHERE confirmation_sends.sent_at <= ? RETURNING 1",
                (key, stamp, stamp_of(now - CONFIRMATION_INTERVAL_SECONDS)),
            ).fetchall()
            conn.execute(
                "INSERT INTO confirmation_queue (subscriber_id, requested_at, attempts,"
                " next_attempt_at, last_error) SELECT ?, ?, 0, ?, '' WHERE ?"
                " ON CONFLICT (subscriber_id) DO UPDATE SET requested_at = excluded.requested_at,"
                " attempts = 0, next_attempt_at = excluded.next_attempt_at, last_error = ''",
                (int(subscriber_id), now, now, bool(queued)),
            )
    except _Refused as refused:
        return refused.verdict
    return Verdict.ACCEPTED


def _count_request(conn: StoreConnection, client: str, limits: SubscribeLimits, now: float) -> None:
    """Count the request against its client, its client's network and everyone; _Refused when
    one is spent or too many of the form's subscribers wait unconfirmed."""
    if not _take(conn, f"client:{client}", limits.per_client, now):
        raise _Refused(Verdict.CLIENT_LIMIT)
    # One host may hold a whole IPv6 /48 (65,536 "clients"), or rent addresses in one IPv4
    # /24: their network as a whole gets a few clients' worth.
    network = Allowance(limits.per_client.count * NETWORK_CLIENTS, limits.per_client.seconds)
    if not _take(conn, f"network:{network_of(client)}", network, now):
        raise _Refused(Verdict.CLIENT_LIMIT)
    if not _take(conn, "all", limits.overall, now):
        raise _Refused(Verdict.BUSY)
    pending = conn.execute(
        "SELECT count(*) FROM subscribers WHERE status = 'pending' AND source = ?", (SOURCE_WEB,)
    ).fetchone()[0]
    if int(pending) >= limits.max_pending:
        raise _Refused(Verdict.BUSY)


def network_of(client: str) -> str:
    """The network a client belongs to: its IPv4 /24, or its IPv6 /48."""
    try:
        network = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return client
    prefix = 24 if network.version == 4 else 48
    return str(network.supernet(new_prefix=prefix)) if network.prefixlen > prefix else client


def claim_due(
    conn: StoreConnection, *, now: float, lease_seconds: float, limit: int = 20
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


def finish(conn: StoreConnection, subscriber_id: int) -> None:
    """The confirmation was sent (or is no longer wanted): out of the queue."""
    with transaction(conn):
        conn.execute("DELETE FROM confirmation_queue WHERE subscriber_id = ?", (subscriber_id,))


def retry_later(conn: StoreConnection, subscriber_id: int, *, at: float, error: str) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE confirmation_queue SET next_attempt_at = ?, last_error = ?"
            " WHERE subscriber_id = ?",
            (at, error[:500], subscriber_id),
        )


def queued_count(conn: StoreConnection) -> int:
    with translate_errors(conn):
        return int(conn.execute("SELECT count(*) FROM confirmation_queue").fetchone()[0])


def expire(conn: StoreConnection, *, now: float, limits: SubscribeLimits) -> ExpiryReport:
    """Forget what has outlived its use: unconfirmed subscribers of the form whose link has
    expired (with their queued emails), and spent rate windows."""
    report = ExpiryReport()
    cutoff = stamp_of(now - limits.pending_seconds)
    with transaction(conn):
        # status_changed_at of a pending row of the form is its latest request.
        report.ids = [
            int(r[0])
            for r in conn.execute(
                "DELETE FROM subscribers WHERE status = 'pending' AND source = ?"
                " AND status_changed_at < ? RETURNING id",
                (SOURCE_WEB, cutoff),
            )
        ]
        report.pending_forgotten = len(report.ids)
        # Their consent trail (the request) goes with them.
        conn.executemany(
            "DELETE FROM consent_events WHERE subscriber_id = ?", [(i,) for i in report.ids]
        )
        report.queue_dropped = conn.execute(
            "DELETE FROM confirmation_queue WHERE requested_at < ? OR NOT EXISTS"
            " (SELECT 1 FROM subscribers WHERE subscribers.id = confirmation_queue.subscriber_id)",
            (now - limits.pending_seconds,),
        ).rowcount
        report.windows_dropped = conn.execute(
            "DELETE FROM rate_windows WHERE expires < ?", (now,)
        ).rowcount
        conn.execute(
            "DELETE FROM confirmation_sends WHERE sent_at < ?",
            (stamp_of(now - CONFIRMATION_INTERVAL_SECONDS),),
        )
    return report


def limits_from_settings(settings: Settings) -> SubscribeLimits:
    """The ``[web]`` allowances and pending cap (checked when the settings were read)."""
    table = settings.section("web")
    defaults = SubscribeLimits()
    per_client = table.get("subscribe_per_client")
    overall = table.get("subscribe_overall")
    return SubscribeLimits(
        per_client=defaults.per_client
        if per_client is None
        else Allowance.parse(per_client, "web.subscribe_per_client"),
        overall=defaults.overall
        if overall is None
        else Allowance.parse(overall, "web.subscribe_overall"),
        max_pending=int(table.get("max_pending", defaults.max_pending)),
    )


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
    that was written by the client and proves nothing. ``"unix"`` trusts a peer with no
    address: a proxy on the same machine talking over a unix socket.
    """
    trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies if p != UNIX_PEER]

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted)

    peer = _address(str(environ.get("REMOTE_ADDR") or ""))
    client = peer
    through_socket = peer is None and UNIX_PEER in trusted_proxies
    if through_socket or (peer is not None and is_trusted(peer)):
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
    """``[web] trusted_proxies`` (checked when the settings were read)."""
    return list(settings.section("web").get("trusted_proxies", []))
