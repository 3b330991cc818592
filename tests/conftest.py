"""Shared fixtures. ``RenderedIssue`` stands in for newsletter.render's until that lands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from newsletter.messages import PreparedIssue, Recipient, prepare_issue
from newsletter.settings import Settings, load_settings


@dataclass(frozen=True)
class IssueStandIn:
    month: str


@dataclass(frozen=True)
class RenderedIssue:
    issue: IssueStandIn
    subject: str
    html: str
    text: str


SAMPLE_HTML = (
    '<!doctype html><html><head><meta charset="utf-8"></head><body>'
    '<p style="font-family:Georgia,serif;color:#1d1d1b">Dear [[name]],</p>'
    + '<p style="margin:0 0 12px 0;line-height:1.5">Ünïcode — “quoted” research. </p>'
    * 40
    + '<p>Sent to [[email]]. <a href="[[unsubscribe_url]]">Unsubscribe</a></p>'
    "</body></html>"
)
SAMPLE_TEXT = (
    "Dear [[name]],\n\n"
    + "A summary line of the research, with ünïcode — and dashes.\n" * 20
    + "\nSent to [[email]]. Unsubscribe: [[unsubscribe_url]]\n"
)


def make_rendered(
    *, subject: str = "March 2021: what helps", html: str = SAMPLE_HTML, text: str = SAMPLE_TEXT
) -> RenderedIssue:
    return RenderedIssue(IssueStandIn("2021-03"), subject, html, text)


def make_recipient(
    number: int = 1, *, name: str | None = None, email: str | None = None
) -> Recipient:
    return Recipient(
        id=number,
        email=email or f"reader{number}@example.net",
        name=f"Reader {number}" if name is None else name,
        unsubscribe_url=f"https://digest.example.org/unsubscribe/{number}?t=tok{number}&l=x",
    )


def write_settings(root: Path, extra: str = "") -> Settings:
    path = root / "newsletter.toml"
    path.write_text(
        "[newsletter]\n"
        'name = "Practice Research Digest"\n'
        'from_email = "digest@example.org"\n'
        'from_name = "Dr. Émilie Research"\n'
        'reply_to = "editor@example.org"\n' + extra,
        encoding="utf-8",
    )
    return load_settings(path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return write_settings(tmp_path)


@pytest.fixture
def prepared(settings: Settings) -> PreparedIssue:
    return prepare_issue(make_rendered(), settings)
