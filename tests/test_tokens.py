from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter.errors import TokenError
from newsletter.settings import Settings, load_settings
from newsletter.tokens import (
    CONFIRM,
    CONFIRM_MAX_AGE,
    SECRET_ENV,
    UNSUBSCRIBE,
    Signer,
    load_secret,
    unsubscribe_url,
)

SECRET = b"0123456789abcdef0123456789abcdef"
SIGNER = Signer(SECRET, "digest.example.org")


def test_a_token_round_trips() -> None:
    token = SIGNER.unsubscribe_token(42)
    assert SIGNER.verify(token, UNSUBSCRIBE).subscriber_id == 42
    assert token.startswith("u.42.")
    assert len(token) < 40  # short enough for a readable URL


@given(st.integers(min_value=1, max_value=10**12), st.data())
def test_any_changed_character_is_refused(subscriber_id: int, data: st.DataObject) -> None:
    token = SIGNER.unsubscribe_token(subscriber_id)
    position = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from("0123456789abcdefABCDEF-_.u"))
    tampered = token[:position] + replacement + token[position + 1 :]
    if tampered == token:
        return
    with pytest.raises(TokenError):
        SIGNER.verify(tampered, UNSUBSCRIBE)


@pytest.mark.parametrize("cut", [1, 5, 10, 20])
def test_a_truncated_token_is_refused(cut: int) -> None:
    token = SIGNER.unsubscribe_token(7)
    with pytest.raises(TokenError, match="changed or cut short"):
        SIGNER.verify(token[:-cut], UNSUBSCRIBE)


def test_a_token_for_another_subscriber_or_newsletter_is_refused() -> None:
    token = SIGNER.unsubscribe_token(7)
    forged = token.replace("u.7.", "u.8.")
    with pytest.raises(TokenError):
        SIGNER.verify(forged, UNSUBSCRIBE)
    other = Signer(SECRET, "other.example.org")
    with pytest.raises(TokenError):
        other.verify(token, UNSUBSCRIBE)
    with pytest.raises(TokenError):
        Signer(b"another-secret-of-enough-length", "digest.example.org").verify(token, UNSUBSCRIBE)


def test_purposes_are_not_interchangeable() -> None:
    with pytest.raises(TokenError, match="not valid for this page"):
        SIGNER.verify(SIGNER.unsubscribe_token(3), CONFIRM)
    with pytest.raises(TokenError, match="not valid for this page"):
        SIGNER.verify(SIGNER.confirm_token(3), UNSUBSCRIBE)


def test_confirmation_tokens_expire_and_unsubscribe_tokens_do_not() -> None:
    token = SIGNER.confirm_token(5, now=1_000_000)
    assert SIGNER.verify(token, CONFIRM, now=1_000_000 + CONFIRM_MAX_AGE).subscriber_id == 5
    with pytest.raises(TokenError, match="expired"):
        SIGNER.verify(token, CONFIRM, now=1_000_001 + CONFIRM_MAX_AGE)
    old = SIGNER.unsubscribe_token(5)
    assert SIGNER.verify(old, UNSUBSCRIBE, now=4_000_000_000).subscriber_id == 5


def test_non_ascii_garbage_is_refused_not_crashed() -> None:
    with pytest.raises(TokenError):
        SIGNER.verify("u.1.ü€", UNSUBSCRIBE)
    with pytest.raises(TokenError):
        SIGNER.verify("", UNSUBSCRIBE)


def test_secret_comes_from_the_environment_or_the_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: Settings = load_settings(None, root=tmp_path)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(
        TokenError, match="no secret for signing unsubscribe links: set NEWSLETTER_SECRET"
    ):
        load_secret(settings)
    (tmp_path / ".newsletter-secret").write_text("short\n")
    with pytest.raises(TokenError, match="too short"):
        load_secret(settings)
    (tmp_path / ".newsletter-secret").write_text("a-local-secret-long-enough\n")
    assert load_secret(settings) == b"a-local-secret-long-enough"
    monkeypatch.setenv(SECRET_ENV, "from-the-environment-1234")
    assert load_secret(settings) == b"from-the-environment-1234"


def test_unsubscribe_url_uses_the_web_url(tmp_path: Path) -> None:
    (tmp_path / "newsletter.toml").write_text('[web]\nurl = "https://news.example.org/app/"\n')
    settings = load_settings(tmp_path / "newsletter.toml")
    url = unsubscribe_url(settings, SIGNER, 9)
    assert url.startswith("https://news.example.org/app/unsubscribe/u.9.")
