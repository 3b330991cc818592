"""`newsletter doctor` against a real DNS server, real provider APIs and the real web app, all
on loopback: dnspython asks the test's UDP server, the providers' account endpoints are a
small HTTP server that checks the credential as the service would."""

from __future__ import annotations

import base64
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest
from click.testing import CliRunner

from newsletter import store
from newsletter.cli import main
from newsletter.doctor import DoctorOptions, DoctorReport, diagnose
from newsletter.web import WebApp

from .loopback import running
from .smtp_servers import SinkHandler, password_checker, smtp_server
from .test_provider_smtp import make_dkim_key
from .web_server import serving

DOMAIN = "practice-digest.org"
SECRET = "a-doctor-test-secret-0123456789"
GOOD_SPF = "v=spf1 include:spf.provider.test ~all"
GOOD_DMARC = "v=DMARC1; p=quarantine; rua=mailto:dmarc@practice-digest.org"


class Zone(socketserver.BaseRequestHandler):
    """Answers TXT queries from ``server.records`` (name -> TXT strings); NXDOMAIN otherwise."""

    def handle(self) -> None:
        data, sock = self.request
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        records: dict[str, list[str]] = self.server.records  # type: ignore[attr-defined]
        self.server.asked.append(name)  # type: ignore[attr-defined]
        if name in records:
            texts = []
            for value in records[name]:
                # A TXT string holds at most 255 bytes: long keys are split, as in real zones.
                pieces = [value[i : i + 200] for i in range(0, len(value), 200)] or [""]
                texts.append(" ".join(f'"{p}"' for p in pieces))
            reply.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", "TXT", texts))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(reply.to_wire(), self.client_address)


@contextmanager
def dns_server(records: dict[str, list[str]]) -> Iterator[tuple[str, list[str]]]:
    server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Zone)
    server.records = records  # type: ignore[attr-defined]
    server.asked = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", server.asked  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


# Each service's account endpoint, the header that carries the key, and the key's variable.
ACCOUNTS = {
    "resend": ("/domains", "Authorization", "RESEND_API_KEY"),
    "postmark": ("/server", "X-Postmark-Server-Token", "POSTMARK_SERVER_TOKEN"),
    "sendgrid": ("/v3/scopes", "Authorization", "SENDGRID_API_KEY"),
    "mailgun": (f"/v3/domains/{DOMAIN}", "Authorization", "MAILGUN_API_KEY"),
}
REPLIES = {
    "resend": {"data": [{"name": DOMAIN, "status": "verified"}]},
    "postmark": {"Name": "Digest", "ID": 1},
    "sendgrid": {"scopes": ["mail.send", "suppression.read"]},
    "mailgun": {"domain": {"name": DOMAIN, "state": "active"}},
}
GOOD_KEY = "key-good-0123456789"


def _expected_auth(provider: str) -> str:
    if provider == "mailgun":
        return "Basic " + base64.b64encode(f"api:{GOOD_KEY}".encode()).decode()
    if provider == "postmark":
        return GOOD_KEY
    return f"Bearer {GOOD_KEY}"


@contextmanager
def account_api(provider: str) -> Iterator[tuple[str, list[str]]]:
    path, header, _ = ACCOUNTS[provider]
    calls: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(f"{self.command} {self.path}")
            if self.path != path:
                return self._reply(404, {"message": "not found"})
            if self.headers.get(header) != _expected_auth(provider):
                return self._reply(401, {"message": "Invalid API key", "name": "validation_error"})
            self._reply(200, REPLIES[provider])

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with running(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url, calls


def _folder(
    tmp_path: Path, extra: str = "", web_url: str = "https://news.practice-digest.org"
) -> Path:
    (tmp_path / ".newsletter-secret").write_text(SECRET, "utf-8")
    config = tmp_path / "newsletter.toml"
    config.write_text(
        f'[newsletter]\nfrom_email = "digest@{DOMAIN}"\n'
        'postal_address = "Practice Digest, 4 Real Road, Bern 3000"\n'
        f'base_url = "https://{DOMAIN}"\n[web]\nurl = "{web_url}"\n' + extra,
        "utf-8",
    )
    return config


def _lines(report: DoctorReport, area: str) -> list[str]:
    return [f"{f.level} {f.message}" for f in report.findings if f.area == area]


def _records(dkim_record: str | None = None, **changes: list[str]) -> dict[str, list[str]]:
    records = {
        DOMAIN: [GOOD_SPF, "google-site-verification=abc"],
        f"_dmarc.{DOMAIN}": [GOOD_DMARC],
    }
    if dkim_record is not None:
        records[f"news._domainkey.{DOMAIN}"] = [dkim_record]
    for which, value in changes.items():
        name = {"spf": DOMAIN, "dmarc": f"_dmarc.{DOMAIN}"}[which]
        if value:
            records[name] = value
        else:
            del records[name]
    return records


@pytest.fixture
def resend_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    monkeypatch.setenv("RESEND_API_KEY", GOOD_KEY)
    key_path, record = make_dkim_key(tmp_path)
    (tmp_path / "dkim.txt").write_bytes(record)
    with account_api("resend") as (url, _):
        yield _folder(
            tmp_path,
            f'[provider]\nname = "resend"\nbase_url = "{url}"\n'
            f'[dkim]\nselector = "news"\nkey_file = "{key_path.name}"\n',
        )


def _diagnose(config: Path, records: dict[str, list[str]]) -> DoctorReport:
    with dns_server(records) as (nameserver, asked):
        report = diagnose(config, DoctorOptions(online=True, nameserver=nameserver, timeout=2))
    assert asked, "the checks never reached the test's DNS server"
    return report


def test_good_records_are_all_ok(resend_folder: Path) -> None:
    record = (resend_folder.parent / "dkim.txt").read_text()
    report = _diagnose(resend_folder, _records(record))
    dns_lines = _lines(report, "dns")
    assert f"ok SPF at {DOMAIN}: {GOOD_SPF}" in dns_lines
    assert f"ok DKIM key at news._domainkey.{DOMAIN} matches [dkim] key_file" in dns_lines
    assert f"ok DMARC at _dmarc.{DOMAIN}: policy quarantine" in dns_lines
    assert f"ok the provider sends for {DOMAIN} (aligned with From)" in dns_lines
    assert _lines(report, "provider")[-1].startswith("ok RESEND_API_KEY accepted; domains:")
    assert [f for f in report.findings if f.area == "dns" and f.level != "ok"] == []


def test_missing_dmarc_is_an_error(resend_folder: Path) -> None:
    record = (resend_folder.parent / "dkim.txt").read_text()
    report = _diagnose(resend_folder, _records(record, dmarc=[]))
    assert any(
        line.startswith(f"error no DMARC record at _dmarc.{DOMAIN}")
        for line in _lines(report, "dns")
    )
    assert report.errors


def test_spf_plus_all_is_an_error(resend_folder: Path) -> None:
    record = (resend_folder.parent / "dkim.txt").read_text()
    report = _diagnose(resend_folder, _records(record, spf=["v=spf1 ip4:192.0.2.1 +all"]))
    assert any(
        "ends in +all" in line and line.startswith("error") for line in _lines(report, "dns")
    )


def test_a_published_dkim_key_that_is_not_ours_is_an_error(
    resend_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _, foreign = make_dkim_key(other)
    report = _diagnose(resend_folder, _records(foreign.decode()))
    assert any(
        line.startswith(f"error the DKIM key at news._domainkey.{DOMAIN} is not the public half")
        for line in _lines(report, "dns")
    )


def test_an_unpublished_dkim_selector_is_an_error(resend_folder: Path) -> None:
    report = _diagnose(resend_folder, _records(None))
    assert any(
        line.startswith(f"error no DKIM key published at news._domainkey.{DOMAIN}")
        for line in _lines(report, "dns")
    )


@pytest.mark.parametrize("provider", sorted(ACCOUNTS))
@pytest.mark.parametrize("key", [GOOD_KEY, "key-wrong"], ids=["good-key", "bad-key"])
def test_provider_credentials_are_proved_by_a_harmless_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str, key: str
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    variable = ACCOUNTS[provider][2]
    monkeypatch.setenv(variable, key)
    with account_api(provider) as (url, calls):
        config = _folder(tmp_path, f'[provider]\nname = "{provider}"\nbase_url = "{url}"\n')
        with dns_server(_records()) as (nameserver, _):
            report = diagnose(config, DoctorOptions(online=True, nameserver=nameserver, timeout=2))
    assert calls == [f"GET {ACCOUNTS[provider][0]}"]  # one read, nothing sent
    verdict = [f for f in report.findings if f.area == "provider"][-1]
    if key == GOOD_KEY:
        assert verdict.level == "ok", verdict
        assert "accepted" in verdict.message
    else:
        assert verdict.level == "error", verdict
        assert f"the API refused {variable} (401" in verdict.message


def test_the_secret_in_two_places_that_differ_is_an_error_and_send_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _folder(tmp_path)
    monkeypatch.setenv("NEWSLETTER_SECRET", "another-secret-from-a-shell-0123")
    report = diagnose(config)
    (secret,) = [f for f in report.findings if f.area == "secret"]
    assert secret.level == "error"
    assert "hold different secrets" in secret.message
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)  # the same: fine, and said
    (secret,) = [f for f in diagnose(config).findings if f.area == "secret"]
    assert (
        secret.level == "ok"
        and "$NEWSLETTER_SECRET (the file holds the same one)" in secret.message
    )


def test_one_click_post_to_the_web_app_and_a_web_app_with_another_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    config = _folder(tmp_path)
    from newsletter.settings import load_settings

    settings = load_settings(config)
    store.open_store(settings.paths.database).close()
    with serving(WebApp(settings)) as base:
        config.write_text(config.read_text().replace("https://news.practice-digest.org", base))
        with dns_server(_records()) as (nameserver, _):
            report = diagnose(config, DoctorOptions(online=True, nameserver=nameserver, timeout=2))
    assert _lines(report, "unsubscribe") == [f"ok {base} answers a one-click POST with 200"]
    # Links must be https: the loopback URL is reported, whatever it answers.
    assert any("mail providers honour one-click" in m for m in _lines(report, "settings"))

    (tmp_path / ".newsletter-secret").write_text("the-web-app-has-another-secret-42", "utf-8")
    with serving(WebApp(load_settings(config))) as base2:
        (tmp_path / ".newsletter-secret").write_text(SECRET, "utf-8")
        config.write_text(config.read_text().replace(base, base2))
        with dns_server(_records()) as (nameserver, _):
            report = diagnose(config, DoctorOptions(online=True, nameserver=nameserver, timeout=2))
    (line,) = _lines(report, "unsubscribe")
    assert line.startswith("error") and "runs with a different secret" in line


def test_an_unreachable_web_app_is_skipped_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    config = _folder(tmp_path, web_url="https://127.0.0.1:9")  # discard port: nothing listens
    with dns_server(_records()) as (nameserver, _):
        report = diagnose(config, DoctorOptions(online=True, nameserver=nameserver, timeout=2))
    (line,) = _lines(report, "unsubscribe")
    assert line.startswith("skipped") and "not reachable from here" in line


def test_offline_doctor_through_the_cli_checks_settings_store_and_exits_1_on_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    monkeypatch.delenv("POSTMARK_SERVER_TOKEN", raising=False)
    config = _folder(tmp_path, '[provider]\nname = "postmark"\n', web_url="http://news.example.org")
    from newsletter.settings import load_settings

    store.open_store(load_settings(config).paths.database).close()
    result = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    assert result.exit_code == 1
    out = result.output
    assert "error    settings: unsubscribe links would start with http://news.example.org/" in out
    assert "error    provider: POSTMARK_SERVER_TOKEN is not set" in out
    assert "ok       secret: links are signed with the secret from" in out
    assert "schema version" in out and "integrity check ok" in out and "WAL mode" in out
    assert "GB free on the store's disk" in out

    broken = tmp_path / "broken.toml"
    broken.write_text('[schedule]\nwindow = "all day"\n', "utf-8")
    result = CliRunner().invoke(main, ["--config", str(broken), "doctor"])
    assert result.exit_code == 1
    assert "error    settings:" in result.output and "schedule.window" in result.output


@pytest.mark.parametrize("password", ["relay-password", "wrong"], ids=["good-login", "bad-login"])
def test_smtp_login_is_proved_without_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", password)
    handler = SinkHandler()
    with smtp_server(
        handler,
        auth_require_tls=False,
        authenticator=password_checker("newsletter", "relay-password"),
    ) as port:
        config = _folder(
            tmp_path,
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
            'security = "none"\nusername = "newsletter"\n',
        )
        with dns_server(_records()) as (nameserver, _):
            report = diagnose(config, DoctorOptions(online=True, nameserver=nameserver, timeout=2))
    verdict = [f for f in report.findings if f.area == "provider"][-1]
    assert handler.received == []  # nothing was sent
    if password == "relay-password":
        assert (verdict.level, verdict.message) == (
            "ok",
            f"127.0.0.1:{port} answered (none); logged in as 'newsletter'",
        )
    else:
        assert verdict.level == "error" and "refused the login for 'newsletter'" in verdict.message


def test_send_says_which_secret_it_signs_with_and_warns_when_two_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .sending_helpers import SECRET as FILE_SECRET
    from .sending_helpers import make_folder

    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    _, issue = make_folder(tmp_path, '[provider]\nname = "null"\n', 2)
    command = ["--config", str(tmp_path / "newsletter.toml"), "send", "--dry-run", str(issue)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    assert f"Signing secret: {tmp_path / '.newsletter-secret'}" in result.output
    assert "Warning" not in result.output

    monkeypatch.setenv("NEWSLETTER_SECRET", FILE_SECRET + "-but-another")
    result = CliRunner().invoke(main, command)
    assert "Signing secret: $NEWSLETTER_SECRET" in result.output
    assert "hold different secrets" in result.output
    assert result.output.count("Signing secret:") == 1  # once, at start


def test_an_smtp_envelope_sender_in_another_domain_is_not_aligned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    config = _folder(
        tmp_path,
        '[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = 9\nsecurity = "none"\n'
        'envelope_from = "bounces@mailer.elsewhere.test"\n',
    )
    with dns_server(_records()) as (nameserver, _):
        report = diagnose(config, DoctorOptions(online=True, nameserver=nameserver, timeout=2))
    assert any(
        line.startswith("warning [provider] envelope_from is at mailer.elsewhere.test, not aligned")
        for line in _lines(report, "dns")
    )


def test_a_postgres_store_is_checked_on_its_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    config = _folder(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", postgres_url)
    (missing,) = [f for f in diagnose(config).findings if f.area == "store"]
    assert missing.level == "error" and "there is no subscriber store" in missing.message
    store.open_store(postgres_url).close()
    (found,) = [f for f in diagnose(config).findings if f.area == "store"]
    assert found.level == "ok"
    assert found.message.endswith(f"PostgreSQL store, schema version {store.SCHEMA_VERSION}")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "postgresql://u:hunter2@127.0.0.1:1/x")
    (down,) = [f for f in diagnose(config).findings if f.area == "store"]
    assert down.level == "error" and "cannot connect" in down.message
    assert "hunter2" not in down.message
