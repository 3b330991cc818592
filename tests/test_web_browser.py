"""The web endpoints in headless Chromium at a phone's width, clicked as a person would."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.settings import Settings
from newsletter.store import Status
from newsletter.web import WebApp

from .cdp import Browser
from .web_server import add, current, local, serving, settled, signer_for, web_settings

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return web_settings(tmp_path, monkeypatch)


def test_open_an_unsubscribe_link_click_confirm_and_see_the_done_page(settings: Settings) -> None:
    ana = add(settings, "ana@example.org", name="Ana")
    token = signer_for(settings).unsubscribe_token(ana.id)
    with serving(WebApp(settings)) as base, Browser(width=375) as chromium:
        chromium.open(f"{base}/unsubscribe/{token}")
        assert "Unsubscribe from" in chromium.text("h1")
        # Opening the page (as a mail scanner would) changed nothing.
        assert current(settings, ana.id).status is Status.ACTIVE
        fits = chromium.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert fits is True, "the page scrolls sideways at 375 px"
        chromium.click("#confirm-unsubscribe")
        assert chromium.text("#outcome") == "You are unsubscribed"
        assert "ana@example.org" in chromium.text("main")
        assert chromium.url == f"{base}/unsubscribe/{token}"  # no redirect
    stored = current(settings, ana.id)
    assert stored.status is Status.UNSUBSCRIBED
    assert (stored.status_source, stored.status_reason) == ("web", "unsubscribe page")


def test_choose_fewer_topics_instead_of_unsubscribing(settings: Settings) -> None:
    ana = add(settings, "ana@example.org")
    token = signer_for(settings).unsubscribe_token(ana.id)
    keep = "Empathy"
    with serving(WebApp(settings)) as base, Browser(width=375) as chromium:
        chromium.open(f"{base}/unsubscribe/{token}")
        checked = chromium.evaluate(
            "[].filter.call(document.querySelectorAll('input[name=topic]'), e => e.checked).length"
        )
        assert checked == len(settings.taxonomy.topics)  # empty topics: every topic
        chromium.evaluate(
            "document.querySelectorAll('input[name=topic]').forEach("
            f"e => {{ if (e.value !== {keep!r}) e.click(); }})"
        )
        chromium.click("#save-topics")
        assert chromium.text("#outcome") == "Your topics are saved"
        assert keep in chromium.text("main")
    stored = current(settings, ana.id)
    assert (stored.status, stored.topics) == (Status.ACTIVE, (keep,))


def test_subscribe_in_the_form_then_confirm_from_the_emailed_link(settings: Settings) -> None:
    """Double opt-in end to end: the form, the real confirmation email (outbox), the confirm page."""
    import email
    import email.policy
    import re

    with serving(WebApp(settings)) as base, Browser(width=375) as chromium:
        chromium.open(f"{base}/subscribe")
        chromium.evaluate(
            "document.getElementById('email').value = 'zoe.lind@example.org';"
            "document.getElementById('name').value = 'Zoë Lind';"
        )
        chromium.click("#subscribe")
        assert "inbox" in chromium.text("main").lower()
        assert current(settings, "zoe.lind@example.org").status is Status.PENDING

        settled(settings)  # sent by the app's background thread, outside the request
        (sent,) = list((settings.paths.build / "outbox").rglob("*.eml"))
        message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
        assert message["To"].addresses[0].addr_spec == "zoe.lind@example.org"
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = re.search(r"https://news\.example\.org/confirm/\S+", text)
        assert link, text

        chromium.open(local(link.group(0), base))
        # Opening the link (as a mail scanner would) confirms nothing.
        assert current(settings, "zoe.lind@example.org").status is Status.PENDING
        chromium.click("#confirm-subscription")
        assert chromium.text("h1") == "You are subscribed"
    stored = current(settings, "zoe.lind@example.org")
    assert stored.status is Status.ACTIVE and stored.confirmed_at is not None
