from __future__ import annotations

import email
import email.policy
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from newsletter.errors import ProviderConfigError, ProviderError
from newsletter.messages import OutgoingMessage, prepare_issue
from newsletter.providers.smtp import PASSWORD_VARIABLE, SmtpProvider
from newsletter.settings import Settings

from .conftest import make_recipient, make_rendered, write_settings
from .smtp_servers import SinkHandler, password_checker, smtp_server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def provider_settings(root: Path, port: int, extra: str = "") -> Settings:
    table = f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\ntimeout = 5\n'
    return write_settings(root, table + extra)


def messages_for(settings: Settings, *recipients: Any) -> list[OutgoingMessage]:
    prepared = prepare_issue(make_rendered(), settings)
    return [prepared.message_for(recipient) for recipient in recipients]


@pytest.fixture
def sink() -> Iterator[SinkHandler]:
    yield SinkHandler()


def test_plain_smtp_delivers_each_message_with_its_own_envelope(
    tmp_path: Path, sink: SinkHandler
) -> None:
    with smtp_server(sink) as port:
        settings = provider_settings(tmp_path, port, 'security = "none"\n')
        messages = messages_for(settings, *(make_recipient(n) for n in range(1, 6)))
        with SmtpProvider(settings) as provider:
            results = provider.send_batch(messages)
    assert [r.status for r in results] == ["accepted"] * 5
    assert [r.recipient_id for r in results] == [1, 2, 3, 4, 5]
    assert results[0].provider_message_id.startswith("2.0.0 Ok: queued as Q")
    assert sink.ehlo_count == 1, "one connection reused for every message"
    assert [r.rcpt_tos for r in sink.received] == [[f"reader{n}@example.net"] for n in range(1, 6)]
    assert all(r.mail_from == "digest@example.org" for r in sink.received)
    parsed = email.message_from_bytes(sink.received[2].content, policy=email.policy.default)
    assert parsed["To"] == "Reader 3 <reader3@example.net>"
    assert sink.received[2].content == messages[2].as_bytes()


def _auth_server(sink: SinkHandler, server_tls: ssl.SSLContext, password: str) -> Any:
    """A server that requires STARTTLS, then AUTH as "newsletter" with ``password``."""
    return smtp_server(
        sink,
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=password_checker("newsletter", password),
    )


def test_starttls_with_auth(
    tmp_path: Path,
    sink: SinkHandler,
    server_tls: ssl.SSLContext,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_VARIABLE, "s3cret-pass")
    with _auth_server(sink, server_tls, "s3cret-pass") as port:
        extra = f'security = "starttls"\nusername = "newsletter"\nca_file = "{ca_file}"\n'
        settings = provider_settings(tmp_path, port, extra)
        with SmtpProvider(settings) as provider:
            results = provider.send_batch(messages_for(settings, make_recipient(1)))
    assert results[0].status == "accepted"
    assert len(sink.received) == 1


def test_wrong_password_stops_the_send_without_leaking_it(
    tmp_path: Path,
    sink: SinkHandler,
    server_tls: ssl.SSLContext,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_VARIABLE, "wrong-pass-value")
    with _auth_server(sink, server_tls, "right") as port:
        extra = f'username = "newsletter"\nca_file = "{ca_file}"\n'
        provider = SmtpProvider(provider_settings(tmp_path, port, extra))
        with pytest.raises(ProviderError, match="refused the login") as caught:
            provider.open()
        provider.close()
    assert "wrong-pass-value" not in str(caught.value)
    assert "wrong-pass-value" not in repr(provider)
    assert sink.received == []


def test_untrusted_certificate_is_a_config_error(
    tmp_path: Path, sink: SinkHandler, server_tls: ssl.SSLContext
) -> None:
    with smtp_server(sink, tls_context=server_tls, require_starttls=True) as port:
        provider = SmtpProvider(provider_settings(tmp_path, port))
        with pytest.raises(ProviderConfigError, match="cannot be verified"):
            provider.open()
        provider.close()


def test_implicit_tls(
    tmp_path: Path, sink: SinkHandler, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    with smtp_server(sink, tls_context=server_tls, implicit_tls=True) as port:
        settings = provider_settings(tmp_path, port, f'security = "tls"\nca_file = "{ca_file}"\n')
        with SmtpProvider(settings) as provider:
            results = provider.send_batch(messages_for(settings, make_recipient(1)))
    assert results[0].status == "accepted"
    assert len(sink.received) == 1


def test_missing_password_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    settings = provider_settings(tmp_path, 2525, 'username = "someone"\n')
    with pytest.raises(ProviderConfigError, match=PASSWORD_VARIABLE):
        SmtpProvider(settings)


def test_missing_host_is_named(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, '[provider]\nname = "smtp"\n')
    with pytest.raises(ProviderConfigError, match=r"\[provider\] host"):
        SmtpProvider(settings)


def test_reply_codes_map_to_temporary_and_permanent(tmp_path: Path) -> None:
    handler = SinkHandler(
        rcpt_replies={"busy": "450 4.2.1 Mailbox busy", "gone": "550 5.1.1 User unknown"},
        data_replies={"later": "451 4.3.0 Try again later", "spam": "554 5.7.1 Rejected"},
    )
    recipients = [
        make_recipient(1),
        make_recipient(2, email="busy@example.net"),
        make_recipient(3, email="gone@example.net"),
        make_recipient(4, email="later@example.net"),
        make_recipient(5, email="spam@example.net"),
        make_recipient(6),
    ]
    with smtp_server(handler) as port:
        settings = provider_settings(tmp_path, port, 'security = "none"\n')
        with SmtpProvider(settings) as provider:
            results = provider.send_batch(messages_for(settings, *recipients))
    assert [r.status for r in results] == [
        "accepted",
        "temporary",
        "permanent",
        "temporary",
        "permanent",
        "accepted",
    ]
    assert results[1].reason == "RCPT TO: 450 4.2.1 Mailbox busy"
    assert results[2].reason == "RCPT TO: 550 5.1.1 User unknown"
    assert results[3].reason == "DATA: 451 4.3.0 Try again later"
    assert results[4].reason == "DATA: 554 5.7.1 Rejected"
    # The refused recipients never reached DATA; the rest were each delivered once.
    delivered = [r.rcpt_tos[0] for r in handler.received]
    assert delivered.count("reader1@example.net") == 1
    assert "busy@example.net" not in delivered and "gone@example.net" not in delivered


def test_a_dropped_connection_is_reopened_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    handler = SinkHandler(drop_after_each_message=True)
    with smtp_server(handler) as port:
        settings = provider_settings(tmp_path, port, 'security = "none"\n')
        messages = messages_for(settings, *(make_recipient(n) for n in range(1, 5)))
        with SmtpProvider(settings) as provider:
            results = provider.send_batch(messages)
            session_connects = provider._sessions[0].connects
    assert [r.status for r in results] == ["accepted"] * 4
    assert sorted(r.rcpt_tos[0] for r in handler.received) == [
        f"reader{n}@example.net" for n in range(1, 5)
    ]
    assert session_connects == 4


def test_a_connection_lost_during_data_is_uncertain_and_not_resent(tmp_path: Path) -> None:
    handler = SinkHandler(vanish_during_data_for="reader2@")
    with smtp_server(handler) as port:
        settings = provider_settings(tmp_path, port, 'security = "none"\n')
        messages = messages_for(settings, *(make_recipient(n) for n in range(1, 4)))
        with SmtpProvider(settings) as provider:
            results = provider.send_batch(messages)
    assert [r.status for r in results] == ["accepted", "temporary", "accepted"]
    assert results[1].uncertain
    assert "may have accepted" in results[1].reason
    delivered = [r.rcpt_tos[0] for r in handler.received]
    assert delivered.count("reader2@example.net") == 1


def test_unreachable_relay_reports_temporary_failures(tmp_path: Path) -> None:
    handler = SinkHandler()
    with smtp_server(handler) as port:
        settings = provider_settings(tmp_path, port, 'security = "none"\n')
        messages = messages_for(settings, make_recipient(1), make_recipient(2))
        provider = SmtpProvider(settings)
        provider.open()
    # The server is gone now: the open connection is dead and reconnecting fails.
    results = provider.send_batch(messages)
    provider.close()
    assert [r.status for r in results] == ["temporary", "temporary"]
    assert "cannot connect" in results[0].reason


def test_parallel_connections_share_the_batch(tmp_path: Path) -> None:
    handler = SinkHandler(delay=0.05)
    with smtp_server(handler) as port:
        settings = provider_settings(tmp_path, port, 'security = "none"\nconnections = 4\n')
        messages = messages_for(settings, *(make_recipient(n) for n in range(1, 17)))
        with SmtpProvider(settings) as provider:
            started = time.perf_counter()
            results = provider.send_batch(messages)
            elapsed = time.perf_counter() - started
    assert [r.recipient_id for r in results] == list(range(1, 17))
    assert all(r.status == "accepted" for r in results)
    assert len({r.peer for r in handler.received}) == 4
    # Sixteen 50 ms replies take 0.8 s on one connection; four connections need about 0.2 s.
    assert elapsed < 0.6


def make_dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import base64

    path = tmp_path / "dkim.pem"
    path.write_bytes(pem)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_dkim_signature_verifies_and_covers_list_unsubscribe(tmp_path: Path) -> None:
    key_path, record = make_dkim_key(tmp_path)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"news._domainkey.example.org."
        return record

    handler = SinkHandler()
    with smtp_server(handler) as port:
        extra = f'security = "none"\n[dkim]\nselector = "news"\nkey_file = "{key_path}"\n'
        settings = provider_settings(tmp_path, port, extra)
        with SmtpProvider(settings) as provider:
            results = provider.send_batch(messages_for(settings, make_recipient(1)))
    assert results[0].status == "accepted"
    signed = handler.received[0].content
    assert signed.startswith(b"DKIM-Signature:")
    assert dkim.verify(signed, dnsfunc=dns)
    header = email.message_from_bytes(signed, policy=email.policy.default)["DKIM-Signature"]
    signed_names = "".join(str(header).split()).split("h=")[1].split(";")[0].lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "subject"} <= set(signed_names)
    tampered = signed.replace(b"unsubscribe/1?", b"unsubscribe/2?", 1)
    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dns)
