"""From one rendered issue to one RFC 5322 message per subscriber, without re-rendering.

``prepare_issue`` does the expensive work once per issue: it validates the subject, encodes the
headers every copy shares, and quoted-printable encodes the text and HTML parts around the
per-recipient placeholders ``[[name]]``, ``[[email]]`` and ``[[unsubscribe_url]]``. After that,
``PreparedIssue.message_for(recipient)`` only encodes the few per-recipient values and joins
pre-encoded bytes, which is what makes tens of thousands of messages a second possible.

Placeholders sit on a line of their own in the quoted-printable body (joined to their
neighbours by soft line breaks), so a value of any length can be dropped in without re-wrapping
the text around it, and no encoded line ever exceeds 76 characters.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Protocol

from newsletter.errors import MessageError, describe_character, excerpt
from newsletter.recipient_fields import (
    FIELDS,
    PATTERN,
    display_name,
    escape_html,
    needs_html_escape,
    recipient_values,
)
from newsletter.settings import Settings

ONE_CLICK = "List-Unsubscribe=One-Click"

_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_CRLF = b"\r\n"
_SOFT_BREAK = b"=\r\n"
# Longest display name or subject written as a plain (unencoded) header value; longer or
# non-ASCII ones become RFC 2047 encoded words, which fold cleanly at 75 characters.
_PLAIN_HEADER_LIMIT = 60
_HEADER_LINE_LIMIT = 998
_ENCODED_WORD_BYTES = 45  # 45 bytes -> 60 base64 chars -> a 72-char encoded word


class _HasMonth(Protocol):
    @property
    def month(self) -> str: ...


class RenderedIssueLike(Protocol):
    """What ``newsletter.render`` produces: one render of an issue, placeholders unfilled."""

    @property
    def issue(self) -> _HasMonth: ...
    @property
    def subject(self) -> str: ...
    @property
    def html(self) -> str: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Recipient:
    """One subscriber as the send path sees them."""

    id: int
    email: str
    name: str
    unsubscribe_url: str


@dataclass(frozen=True)
class _Part:
    """A body part cut at its placeholders: literals[0] slot[0] literals[1] … literals[-1]."""

    literals: tuple[str, ...]
    slots: tuple[str, ...]
    encoded_literals: tuple[bytes, ...]

    @classmethod
    def parse(cls, source: str) -> _Part:
        source = source.replace("\r\n", "\n").replace("\r", "\n")
        pieces = PATTERN.split(source)
        literals = tuple(pieces[0::2])
        slots = tuple(pieces[1::2])
        encoded = []
        for index, literal in enumerate(literals):
            chunk = _qp_encode(literal)
            is_last = index == len(literals) - 1
            if not is_last and chunk and not chunk.endswith(_CRLF):
                # The value that follows starts on a line of its own.
                chunk += _SOFT_BREAK
            encoded.append(chunk)
        # The CRLF before the next boundary belongs to the boundary, so the last chunk is
        # left as it is: a text without a final newline decodes without one.
        return cls(literals, slots, tuple(encoded))

    def fill(self, values: dict[str, str]) -> str:
        out = [self.literals[0]]
        for slot, literal in zip(self.slots, self.literals[1:], strict=True):
            out.append(values[slot])
            out.append(literal)
        return "".join(out)

    def fill_encoded(self, values: dict[str, bytes], out: list[bytes]) -> None:
        literals = self.encoded_literals
        out.append(literals[0])
        for index, slot in enumerate(self.slots, start=1):
            out.append(values[slot])
            out.append(literals[index])

    @functools.cached_property
    def json_literals(self) -> tuple[bytes, ...]:
        """The literals as the inside of JSON strings (UTF-8), escaped once per issue."""
        return tuple(_json_inner(literal) for literal in self.literals)

    def fill_json(self, values: dict[str, bytes]) -> list[bytes]:
        """The filled part as the pieces of a JSON string literal, to be joined by the caller.

        ``values`` are already JSON-escaped. Returning pieces lets a batch of many messages be
        joined once, instead of copying each body again at every level of nesting.
        """
        literals = self.json_literals
        out = [b'"', literals[0]]
        for index, slot in enumerate(self.slots, start=1):
            out.append(values[slot])
            out.append(literals[index])
        out.append(b'"')
        return out

    def with_markers(self, marker: Callable[[str], str]) -> str:
        """The part with each placeholder replaced by a provider's own substitution tag."""
        return self.fill({slot: marker(slot) for slot in FIELDS})


def _json_inner(text: str) -> bytes:
    # The C escaper json.dumps(text, ensure_ascii=False) ends up calling, without the encoder
    # object json.dumps builds on every call: a third of the cost for a short value.
    return encode_basestring(text)[1:-1].encode("utf-8")


def _qp_encode(text: str) -> bytes:
    """Quoted-printable, UTF-8, CRLF line ends; ``text`` uses ``\\n`` line ends."""
    if not text:
        return b""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", _CRLF)


def _qp_value(value: str) -> bytes:
    """A placeholder value, ending in a soft break so the body continues on the next line."""
    encoded = binascii.b2a_qp(value.encode("utf-8"), istext=True)
    return encoded.replace(b"=\n", _SOFT_BREAK) + _SOFT_BREAK


def encode_words(text: str) -> str:
    """``text`` as RFC 2047 base64 encoded words, folded with CRLF SP between them."""
    words = []
    chunk = bytearray()
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _ENCODED_WORD_BYTES:
            words.append(chunk)
            chunk = bytearray()
        chunk += encoded
    if chunk:
        words.append(chunk)
    return "\r\n ".join(
        f"=?utf-8?b?{binascii.b2a_base64(bytes(word), newline=False).decode('ascii')}?="
        for word in words
    )


def _needs_encoding(text: str) -> bool:
    return looks_encoded(text) or not (
        text.isascii() and text.isprintable() and len(text) <= _PLAIN_HEADER_LIMIT
    )


def looks_encoded(text: str) -> bool:
    """Whether a mail client could read part of ``text`` as an RFC 2047 encoded word.

    Written as is, ``=?utf-8?b?UGF5UGFs?=`` displays as "PayPal"; such text is itself
    encoded, so that it displays as written.
    """
    return "=?" in text


def literal_header_text(text: str) -> str:
    """``text`` for a header an API service writes for us (a name, a subject): as it is, or
    as encoded words on one line when a client would otherwise decode part of it."""
    return encode_words(text).replace("\r\n ", " ") if looks_encoded(text) else text


def header_phrase(text: str) -> str:
    """A display name as a header phrase: as is, quoted, or RFC 2047 encoded."""
    if _needs_encoding(text):
        return encode_words(text)
    if _SPECIALS.search(text):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return text


def format_address(name: str, address: str) -> str:
    """A header address with its display name quoted or RFC 2047 encoded as needed."""
    if not name:
        return address
    return f"{header_phrase(name)} <{address}>"


def _fold_plain(label: str, value: str) -> str:
    """A header line folded at spaces so that lines stay near 78 characters."""
    line = f"{label}: "
    lines = []
    for position, word in enumerate(value.split(" ")):
        if position and word and len(line) + 1 + len(word) > 78:
            lines.append(line)
            line = " " + word
        else:
            line = f"{line}{' ' if position else ''}{word}"
    lines.append(line)
    return "\r\n".join(lines)


def _subject_header(subject: str) -> str:
    plain = subject.isascii() and subject.isprintable() and len(subject) < 900
    if plain and not looks_encoded(subject):
        return _fold_plain("Subject", subject)
    return f"Subject: {encode_words(subject)}"


# Line breaks in Python's and in mail clients' eyes, and the controls no header should carry.
_NOT_IN_HEADER = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_one_line(value: str, what: str) -> None:
    if "\r" in value or "\n" in value:
        raise MessageError(
            f"{what} contains a line break ({value!r}); refusing to build a message whose "
            "headers could be injected. Remove the line break and try again."
        )


def _check_header_text(value: str, what: str) -> None:
    """One line with no control character at all: for the issue-wide headers."""
    _check_one_line(value, what)
    found = _NOT_IN_HEADER.search(value)
    if found:
        raise MessageError(
            f"{what} contains the control character {describe_character(found[0])} "
            f"({excerpt(value)}); "
            "remove it and try again"
        )


def _check_address(address: str, recipient_id: int) -> None:
    if (
        not address.isascii()
        or not address.isprintable()
        or any(char in address for char in ' <>,;"\\')
        or address.count("@") != 1
        or address.startswith("@")
        or address.endswith("@")
    ):
        raise MessageError(
            f"subscriber {recipient_id}: {address!r} is not a plain ASCII email address "
            "(internationalised addresses need SMTPUTF8, which is not supported)"
        )


def _check_unsubscribe_url(url: str, recipient_id: int) -> None:
    # RFC 8058 one-click needs HTTPS; the URL sits inside <…> in a header.
    if (
        not url.startswith("https://")
        or not url.isascii()
        or not url.isprintable()
        or any(char in url for char in ' <>"')
    ):
        raise MessageError(
            f"subscriber {recipient_id}: unsubscribe URL {url!r} must be an https:// URL "
            "without spaces or angle brackets"
        )
    if len(url) > 900:
        raise MessageError(f"subscriber {recipient_id}: unsubscribe URL is over 900 characters")


class PreparedIssue:
    """One issue, encoded once, ready to produce a message for any recipient."""

    def __init__(
        self, rendered: RenderedIssueLike, settings: Settings, *, date: datetime | None = None
    ):
        subject = rendered.subject
        _check_header_text(subject, "The issue's subject")
        if not subject.strip():
            raise MessageError("The issue's subject is empty")
        _check_header_text(settings.from_name, "The sender's name (newsletter.from_name)")
        for key, address in (("from_email", settings.from_email), ("reply_to", settings.reply_to)):
            if not address.isascii():
                raise MessageError(
                    f"newsletter.{key} {address!r} is not ASCII; internationalised sender "
                    "addresses need SMTPUTF8, which is not supported"
                )
        self.month = rendered.issue.month
        self.subject = subject
        self.from_email = settings.from_email
        self.from_name = settings.from_name
        self.reply_to = settings.reply_to
        self.sender_domain = settings.sender_domain
        self.list_id = settings.list_id
        self.list_name = settings.name
        mailto = settings.section("sending").get("unsubscribe_mailto")
        if mailto is not None and not isinstance(mailto, str):
            raise MessageError("[sending] unsubscribe_mailto must be a string")
        if not mailto:
            mailto = f"mailto:unsubscribe@{self.sender_domain}?subject=unsubscribe"
        elif not mailto.startswith("mailto:"):
            mailto = f"mailto:{mailto}"
        _check_one_line(mailto, "[sending] unsubscribe_mailto")
        self.unsubscribe_mailto = mailto
        self.date = format_datetime(date or datetime.now(UTC))
        self._id_tag = hashlib.sha256(self.list_id.encode()).hexdigest()[:10]

        self.text_part = _Part.parse(rendered.text)
        self.html_part = _Part.parse(rendered.html)
        # "=_" never occurs in quoted-printable output, so this boundary cannot collide.
        self.boundary = f"=_nl_{secrets.token_hex(12)}"

        self.from_header = format_address(self.from_name, self.from_email)
        self._head_from = f"From: {self.from_header}\r\n".encode("ascii")
        middle = []
        if self.reply_to:
            middle.append(f"Reply-To: {self.reply_to}")
        middle.append(_subject_header(subject))
        middle.append(f"Date: {self.date}")
        self._head_middle = ("\r\n".join(middle) + "\r\n").encode("ascii")
        list_id_value = f"{header_phrase(self.list_name)} <{self.list_id}>"
        self.list_id_header = list_id_value
        self._head_list = f"MIME-Version: 1.0\r\nList-Id: {list_id_value}\r\n".encode("ascii")
        self._head_tail = (
            f"List-Unsubscribe-Post: {ONE_CLICK}\r\n"
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"\r\n'
            "\r\n"
            f"--{self.boundary}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n"
            "\r\n"
        ).encode("ascii")
        self._between_parts = (
            f"\r\n--{self.boundary}\r\n"
            'Content-Type: text/html; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n"
            "\r\n"
        ).encode("ascii")
        self._closing = f"\r\n--{self.boundary}--\r\n".encode("ascii")

    def message_for(self, recipient: Recipient) -> OutgoingMessage:
        """The message for one recipient; MessageError if their data cannot go in a header.

        The send loop should record a MessageError as a permanent failure for that recipient.
        """
        _check_one_line(recipient.name, f"The name of subscriber {recipient.id}")
        if recipient.name != recipient.name.strip():
            # Mail clients drop the spaces around a display name; so does the greeting.
            recipient = dataclasses.replace(recipient, name=recipient.name.strip())
        _check_address(recipient.email, recipient.id)
        _check_unsubscribe_url(recipient.unsubscribe_url, recipient.id)
        return OutgoingMessage(
            recipient=recipient,
            message_id=f"<nl.{self.month}.{recipient.id}.{self._id_tag}@{self.sender_domain}>",
            idempotency_key=f"{self.list_id}/{self.month}/{recipient.id}",
            issue=self,
        )

    def messages_for(self, recipients: Iterable[Recipient]) -> Iterator[OutgoingMessage]:
        for recipient in recipients:
            yield self.message_for(recipient)


def prepare_issue(
    rendered: RenderedIssueLike, settings: Settings, *, date: datetime | None = None
) -> PreparedIssue:
    """Encode ``rendered`` once for sending; see ``PreparedIssue.message_for``."""
    return PreparedIssue(rendered, settings, date=date)


@dataclass(frozen=True, eq=False)
class OutgoingMessage:
    """One recipient's copy of an issue, in the forms the providers need.

    SMTP and the outbox take ``as_bytes()``; HTTP providers take the filled ``html`` and
    ``text`` with ``api_headers()``, or the shared templates and ``values()`` when the provider
    substitutes per recipient itself.
    """

    recipient: Recipient
    message_id: str
    idempotency_key: str
    issue: PreparedIssue = field(repr=False)

    @property
    def recipient_id(self) -> int:
        return self.recipient.id

    @property
    def month(self) -> str:
        return self.issue.month

    @property
    def subject(self) -> str:
        return self.issue.subject

    @property
    def display_name(self) -> str:
        return display_name(self.recipient.name)

    @property
    def to_header(self) -> str:
        return format_address(self.recipient.name, self.recipient.email)

    @property
    def list_unsubscribe(self) -> str:
        return f"<{self.recipient.unsubscribe_url}>, <{self.issue.unsubscribe_mailto}>"

    def values(self, part: str) -> dict[str, str]:
        """The placeholder values for ``part`` ("html" escaped for attributes, or "text")."""
        recipient = self.recipient
        raw = recipient_values(recipient.name, recipient.email, recipient.unsubscribe_url)
        if part == "html":
            return {key: escape_html(value) for key, value in raw.items()}
        return raw

    @property
    def html(self) -> str:
        return self.issue.html_part.fill(self.values("html"))

    @property
    def text(self) -> str:
        return self.issue.text_part.fill(self.values("text"))

    def html_json(self) -> list[bytes]:
        """``html`` as the pieces of a JSON string literal, most of them escaped once per issue."""
        values = {key: _json_inner(value) for key, value in self.values("html").items()}
        return self.issue.html_part.fill_json(values)

    def text_json(self) -> list[bytes]:
        values = {key: _json_inner(value) for key, value in self.values("text").items()}
        return self.issue.text_part.fill_json(values)

    def json_values(self) -> tuple[str, str, str, str, str, str]:
        """``values("text")`` then ``values("html")`` (name, email, unsubscribe_url each), as
        quoted ASCII JSON string literals.

        For providers that substitute per recipient and carry thousands of these values in
        one JSON payload: the same values as ``values()``, without its dictionaries.
        """
        recipient = self.recipient
        name = display_name(recipient.name)
        email = recipient.email
        url = recipient.unsubscribe_url
        text = (
            encode_basestring_ascii(name),
            encode_basestring_ascii(email),
            encode_basestring_ascii(url),
        )
        # One search over the three values: most recipients have nothing to escape, and then
        # the HTML values are the text values.
        if not needs_html_escape(f"{name}{email}{url}"):
            return text + text
        return (
            *text,
            encode_basestring_ascii(escape_html(name)),
            encode_basestring_ascii(escape_html(email)),
            encode_basestring_ascii(escape_html(url)),
        )

    def api_headers(self) -> dict[str, str]:
        """The headers an HTTP provider must add through its custom-headers field."""
        return {
            "List-Unsubscribe": self.list_unsubscribe,
            "List-Unsubscribe-Post": ONE_CLICK,
            "List-Id": self.issue.list_id_header,
        }

    def as_bytes(self) -> bytes:
        """The complete message: CRLF line ends, 7-bit clean, no line over 998 octets."""
        issue = self.issue
        recipient = self.recipient
        name = display_name(recipient.name)
        url = recipient.unsubscribe_url
        email = recipient.email
        text_values = {
            "name": _qp_value(name),
            "email": _qp_value(email),
            "unsubscribe_url": _qp_value(url),
        }
        html_values = {
            "name": _qp_value(escape_html(name)),
            "email": _qp_value(escape_html(email)),
            "unsubscribe_url": _qp_value(escape_html(url)),
        }
        out = [
            issue._head_from,
            f"To: {format_address(recipient.name, email)}\r\n".encode("ascii"),
            issue._head_middle,
            f"Message-ID: {self.message_id}\r\n".encode("ascii"),
            issue._head_list,
            f"List-Unsubscribe: <{url}>, <{issue.unsubscribe_mailto}>\r\n".encode("ascii"),
            issue._head_tail,
        ]
        issue.text_part.fill_encoded(text_values, out)
        out.append(issue._between_parts)
        issue.html_part.fill_encoded(html_values, out)
        out.append(issue._closing)
        return b"".join(out)


def check_line_lengths(raw: bytes) -> None:
    """Raise MessageError if any line of ``raw`` is over 998 octets (RFC 5322 2.1.1)."""
    for number, line in enumerate(raw.split(_CRLF), start=1):
        if len(line) > _HEADER_LINE_LIMIT:
            raise MessageError(f"line {number} of the message is {len(line)} octets long")
