"""Consent evidence: when and how each person agreed to get the newsletter (GDPR art. 7(1)).

One row per event in ``consent_events``: the subscribe request, the confirmation, an import
or the admin's ``subscribers add``. Each records the time, the form it came through (web,
import, command, api), the client's IP address (truncated by default: /24 for IPv4, /48 for
IPv6; ``[web] full_ip = true`` keeps it whole), the user agent, a version of the consent text
the person was shown (the first 16 hex digits of the SHA-256 of the page template that shows
it, with the newsletter's name and ``reason`` it prints), and for imports the file name and the
admin's command line.

The trail goes with the subscriber: ``remove`` and erasure delete it, ``export --consent``
writes it as one JSON cell per subscriber, and an import of that file puts it back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from newsletter.errors import InvalidInput
from newsletter.settings import Settings
from newsletter.store import StoreConnection, now_utc, translate_errors

FORM_WEB = "web"
FORM_IMPORT = "import"
FORM_COMMAND = "command"
FORM_API = "api"
FORMS = (FORM_WEB, FORM_IMPORT, FORM_COMMAND, FORM_API)

EVENT_SUBSCRIBE = "subscribe"
EVENT_CONFIRM = "confirm"
EVENT_IMPORT = "import"
EVENT_ADD = "add"

_MAX_USER_AGENT = 300
_MAX_DETAIL = 1000
_FIELDS = ("event", "form", "at", "ip", "user_agent", "text_version", "detail")


@dataclass(frozen=True)
class ConsentEvent:
    event: str
    form: str
    at: str  # ISO 8601, UTC
    ip: str = ""
    user_agent: str = ""
    text_version: str = ""
    detail: str = ""

    def describe(self) -> str:
        parts = [f"{self.at}  {self.event} ({self.form})"]
        if self.ip:
            parts.append(f"ip {self.ip}")
        if self.user_agent:
            parts.append(f"agent {self.user_agent!r}")
        if self.text_version:
            parts.append(f"text {self.text_version}")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)


def truncated_ip(address: str, *, full: bool = False) -> str:
    """``address`` cut to its /24 (IPv4) or /48 (IPv6) network, or whole when ``full``.

    "" for anything that is not an IP address (the client may be unknown).
    """
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]").split("/")[0])
    except ValueError:
        return ""
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if full:
        return str(parsed)
    prefix = 24 if parsed.version == 4 else 48
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))


def full_ip_from_settings(settings: Settings) -> bool:
    """``[web] full_ip``: keep whole IP addresses in the consent trail (default: truncate);
    checked when the settings were read."""
    return bool(settings.section("web").get("full_ip", False))


def text_version(source: str) -> str:
    """The version of a consent text: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def record(conn: StoreConnection, subscriber_id: int, event: ConsentEvent) -> None:
    """Add one event to a subscriber's trail, in the caller's transaction (if any)."""
    record_many(conn, [(subscriber_id, event)])


def record_many(conn: StoreConnection, events: Sequence[tuple[int, ConsentEvent]]) -> None:
    """Add (subscriber id, event) pairs to the trails in one statement (an import's batch)."""
    for _, event in events:
        if event.form not in FORMS:
            raise InvalidInput(f"consent form {event.form!r} is not one of {', '.join(FORMS)}")
    if not events:
        return
    conn.executemany(
        "INSERT INTO consent_events (subscriber_id, event, form, at, ip, user_agent,"
        " text_version, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                subscriber_id,
                event.event,
                event.form,
                event.at or now_utc(),
                event.ip,
                event.user_agent[:_MAX_USER_AGENT],
                event.text_version,
                event.detail[:_MAX_DETAIL],
            )
            for subscriber_id, event in events
        ],
    )


def trail(conn: StoreConnection, subscriber_id: int) -> list[ConsentEvent]:
    """A subscriber's consent events, oldest first."""
    with translate_errors(conn):
        rows = conn.execute(
            f"SELECT {', '.join(_FIELDS)} FROM consent_events WHERE subscriber_id = ?"
            " ORDER BY at, id",
            (subscriber_id,),
        ).fetchall()
    return [ConsentEvent(*(str(v) for v in row)) for row in rows]


def to_json(events: Iterable[ConsentEvent]) -> str:
    """The trail as one compact JSON array: the export's ``consent`` cell."""
    return json.dumps([asdict(e) for e in events], ensure_ascii=False, separators=(",", ":"))


def from_json(text: str) -> list[ConsentEvent]:
    """The events of an export's ``consent`` cell; InvalidInput saying what is wrong."""
    if not text.strip():
        return []
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"the consent cell is not JSON ({exc})") from None
    if not isinstance(items, list):
        raise InvalidInput("the consent cell must be a JSON array of events")
    events = []
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(k, ""), str) for k in _FIELDS):
            raise InvalidInput("each consent event must be an object of text fields")
        unknown = set(item) - set(_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown consent field {sorted(unknown)[0]!r}")
        if not item.get("at") or item.get("form") not in FORMS:
            raise InvalidInput("each consent event needs 'at' and a 'form' of " + ", ".join(FORMS))
        events.append(ConsentEvent(**{k: str(item.get(k, "")) for k in _FIELDS}))
    return events


def restore(conn: StoreConnection, subscriber_id: int, events: Iterable[ConsentEvent]) -> int:
    """Add the events of an imported trail that the subscriber's trail lacks; return how many."""
    have = set(trail(conn, subscriber_id))
    added = 0
    for event in events:
        if event not in have:
            record(conn, subscriber_id, event)
            have.add(event)
            added += 1
    return added
