"""``newsletter report ISSUE``: what became of an issue after it left, from the event log.

Sent comes from the journal (leaving out rehearsals through the outbox or null provider);
delivered, bounces, complaints and unsubscribes from the events
the providers reported (``newsletter.events``) for that issue's messages. Each count is of
distinct addresses. The complaint rate is complaints / sent, the bounce rate hard bounces /
sent (soft bounces are temporary and the mailbox providers do not count them); past 0.1 %
complaints or 2 % bounces the report warns, as Gmail and Yahoo start to judge a bulk sender
there. ``status`` stays about the journal; this module never writes.

The HTML version is one self-contained page (no script, no external resource) with a bar
chart, drawn as inline SVG, of the events on each day after the send.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from newsletter.errors import InvalidInput
from newsletter.events import EventKind
from newsletter.journal import SendJournal
from newsletter.providers import rehearsal_providers
from newsletter.settings import Settings
from newsletter.store import open_store, translate_errors

COMPLAINT_RATE_WARNING = 0.001
BOUNCE_RATE_WARNING = 0.02
CHART_DAYS = 14
_LABELS = {
    EventKind.DELIVERED: "Delivered",
    EventKind.SOFT_BOUNCE: "Soft bounces",
    EventKind.HARD_BOUNCE: "Hard bounces",
    EventKind.COMPLAINT: "Complaints",
    EventKind.UNSUBSCRIBE: "Unsubscribes",
}
_COLOURS = {
    EventKind.DELIVERED: "#4c8c6a",
    EventKind.SOFT_BOUNCE: "#d9a441",
    EventKind.HARD_BOUNCE: "#b5523b",
    EventKind.COMPLAINT: "#7a3e8e",
    EventKind.UNSUBSCRIBE: "#5a6f8f",
}


@dataclass
class IssueReport:
    issue: str
    subject: str
    sent: int
    sent_on: str  # the day of the first run, YYYY-MM-DD ('' when unknown)
    addresses: dict[EventKind, list[str]] = field(default_factory=dict)
    per_day: dict[int, Counter[EventKind]] = field(default_factory=dict)  # days after sending

    def count(self, kind: EventKind) -> int:
        return len(self.addresses.get(kind, []))

    @property
    def complaint_rate(self) -> float:
        return self.count(EventKind.COMPLAINT) / self.sent if self.sent else 0.0

    @property
    def bounce_rate(self) -> float:
        return self.count(EventKind.HARD_BOUNCE) / self.sent if self.sent else 0.0

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.complaint_rate > COMPLAINT_RATE_WARNING:
            found.append(
                f"the complaint rate is {self.complaint_rate:.2%}, above 0.1 %: mailbox providers "
                "start filtering bulk mail here. Check that every reader asked for it (double "
                "opt-in) and that the unsubscribe link is easy to find."
            )
        if self.bounce_rate > BOUNCE_RATE_WARNING:
            found.append(
                f"the bounce rate is {self.bounce_rate:.2%}, above 2 %: the list holds addresses "
                "that no longer exist. They are marked bounced already; look at how they joined."
            )
        return found

    def as_json(self, *, details: bool = False) -> dict[str, object]:
        found: dict[str, object] = {
            "issue": self.issue,
            "subject": self.subject,
            "sent": self.sent,
            "counts": {kind.value: self.count(kind) for kind in EventKind},
            "complaint_rate": round(self.complaint_rate, 6),
            "bounce_rate": round(self.bounce_rate, 6),
            "warnings": self.warnings,
            "per_day": {
                str(day): {kind.value: n for kind, n in counts.items()}
                for day, counts in sorted(self.per_day.items())
            },
        }
        if details:
            found["addresses"] = {kind.value: self.addresses.get(kind, []) for kind in EventKind}
        return found

    def as_text(self, *, details: bool = False) -> str:
        title = f"{self.issue}: {self.subject}" if self.subject else self.issue
        lines = [title, f"  {'Sent':<14}{self.sent:>8,}"]
        for kind in EventKind:
            rate = ""
            if kind is EventKind.COMPLAINT:
                rate = f"   {self.complaint_rate:.2%} of sent"
            elif kind is EventKind.HARD_BOUNCE:
                rate = f"   {self.bounce_rate:.2%} of sent"
            elif kind is EventKind.DELIVERED:
                rate = "   (where the provider reports it)"
            lines.append(f"  {_LABELS[kind]:<14}{self.count(kind):>8,}{rate}")
            if details:
                lines += [f"      {address}" for address in self.addresses.get(kind, [])]
        lines += [f"Warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def as_html(self, *, details: bool = False) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><th>{e(_LABELS[kind])}</th><td>{self.count(kind):,}</td></tr>"
            for kind in EventKind
        )
        warnings = "".join(f'<p class="warning">{e(w)}</p>' for w in self.warnings)
        listed = ""
        if details:
            for kind in EventKind:
                items = "".join(f"<li>{e(a)}</li>" for a in self.addresses.get(kind, []))
                if items:
                    listed += f"<h2>{e(_LABELS[kind])}</h2><ul>{items}</ul>"
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Report {e(self.issue)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;"
            "padding:0 1rem;color:#1d1d1b}table{border-collapse:collapse}"
            "th,td{padding:.2rem .8rem;text-align:left}td{text-align:right}"
            ".warning{background:#fbe9e4;border-left:4px solid #b5523b;padding:.5rem}"
            "</style></head><body>"
            f"<h1>{e(self.issue)}: {e(self.subject)}</h1>"
            f"<p>Sent to {self.sent:,} subscribers"
            f"{' on ' + e(self.sent_on) if self.sent_on else ''}. "
            f"Complaint rate {self.complaint_rate:.2%}, bounce rate {self.bounce_rate:.2%}.</p>"
            f"{warnings}<table><tr><th>Sent</th><td>{self.sent:,}</td></tr>{rows}</table>"
            f"<h2>Events by day after the send</h2>{self._chart()}{listed}</body></html>"
        )

    def _chart(self) -> str:
        days = max([CHART_DAYS - 1, *self.per_day])
        highest = max([1, *(sum(c.values()) for c in self.per_day.values())])
        bar, height = 24, 160
        width = (days + 1) * bar
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 40}" height="{height + 60}" '
            'role="img" aria-label="Events by day after the send">'
        ]
        for day in range(days + 1):
            x, y = 30 + day * bar, float(height)
            for kind in EventKind:
                n = self.per_day.get(day, Counter()).get(kind, 0)
                if not n:
                    continue
                h = n / highest * (height - 10)
                y -= h
                parts.append(
                    f'<rect x="{x}" y="{y:.1f}" width="{bar - 4}" height="{h:.1f}" '
                    f'fill="{_COLOURS[kind]}"><title>day {day}: {n} {kind.value}</title></rect>'
                )
            parts.append(
                f'<text x="{x + bar / 2 - 2:.0f}" y="{height + 14}" font-size="10" '
                f'text-anchor="middle">{day}</text>'
            )
        parts.append(f'<text x="0" y="12" font-size="10">{highest}</text>')
        for i, kind in enumerate(EventKind):
            parts.append(
                f'<rect x="{30 + i * 110}" y="{height + 26}" width="10" height="10" '
                f'fill="{_COLOURS[kind]}"/><text x="{44 + i * 110}" y="{height + 35}" '
                f'font-size="10">{html.escape(_LABELS[kind])}</text>'
            )
        parts.append("</svg>")
        return "".join(parts)


def issue_report(settings: Settings, issue: str) -> IssueReport:
    """The report of ``issue`` (YYYY-MM); InvalidInput when no send of it is recorded."""
    conn = open_store(settings.paths.database, readonly=True)
    try:
        journal = SendJournal(conn, issue)
        # What the outbox or the null provider "sent" was a rehearsal: nobody got it.
        rehearsals = rehearsal_providers(journal.providers_used())
        sent_count = journal.count_sent(excluding_providers=rehearsals)
        with translate_errors(conn):
            sent = conn.execute(
                "SELECT count(*), min(sent_at) FROM journal WHERE issue = ? AND state = 'sent'",
                (issue,),
            ).fetchone()
            recorded = conn.execute(
                "SELECT subject, first_run_at FROM journal_issues WHERE issue = ?", (issue,)
            ).fetchone()
            rows = conn.execute(
                "SELECT kind, email_key, min(email), min(occurred_at) FROM delivery_events "
                "WHERE issue = ? GROUP BY kind, email_key ORDER BY 3",
                (issue,),
            ).fetchall()
    finally:
        conn.close()
    if recorded is None and not sent[0]:
        raise InvalidInput(
            f"{settings.paths.database}: no send of {issue} is recorded; the report is about "
            "an issue that was sent (`newsletter status ISSUE` shows where a send stands)"
        )
    started = str((recorded[1] if recorded else None) or sent[1] or "")
    report = IssueReport(issue, str(recorded[0]) if recorded else "", sent_count, started[:10])
    for kind, _, address, occurred in rows:
        event_kind = EventKind(str(kind))
        report.addresses.setdefault(event_kind, []).append(str(address))
        day = _days_after(report.sent_on, str(occurred))
        report.per_day.setdefault(day, Counter())[event_kind] += 1
    return report


def _days_after(sent_on: str, occurred: str) -> int:
    try:
        return max(0, (date.fromisoformat(occurred[:10]) - date.fromisoformat(sent_on)).days)
    except ValueError:
        return 0
