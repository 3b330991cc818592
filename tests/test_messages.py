from __future__ import annotations

import email
import email.policy
import json
import re
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from newsletter.errors import MessageError
from newsletter.messages import PreparedIssue, Recipient, check_line_lengths, prepare_issue
from newsletter.settings import Settings, load_settings

from .conftest import make_recipient, make_rendered, write_settings


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def contents(message: EmailMessage) -> tuple[str, str]:
    """The decoded text and HTML parts, with line ends as the renderer wrote them."""
    text, html = (part.get_content().replace("\r\n", "\n") for part in message.iter_parts())
    return text, html


def display_name(message: EmailMessage) -> str:
    """The To header's display name, decoded per RFC 2047.

    The address parser of email.policy.default keeps the folding space between two adjacent
    encoded words (RFC 2047 6.2 says to drop it; the stdlib's own output fails the same way),
    so the phrase is decoded with email.header, which follows the RFC.
    """
    raw = next(str(value) for key, value in message.raw_items() if key.lower() == "to")
    if raw.startswith('"'):
        return parseaddr(raw)[0]
    return str(make_header(decode_header(raw.rpartition(" <")[0])))


def assert_wire_format(raw: bytes) -> None:
    assert raw.isascii(), "the message must be 7-bit clean"
    assert b"\n" not in raw.replace(b"\r\n", b""), "every line must end in CRLF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "no bare CR"
    check_line_lengths(raw)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_every_required_header_is_present_and_correct(prepared: PreparedIssue) -> None:
    recipient = make_recipient(7)
    message = prepared.message_for(recipient)
    raw = message.as_bytes()
    assert_wire_format(raw)
    parsed = parse(raw)

    assert parsed["From"] == '"Dr. Émilie Research" <digest@example.org>'
    assert parseaddr(str(parsed["To"])) == ("Reader 7", "reader7@example.net")
    assert parsed["Reply-To"] == "editor@example.org"
    assert parsed["Subject"] == "March 2021: what helps"
    assert parsedate_to_datetime(str(parsed["Date"])).tzinfo is not None
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Message-ID"] == message.message_id
    assert re.fullmatch(r"<[^<>@\s]+@example\.org>", message.message_id)
    assert parsed["List-Id"] == ("Practice Research Digest <practice-research-digest.example.org>")
    assert parsed["List-Unsubscribe"] == (
        "<https://digest.example.org/unsubscribe/7?t=tok7&l=x>, "
        "<mailto:unsubscribe@example.org?subject=unsubscribe>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Each header once only.
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
        assert len(parsed.get_all(name) or []) == 1, name


def test_body_is_multipart_alternative_text_first_html_last(prepared: PreparedIssue) -> None:
    parsed = parse(prepared.message_for(make_recipient(3)).as_bytes())
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    text, html = contents(parsed)
    assert text.startswith("Dear Reader 3,\n")
    assert "Sent to reader3@example.net. Unsubscribe: " in text
    assert "https://digest.example.org/unsubscribe/3?t=tok3&l=x" in text
    assert "Ünïcode — “quoted” research." in html
    assert "[[" not in text and "[[" not in html


def test_values_are_html_escaped_in_html_and_raw_in_text(prepared: PreparedIssue) -> None:
    recipient = make_recipient(4, name='Ann <b>"A&B"</b>')
    parsed = parse(prepared.message_for(recipient).as_bytes())
    text, html = contents(parsed)
    assert 'Dear Ann <b>"A&B"</b>,' in text
    assert "Dear Ann &lt;b&gt;&quot;A&amp;B&quot;&lt;/b&gt;," in html
    assert 'href="https://digest.example.org/unsubscribe/4?t=tok4&amp;l=x"' in html


def test_empty_name_is_filled_with_reader(prepared: PreparedIssue) -> None:
    message = prepared.message_for(make_recipient(5, name=""))
    parsed = parse(message.as_bytes())
    assert parsed["To"] == "reader5@example.net"
    assert contents(parsed)[0].startswith("Dear reader,")
    assert message.text.startswith("Dear reader,") and "Dear reader," in message.html


def test_non_ascii_names_and_subjects_are_rfc2047_encoded(settings: Settings) -> None:
    prepared = prepare_issue(
        make_rendered(subject="Forschung im März — “Übersicht” " * 4), settings
    )
    recipient = make_recipient(6, name="Zoë Ångström-Łukasiewicz 山田")
    raw = prepared.message_for(recipient).as_bytes()
    assert_wire_format(raw)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?b?" in head
    parsed = parse(raw)
    assert parsed["Subject"] == "Forschung im März — “Übersicht” " * 4
    assert display_name(parsed) == "Zoë Ångström-Łukasiewicz 山田"
    assert parsed["From"].addresses[0].display_name == "Dr. Émilie Research"


@pytest.mark.parametrize(
    "name",
    ["Eve\r\nBcc: victim@example.com", "Eve\nX-Injected: 1", "Eve\r"],
    ids=["crlf", "lf", "cr"],
)
def test_name_with_line_break_is_refused(prepared: PreparedIssue, name: str) -> None:
    with pytest.raises(MessageError, match="line break"):
        prepared.message_for(make_recipient(8, name=name))


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: x@example.com", "Hi\nthere"], ids=["crlf", "lf"])
def test_subject_with_line_break_is_refused(settings: Settings, subject: str) -> None:
    with pytest.raises(MessageError, match="subject contains a line break"):
        prepare_issue(make_rendered(subject=subject), settings)


@pytest.mark.parametrize(
    "address", ["a b@example.com", "a@b@example.com", "zoë@example.com", "<a@example.com>"]
)
def test_unusable_addresses_are_refused(prepared: PreparedIssue, address: str) -> None:
    with pytest.raises(MessageError, match="not a plain ASCII email address"):
        prepared.message_for(make_recipient(9, email=address))


def test_unsubscribe_url_must_be_https(prepared: PreparedIssue) -> None:
    recipient = Recipient(1, "a@example.com", "A", "http://digest.example.org/u/1")
    with pytest.raises(MessageError, match="https://"):
        prepared.message_for(recipient)


def test_message_ids_differ_per_recipient_and_issue(settings: Settings) -> None:
    march = prepare_issue(make_rendered(), settings)
    april_rendered = make_rendered()
    april = prepare_issue(
        type(april_rendered)(type(april_rendered.issue)("2021-04"), "April", "x", "y"), settings
    )
    ids = {march.message_for(make_recipient(n)).message_id for n in range(50)}
    ids |= {april.message_for(make_recipient(n)).message_id for n in range(50)}
    assert len(ids) == 100
    keys = {march.message_for(make_recipient(n)).idempotency_key for n in range(3)}
    assert keys == {f"practice-research-digest.example.org/2021-03/{n}" for n in range(3)}


def test_very_long_lines_are_wrapped_by_the_transfer_encoding(settings: Settings) -> None:
    html = "<p>" + "x" * 5000 + " [[name]] " + "é" * 3000 + "</p>"
    prepared = prepare_issue(make_rendered(html=html, text="[[unsubscribe_url]]"), settings)
    long_name = "N" * 400
    raw = prepared.message_for(make_recipient(1, name=long_name)).as_bytes()
    assert_wire_format(raw)
    body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(len(line) for line in body_lines) <= 76
    text, html_out = contents(parse(raw))
    assert html_out == html.replace("[[name]]", long_name)
    assert text == "https://digest.example.org/unsubscribe/1?t=tok1&l=x"


def test_mailto_comes_from_the_sending_table(tmp_path: Path) -> None:
    settings = write_settings(
        tmp_path, '[sending]\nunsubscribe_mailto = "leave@lists.example.org"\n'
    )
    message = prepare_issue(make_rendered(), settings).message_for(make_recipient(2))
    assert message.list_unsubscribe.endswith(", <mailto:leave@lists.example.org>")
    assert parse(message.as_bytes())["List-Unsubscribe"] == message.list_unsubscribe


def test_reply_to_is_left_out_when_not_set(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.toml"
    path.write_text('[newsletter]\nname = "Digest"\nfrom_name = "The Digest"\n', encoding="utf-8")
    settings = load_settings(path)
    parsed = parse(
        prepare_issue(make_rendered(), settings).message_for(make_recipient()).as_bytes()
    )
    assert "Reply-To" not in parsed
    assert parsed["From"] == "The Digest <digest@example.org>"


def test_api_fields_match_the_mime_message(prepared: PreparedIssue) -> None:
    message = prepared.message_for(make_recipient(11, name="Bo & Co"))
    text, html = contents(parse(message.as_bytes()))
    assert message.text == text
    assert message.html == html
    assert message.api_headers()["List-Unsubscribe"] == message.list_unsubscribe


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=80
)


@hypothesis_settings(max_examples=100, deadline=None)
@given(name=names, token=st.from_regex(r"[A-Za-z0-9._~%-]{1,120}", fullmatch=True))
def test_any_name_round_trips_through_the_standard_parser(
    prepared_for_hypothesis: PreparedIssue, name: str, token: str
) -> None:
    url = f"https://digest.example.org/u/{token}"
    recipient = Recipient(42, "someone@example.net", name, url)
    raw = prepared_for_hypothesis.message_for(recipient).as_bytes()
    assert_wire_format(raw)
    parsed = parse(raw)
    name = name.strip()  # surrounding spaces are not part of a display name
    if name:
        assert display_name(parsed) == name
    text, html = contents(parsed)
    shown = name or "reader"
    assert text.startswith(f"Dear {shown},")
    assert f"Unsubscribe: {url}" in text
    assert f'href="{url}"' in html
    assert (
        parsed["List-Unsubscribe"]
        == f"<{url}>, <mailto:unsubscribe@example.org?subject=unsubscribe>"
    )


@hypothesis_settings(max_examples=200, deadline=None)
@given(name=names, token=st.from_regex(r"[A-Za-z0-9._~%&'=?-]{1,80}", fullmatch=True))
def test_json_values_are_the_values_as_json(
    prepared_for_hypothesis: PreparedIssue, name: str, token: str
) -> None:
    recipient = Recipient(7, "o'neil&co@example.net", name, f"https://example.org/u?{token}")
    message = prepared_for_hypothesis.message_for(recipient)
    decoded = [json.loads(literal) for literal in message.json_values()]
    assert decoded == [*message.values("text").values(), *message.values("html").values()]
    assert all(literal.isascii() for literal in message.json_values())
    # The pieces of the filled bodies still decode to the filled bodies.
    assert json.loads(b"".join(message.html_json())) == message.html
    assert json.loads(b"".join(message.text_json())) == message.text


@pytest.fixture(scope="module")
def prepared_for_hypothesis(tmp_path_factory: pytest.TempPathFactory) -> PreparedIssue:
    settings = write_settings(tmp_path_factory.mktemp("hyp"))
    return prepare_issue(make_rendered(), settings)


def test_a_sample_of_a_large_run_is_valid(prepared: PreparedIssue) -> None:
    for number in range(0, 5000, 97):
        raw = prepared.message_for(make_recipient(number)).as_bytes()
        assert_wire_format(raw)
        parsed = parse(raw)
        assert not parsed.defects
        assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
        assert f"reader{number}@example.net" in contents(parsed)[0]
