"""One rule for per-recipient fields: the preview, the archive and the sent message agree."""

from __future__ import annotations

import email
import email.policy

import pytest

from newsletter.messages import PreparedIssue
from newsletter.recipient_fields import (
    NAME_FALLBACK,
    PLACEHOLDERS,
    fill,
    known_fields,
    recipient_values,
)

from .conftest import SAMPLE_HTML, SAMPLE_TEXT, make_recipient

HOSTILE_NAMES = [
    "",
    "Ann",
    'Ann <b>"A&B"</b>',
    "O'Brien",
    "[[unsubscribe_url]]",
    "[[email]] and [[name]]",
    "Zoë — Ünïcode",
]


def _sent_parts(prepared: PreparedIssue, name: str) -> tuple[str, str]:
    raw = prepared.message_for(make_recipient(7, name=name)).as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    # Mail is CRLF on the wire; the rendered issue uses \n.
    text, html = (
        str(p.get_content()).replace("\r\n", "\n") for p in parsed.walk() if not p.is_multipart()
    )
    return text, html


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_the_sent_message_is_the_preview_fill_of_the_same_recipient(
    prepared: PreparedIssue, name: str
) -> None:
    recipient = make_recipient(7, name=name)
    values = recipient_values(recipient.name, recipient.email, recipient.unsubscribe_url)
    text, html = _sent_parts(prepared, name)
    assert text == fill(SAMPLE_TEXT, values, html=False)
    assert html == fill(SAMPLE_HTML, values, html=True)


def test_a_value_that_looks_like_a_placeholder_is_never_expanded() -> None:
    values = recipient_values("[[unsubscribe_url]]", "a@example.org", "https://x.example/u/1")
    assert fill("Dear [[name]], [[email]]", values, html=False) == (
        "Dear [[unsubscribe_url]], a@example.org"
    )


def test_no_name_gets_the_fallback_everywhere() -> None:
    assert recipient_values("", "a@example.org", "u")["name"] == NAME_FALLBACK
    assert fill("Dear [[name]]", recipient_values("", "a", "u"), html=True) == "Dear reader"


def test_unknown_placeholders_are_left_for_check_to_report() -> None:
    assert fill("[[other]] [[name]]", {"name": "Ann"}, html=False) == "[[other]] Ann"


def test_known_fields_names_every_placeholder() -> None:
    text = known_fields()
    assert all(placeholder in text for placeholder in PLACEHOLDERS.values())
    assert text.endswith(" and [[unsubscribe_url]]")
