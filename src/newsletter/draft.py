"""``newsletter new``: next month's issue file, started from DOIs.

The file has its front matter, a teaser to write, and one article skeleton per DOI with the
citation lines filled in from the DOI's record; what only the author can write (headline,
topics, summary, Practice Implications) is left as an obvious placeholder, which
``newsletter check`` reports until it is written.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

from newsletter.doi import DoiRecord
from newsletter.errors import NewsletterError
from newsletter.parse import MONTH

_EMPTY_CITATION = [
    "Authors: Surname, A. B.; Other, C.",
    "Year: ",
    "Title: ",
    "Journal: ",
    "Volume: ",
    "Pages: ",
    "DOI: ",
]


def next_month(today: _dt.date | None = None) -> str:
    """The month after ``today``'s, as YYYY-MM."""
    today = today or _dt.date.today()
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    return f"{year:04d}-{month:02d}"


def issue_text(month: str, records: Sequence[DoiRecord]) -> str:
    """The text of a new issue file for ``month`` with one article per record."""
    title = _dt.datetime.strptime(month, "%Y-%m").strftime("%B %Y")
    parts = [
        "---",
        f"month: {month}",
        f"title: {title}",
        'subject: "Write the subject line: what the reader gets this month"',
        "---",
        "Dear [[name]], this month I write about … (the teaser: a few sentences that make the "
        "reader want to read on).",
    ]
    skeletons: list[DoiRecord | None] = [*records] or [None]
    for record in skeletons:
        lines = record.citation_lines() if record is not None else _EMPTY_CITATION
        parts += [
            "",
            "# Write the headline: what the study found",
            *lines,
            "Topics: ",
            "Research type: ",
            "",
            "The summary: what was studied, how, and what was found.",
            "",
            "## Practice Implications",
            "What it means in the consulting room.",
        ]
    return "\n".join(parts) + "\n"


def new_issue_path(folder: Path, month: str) -> Path:
    """Where the issue of ``month`` goes; raises when the month is wrong or the file exists."""
    if not MONTH.match(month):
        raise NewsletterError(f"month must be YYYY-MM with a month from 01 to 12, not {month!r}")
    path = folder / f"{month}.md"
    if path.exists():
        raise NewsletterError(
            f"{path} already exists; edit it, or name another month: newsletter new YYYY-MM"
        )
    return path


def create_issue(folder: Path, month: str, records: Sequence[DoiRecord]) -> Path:
    """Write ``folder/<month>.md``; never over an existing file."""
    path = new_issue_path(folder, month)
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as out:
        out.write(issue_text(month, records))
    return path
