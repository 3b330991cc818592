from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from newsletter.errors import ProviderConfigError
from newsletter.messages import prepare_issue
from newsletter.providers import create_provider, installed_providers, load_provider
from newsletter.providers.null import NullProvider
from newsletter.providers.outbox import OutboxProvider
from newsletter.settings import Settings

from .conftest import make_recipient, make_rendered, write_settings

BUILT_INS = ["mailgun", "null", "outbox", "postmark", "resend", "sendgrid", "smtp"]


def test_built_ins_are_registered_through_the_entry_point_group() -> None:
    assert set(BUILT_INS) <= set(installed_providers())
    for name in BUILT_INS:
        assert load_provider(name).name == name


def test_unknown_provider_names_the_installed_ones() -> None:
    with pytest.raises(ProviderConfigError) as caught:
        load_provider("carrier-pigeon")
    message = str(caught.value)
    assert "no provider named 'carrier-pigeon'" in message
    for name in BUILT_INS:
        assert name in message


def test_unknown_provider_option_is_named(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, '[provider]\nname = "null"\nbatchsize = 10\n')
    with pytest.raises(ProviderConfigError, match=r"unknown setting \[provider\] batchsize"):
        create_provider(settings)


def test_batch_size_above_the_documented_limit_is_refused(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, '[provider]\nname = "resend"\nbatch_size = 101\n')
    with pytest.raises(ProviderConfigError, match="batch_size must be between 1 and 100"):
        create_provider(settings)


def test_null_provider_accepts_everything(settings: Settings) -> None:
    prepared = prepare_issue(make_rendered(), settings)
    messages = [prepared.message_for(make_recipient(n)) for n in range(5)]
    with NullProvider(settings, {}) as provider:
        results = provider.send_batch(messages)
    assert [(r.recipient_id, r.status) for r in results] == [(n, "accepted") for n in range(5)]


def test_outbox_writes_one_eml_per_message_and_an_index(settings: Settings) -> None:
    prepared = prepare_issue(make_rendered(), settings)
    messages = [prepared.message_for(make_recipient(n, name=f"Zoë <{n}>")) for n in (3, 1, 2)]
    with OutboxProvider(settings, {}) as provider:
        results = provider.send_batch(messages[:2])
        results += provider.send_batch(messages[2:])
    folder = settings.paths.build / "outbox" / "2021-03"
    assert all(result.status == "accepted" for result in results)
    assert sorted(p.name for p in folder.glob("*.eml")) == ["1.eml", "2.eml", "3.eml"]
    raw = (folder / "2.eml").read_bytes()
    assert raw == messages[2].as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    index = (folder / "index.html").read_text("utf-8")
    assert index.count('<a href="') == 3
    assert index.index('href="1.eml"') < index.index('href="2.eml"') < index.index('href="3.eml"')
    assert "Zoë &lt;2&gt;" in index  # decoded from RFC 2047 and HTML-escaped
    assert not list(folder.glob("*.tmp"))


def test_outbox_index_keeps_files_from_an_earlier_run(settings: Settings) -> None:
    prepared = prepare_issue(make_rendered(), settings)
    with OutboxProvider(settings, {}) as provider:
        provider.send_batch([prepared.message_for(make_recipient(1))])
    with OutboxProvider(settings, {}) as provider:
        provider.send_batch([prepared.message_for(make_recipient(2))])
    index = (settings.paths.build / "outbox" / "2021-03" / "index.html").read_text("utf-8")
    assert "reader1@example.net" in index and "reader2@example.net" in index
    assert "2 messages" in index
