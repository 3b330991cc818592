"""Signed links: unsubscribe and confirmation tokens that need no database to check.

A token is ``<purpose>.<subscriber id>[.<issued>].<signature>``: the purpose (``u`` for
unsubscribe and preferences, ``c`` for confirming a subscription), the subscriber's id, for
confirmations the time it was issued (base 36 seconds), and an HMAC-SHA256 over all that and
the newsletter's List-Id, cut to 128 bits and base64url-encoded. The List-Id in the MAC ties a
token to one newsletter: a token made for another newsletter, or changed in any character, or
cut short, fails the constant-time comparison before anything is looked up.

Unsubscribe tokens never expire: an email from years ago must still let its reader leave.
Confirmation tokens expire after a week.

The secret comes from the environment variable ``NEWSLETTER_SECRET``, or else from the
git-ignored ``.newsletter-secret`` file that ``newsletter init`` writes owner-only; a secret
file that other users of the machine can read is used, with a warning on the ``newsletter``
logger (anyone who reads it can unsubscribe or confirm anybody).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from newsletter.errors import TokenError
from newsletter.private_files import exposed_mode
from newsletter.settings import Settings

SECRET_ENV = "NEWSLETTER_SECRET"
SECRET_FILE = ".newsletter-secret"
UNSUBSCRIBE = "u"
CONFIRM = "c"
CONFIRM_MAX_AGE = 7 * 24 * 3600
_SIGNATURE_BYTES = 16
# Writes the key owner-only whatever the umask; the error for a missing secret suggests it.
MAKE_SECRET_COMMAND = (
    f"(umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > {SECRET_FILE})"
)
logger = logging.getLogger("newsletter")
_MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class SecretSources:
    """Both places a secret can come from, as found: for ``doctor`` and the start-up line."""

    environment: str  # the variable's value, "" when unset
    file: Path
    file_value: str | None  # None when the file does not exist or cannot be read

    @property
    def in_use(self) -> str:
        """Which one signs links: ``$NEWSLETTER_SECRET``, the file's path, or ""."""
        if self.environment:
            return f"${SECRET_ENV}"
        return str(self.file) if self.file_value else ""

    @property
    def conflict(self) -> bool:
        return bool(self.environment and self.file_value and self.environment != self.file_value)


def secret_sources(settings: Settings) -> SecretSources:
    path = settings.root / SECRET_FILE
    try:
        file_value: str | None = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        file_value = None
    return SecretSources(os.environ.get(SECRET_ENV, "").strip(), path, file_value)


def load_secret(settings: Settings) -> bytes:
    """The signing secret; a clear error when there is none, before anything is sent."""
    value = os.environ.get(SECRET_ENV, "").strip()
    if value:
        source = f"${SECRET_ENV}"
    else:
        path = settings.root / SECRET_FILE
        try:
            value = path.read_text("utf-8").strip()
        except FileNotFoundError:
            raise TokenError(
                f"no secret for signing unsubscribe links: set {SECRET_ENV}, or create "
                f"{path} (`newsletter init` writes one; or run `{MAKE_SECRET_COMMAND}` "
                "in that folder)"
            ) from None
        except OSError as exc:
            raise TokenError(f"cannot read the signing secret {path}: {exc.strerror}") from None
        source = str(path)
        _warn_if_exposed(path)
    if len(value.encode()) < _MIN_SECRET_BYTES:
        raise TokenError(
            f"the signing secret in {source} is too short: use at least 16 random characters"
        )
    return value.encode()


def _warn_if_exposed(path: Path) -> None:
    mode = exposed_mode(path)
    if mode:
        logger.warning(
            "the signing secret %s can be read or changed by other users of this machine "
            "(permissions %s), and with it anyone can unsubscribe or confirm anybody: "
            "run `chmod 600 %s`",
            path,
            mode,
            path,
        )


@dataclass(frozen=True)
class TokenClaims:
    purpose: str
    subscriber_id: int
    issued: int | None = None


class Signer:
    """Makes and checks tokens for one newsletter."""

    def __init__(self, secret: bytes, newsletter_id: str):
        # One key per newsletter, derived from the secret: tokens of two newsletters sharing a
        # secret are still not interchangeable.
        self._key = hmac.new(
            secret, b"newsletter-token\0" + newsletter_id.encode(), hashlib.sha256
        ).digest()

        # Erased addresses are kept only as this keyed hash (newsletter.erasure): without the
        # secret nobody can tell whether an address was ever on the list.
        self._erasure_key = hmac.new(
            secret, b"newsletter-erasure\0" + newsletter_id.encode(), hashlib.sha256
        ).digest()

    def address_hash(self, email_key: str) -> str:
        """The keyed hash (HMAC-SHA256, hex) of an address's store key."""
        return hmac.new(self._erasure_key, email_key.encode("utf-8"), hashlib.sha256).hexdigest()

    @classmethod
    def for_settings(cls, settings: Settings) -> Signer:
        return cls(load_secret(settings), settings.list_id)

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()[
            :_SIGNATURE_BYTES
        ]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def unsubscribe_token(self, subscriber_id: int) -> str:
        body = f"{UNSUBSCRIBE}.{subscriber_id}"
        return f"{body}.{self._sign(body)}"

    def confirm_token(self, subscriber_id: int, *, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        body = f"{CONFIRM}.{subscriber_id}.{_base36(issued)}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str, purpose: str, *, now: float | None = None) -> TokenClaims:
        """The token's claims, or TokenError when it is forged, altered, cut or expired."""
        body, _, signature = token.rpartition(".")
        if not body or not hmac.compare_digest(
            self._sign(body).encode(), signature.encode("ascii", "replace")
        ):
            raise TokenError("this link is not valid: it may have been changed or cut short")
        parts = body.split(".")
        if parts[0] != purpose:
            raise TokenError("this link is not valid for this page")
        try:
            subscriber_id = int(parts[1])
            issued = int(parts[2], 36) if purpose == CONFIRM else None
        except (IndexError, ValueError):
            raise TokenError("this link is not valid") from None
        if issued is not None:
            age = (time.time() if now is None else now) - issued
            if age > CONFIRM_MAX_AGE:
                raise TokenError("this confirmation link has expired: please subscribe again")
        return TokenClaims(purpose, subscriber_id, issued)


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def web_url(settings: Settings) -> str:
    """Where `newsletter serve` is reachable from the internet; the archive's URL by default."""
    return str(settings.section("web").get("url", settings.base_url)).rstrip("/")


def unsubscribe_url(settings: Settings, signer: Signer, subscriber_id: int) -> str:
    return f"{web_url(settings)}/unsubscribe/{signer.unsubscribe_token(subscriber_id)}"
