"""Optional DKIM signing of outgoing messages (the SMTP path; HTTP providers sign themselves).

Settings, all in the ``[dkim]`` table::

    [dkim]
    selector = "news2024"                  # the DNS record is news2024._domainkey.<domain>
    key_file = "/etc/newsletter/dkim.pem"  # PEM private key; keep it outside the repository
    domain = "example.org"                 # default: the domain of newsletter.from_email

The signature covers the List-Unsubscribe and List-Unsubscribe-Post headers, as RFC 8058
section 4 requires for one-click unsubscribe to be honoured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from newsletter.errors import SettingsError
from newsletter.settings import Settings

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
INSTALL_HINT = 'pip install "newsletter[dkim]"'


class DkimSigner:
    """Signs complete messages with one key; relaxed/relaxed canonicalization, rsa-sha256."""

    def __init__(self, *, selector: str, domain: str, private_key: bytes):
        try:
            import dkim
        except ImportError:
            raise SettingsError(
                f"DKIM signing needs the dkimpy package: {INSTALL_HINT}", key="dkim"
            ) from None
        self._dkim: Any = dkim
        self.selector = selector
        self.domain = domain
        self._private_key = private_key

    def sign(self, raw: bytes) -> bytes:
        """``raw`` with a DKIM-Signature header in front."""
        signature: bytes = self._dkim.sign(
            raw,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self._private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(SIGNED_HEADERS),
            linesep=b"\r\n",
        )
        return signature + raw

    def __repr__(self) -> str:
        return f"<DkimSigner selector={self.selector!r} domain={self.domain!r}>"


def signer_from_settings(settings: Settings) -> DkimSigner | None:
    """The signer the ``[dkim]`` table describes, or None when there is no such table."""
    table = settings.section("dkim")
    if not table:
        return None
    where = settings.source or Path("<embedded defaults>")
    values: dict[str, str] = {}
    for key in ("selector", "key_file"):
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise SettingsError("missing; add it to the file", path=where, key=f"dkim.{key}")
        values[key] = value.strip()
    domain = table.get("domain", settings.sender_domain)
    if not isinstance(domain, str) or not domain:
        raise SettingsError("must be a domain name", path=where, key="dkim.domain")
    key_path = settings.root / values["key_file"]
    try:
        private_key = key_path.read_bytes()
    except OSError as exc:
        raise SettingsError(
            f"cannot read the private key {key_path}: {exc.strerror}",
            path=where,
            key="dkim.key_file",
        ) from None
    if b"PRIVATE KEY" not in private_key:
        raise SettingsError(f"{key_path} is not a PEM private key", path=where, key="dkim.key_file")
    return DkimSigner(selector=values["selector"], domain=domain, private_key=private_key)
