"""Every settings table is checked when newsletter.toml is read, and every URL is a URL: a
wrong value stops at the file and key, never at each recipient of a send."""

from __future__ import annotations

import email
import email.policy
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter import store
from newsletter.cli import main
from newsletter.errors import SettingsError
from newsletter.messages import prepare_issue
from newsletter.providers.postmark import PostmarkProvider

from .conftest import make_recipient, make_rendered, write_settings
from .sending_helpers import make_folder


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            '[web]\nurll = "https://news.example.org"\n',
            "web.urll: unknown key; [web] takes: confirmations, full_ip, max_pending",
        ),
        (
            '[sending]\nunsubscribe_mail = "x@example.org"\n',
            "sending.unsubscribe_mail: unknown key; [sending] takes: unsubscribe_mailto",
        ),
        ('[web]\nurl = "https://news.example.org/a b"\n', "web.url: must be an http(s) URL"),
        ('[web]\nurl = "https://news.example.org/\\"x"\n', "it contains '\"'"),
        ('[web]\nurl = "https://news.example.org/\'x"\n', 'it contains "\'"'),
        ('[web]\nurl = "https://news.example.org/?a=b"\n', "takes no ? or #"),
        ('[web]\nurl = "news.example.org"\n', "must start with https:// or http://"),
        ("[web]\nurl = 3\n", "web.url: must be a string"),
        ('base_url = "https://digest.example.org/a b"\n', "newsletter.base_url"),
        ('[style]\nlogo_url = "javascript:alert(1)"\n', "not with javascript:"),
        ('[style]\nlogo_url = "data:image/png;base64,AAAA"\n', "not with data:"),
        ('[style]\nlogo_url = "https://cdn.example.org/logo 1.png"\n', "style.logo_url"),
        ('[style]\nlogo_url = "https://cdn.example.org/%zz.png"\n', "% is not followed"),
        (
            '[sending]\nunsubscribe_mailto = "leave@example.org>, <https://evil.example/x"\n',
            "sending.unsubscribe_mailto",
        ),
        (
            '[sending]\nunsubscribe_mailto = "mailto:leave@example.org?subject=x>, <https://evil"\n',
            "the part after ? may hold only URL characters",
        ),
        ("[sending]\nunsubscribe_mailto = 1\n", "sending.unsubscribe_mailto: must be a string"),
    ],
    ids=[
        "web-unknown-key",
        "sending-unknown-key",
        "web-url-space",
        "web-url-double-quote",
        "web-url-apostrophe",
        "web-url-query",
        "web-url-no-scheme",
        "web-url-not-text",
        "base-url-space",
        "logo-javascript",
        "logo-data",
        "logo-space",
        "logo-bad-escape",
        "mailto-second-url",
        "mailto-query-second-url",
        "mailto-not-text",
    ],
)
def test_a_wrong_value_is_refused_with_the_file_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        write_settings(tmp_path, table)
    assert str(caught.value).startswith(f"{tmp_path / 'newsletter.toml'}: ")
    assert message in str(caught.value)


def test_good_values_are_kept(tmp_path: Path) -> None:
    settings = write_settings(
        tmp_path,
        '[web]\nurl = "https://news.example.org:8443/digest/"\n'
        '[style]\nlogo_url = "https://cdn.example.org/logo.png?v=2"\n'
        '[sending]\nunsubscribe_mailto = "leave@lists.example.org?subject=leave%20now"\n',
    )
    assert settings.section("web")["url"] == "https://news.example.org:8443/digest"
    assert settings.style.logo_url == "https://cdn.example.org/logo.png?v=2"
    message = prepare_issue(make_rendered(), settings).message_for(make_recipient(1))
    header = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    urls = str(header["List-Unsubscribe"]).split(", ")
    assert urls == [
        f"<{message.recipient.unsubscribe_url}>",
        "<mailto:leave@lists.example.org?subject=leave%20now>",
    ]


def test_a_provider_base_url_is_a_url_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "pm-test")
    settings = write_settings(
        tmp_path, '[provider]\nname = "postmark"\nbase_url = "https://api.example.org/ x"\n'
    )
    with pytest.raises(SettingsError, match=r"provider\.base_url: must be an http"):
        PostmarkProvider(settings)


def test_a_send_with_a_broken_web_url_stops_before_anyone_is_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, issue = make_folder(tmp_path, '[provider]\nname = "outbox"\n', 3)
    toml = tmp_path / "newsletter.toml"
    toml.write_text(toml.read_text() + '[web]\nurl = "https://news.example.org/sub scribe"\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["send", "--yes", str(issue)])
    assert result.exit_code == 1
    assert f"Error: {toml}: web.url: must be an http(s) URL" in result.output
    assert "it contains a space" in result.output
    assert not (settings.paths.build / "outbox").exists()
    with closing(store.open_store(settings.paths.database)) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        journal = [name for (name,) in rows if "journal" in name or "send" in name]
        for table in journal:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
