"""Header text displays as written: text that looks like an RFC 2047 encoded word is itself
encoded (else "=?utf-8?b?UGF5UGFs?=" displays as "PayPal"), and controls never reach a header.
Checked on what a real SMTP server receives and what the JSON APIs are sent."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from newsletter.errors import MessageError, SettingsError
from newsletter.messages import prepare_issue
from newsletter.providers.postmark import PostmarkProvider
from newsletter.providers.smtp import SmtpProvider
from newsletter.settings import load_settings

from .conftest import make_recipient, make_rendered, write_settings
from .http_helpers import CREDENTIALS, http_settings
from .smtp_servers import SinkHandler, smtp_server

PAYPAL_B = "=?utf-8?b?UGF5UGFs?="
PAYPAL_Q = "=?utf-8?q?PayPal?= support"
IMPOSTOR = f"Security team {PAYPAL_B}"


def decoded(value: str) -> str:
    return str(make_header(decode_header(value)))


def test_encoded_words_in_subject_sender_and_name_display_literally(tmp_path: Path) -> None:
    sink = SinkHandler()
    with smtp_server(sink) as port:
        settings = write_settings(
            tmp_path,
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
            'security = "none"\ntimeout = 5\n',
        )
        settings = dataclasses.replace(settings, from_name=IMPOSTOR)
        prepared = prepare_issue(make_rendered(subject=PAYPAL_B), settings)
        messages = [prepared.message_for(make_recipient(1, name=PAYPAL_Q))]
        with SmtpProvider(settings) as provider:
            assert [r.status for r in provider.send_batch(messages)] == ["accepted"]
    received = email.message_from_bytes(sink.received[0].content, policy=email.policy.default)
    assert received["Subject"] == PAYPAL_B
    assert received["From"].addresses[0].display_name == IMPOSTOR
    assert received["To"].addresses[0].display_name == PAYPAL_Q
    assert received["To"].addresses[0].addr_spec == "reader1@example.net"


def test_ordinary_ascii_subjects_stay_plain(tmp_path: Path) -> None:
    settings = write_settings(tmp_path)
    raw = prepare_issue(make_rendered(subject="Price = ? and more"), settings)
    message = raw.message_for(make_recipient(1)).as_bytes()
    assert b"\r\nSubject: Price = ? and more\r\n" in message


def test_json_apis_get_names_and_subjects_that_display_literally(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable, token = CREDENTIALS["postmark"]
    monkeypatch.setenv(variable, token)
    httpserver.expect_request("/email/batch").respond_with_json(
        [{"ErrorCode": 0, "Message": "OK", "MessageID": "m1"}]
    )
    settings = http_settings(tmp_path, "postmark", httpserver)
    prepared = prepare_issue(make_rendered(subject=PAYPAL_B), settings)
    with PostmarkProvider(settings) as provider:
        provider.send_batch([prepared.message_for(make_recipient(1, name=PAYPAL_Q))])
    [entry] = json.loads(httpserver.log[0][0].get_data())
    assert decoded(entry["Subject"]) == PAYPAL_B
    to = email.message_from_string(f"To: {entry['To']}\n\n", policy=email.policy.default)
    assert to["To"].addresses[0].display_name == PAYPAL_Q


@pytest.mark.parametrize("character", ["\x7f", "\u2028", "\x85", "\x1b", "\x00"])
def test_controls_in_a_subject_never_reach_the_header(tmp_path: Path, character: str) -> None:
    settings = write_settings(tmp_path)
    with pytest.raises(MessageError, match=f"U\\+{ord(character):04X}"):
        prepare_issue(make_rendered(subject=f"Rup{character}ture"), settings)


@pytest.mark.parametrize("escape", ["\\u2028", "\\u0085", "\\u007f"])
def test_controls_in_the_sender_name_are_refused_in_the_settings(
    tmp_path: Path, escape: str
) -> None:
    path = tmp_path / "newsletter.toml"
    path.write_text(f'[newsletter]\nfrom_name = "Digest{escape}x"\n', "utf-8")
    with pytest.raises(SettingsError, match=r"newsletter\.from_name: must be one line"):
        load_settings(path)
