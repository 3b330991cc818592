"""What a provider (or the remote mail server behind it) writes reaches the record printable."""

from __future__ import annotations

import pytest

from newsletter.webhooks.common import text


@pytest.mark.parametrize(
    "diagnostic",
    [
        "550 \x1b]8;;https://evil.example\x07click\x1b]8;;\x07 no such user",
        "550 user\r\nunknown\x00\x7f",
        "550 \u202eresu on\u202c",  # right-to-left override
    ],
    ids=["osc-link", "crlf-nul-del", "bidi-override"],
)
def test_control_characters_never_reach_the_record(diagnostic: str) -> None:
    recorded = text(diagnostic)
    assert recorded.isprintable()
    assert "550" in recorded and "\x1b" not in recorded


def test_ordinary_text_is_kept_on_one_line() -> None:
    assert text("452  4.2.2   Mailbox\n full") == "452 4.2.2 Mailbox full"
    assert text(None) == "" and len(text("x" * 900)) == 500
