"""The shared base of the HTTP API providers: one requests Session, one loop, one error policy.

A service module implements two methods: ``build_request`` turns a batch into one API call,
and ``parse_reply`` turns the service's answer into one result per message. This base owns
the rest: the session with its User-Agent and timeout, the credential from the environment,
and the replies that mean the same for every service:

- no answer at all (connection refused, timeout): temporary for the whole batch, flagged
  ``uncertain`` when the request may have been received;
- 429: temporary, with the service's Retry-After;
- 5xx: temporary;
- 401/403: ProviderError, because no retry fixes a refused credential;
- a redirect to another host: ProviderError before anything is sent there, because the
  credential (a header or basic auth) and the subscribers' addresses would follow it.

The same policy serves reading (``get_json``, for suppression sync): 429 and 5xx are tried
again after the service's Retry-After, and 401/403 and off-host redirects stop with the same
errors as a send's.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit

import requests

from newsletter import __version__
from newsletter.errors import ProviderError
from newsletter.messages import (
    OutgoingMessage,
    PreparedIssue,
    literal_header_text,
    looks_encoded,
)
from newsletter.providers.base import AccountCheck, DeliveryResult, Provider
from newsletter.settings import Settings, check_url

USER_AGENT = f"newsletter/{__version__} python-requests/{requests.__version__}"
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_T = TypeVar("_T")
READ_ATTEMPTS = 4
MAX_READ_WAIT_SECONDS = 60.0


@dataclass
class ApiRequest:
    """One call to a service: ``body`` (bytes of ``content_type``, JSON unless said otherwise)
    or ``form`` (plain fields, sent as multipart/form-data)."""

    path: str
    body: bytes | None = None
    form: list[tuple[str, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def plain_address(name: str, address: str) -> str:
    """``Name <address>`` for a JSON API: the name quoted when needed, and RFC 2047 encoded
    only when it looks like an encoded word itself (the service would pass that on as is)."""
    if not name:
        return address
    if looks_encoded(name):
        return f"{literal_header_text(name)} <{address}>"
    if _SPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def multipart_boundary() -> str:
    """A fresh random boundary; the caller checks that no field value contains it."""
    return secrets.token_hex(16)


def multipart_field(boundary: str, name: str) -> str:
    """What comes before the value of the plain form field ``name``; the value ends in CRLF."""
    return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'


def multipart_end(boundary: str) -> str:
    return f"--{boundary}--\r\n"


def multipart_type(boundary: str) -> str:
    return f"multipart/form-data; boundary={boundary}"


def encode_multipart(form: list[tuple[str, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type, for plain (non-file) fields.

    Written here rather than left to urllib3, whose per-field objects cost more than the rest
    of a 1,000-recipient Mailgun batch put together.
    """
    while True:
        boundary = multipart_boundary()
        if not any(boundary in value for _, value in form):
            break
    pieces = [f"{multipart_field(boundary, name)}{value}\r\n" for name, value in form]
    pieces.append(multipart_end(boundary))
    return "".join(pieces).encode("utf-8"), multipart_type(boundary)


def full_message_array(
    messages: Sequence[OutgoingMessage], head: Callable[[OutgoingMessage], str], html_key: str
) -> bytes:
    """A JSON array of complete messages, for APIs without per-recipient substitution.

    ``head`` gives each message's JSON up to and including the text body's key; the bodies
    follow as the message's pre-escaped pieces. The bodies are most of the bytes: they are
    escaped once per issue and copied once, into the joined request body.
    """
    pieces = [b"["]
    after_text = f',"{html_key}":'.encode("ascii")
    for message in messages:
        pieces.append(head(message).encode("ascii"))
        pieces += message.text_json()
        pieces.append(after_text)
        pieces += message.html_json()
        pieces.append(b"},")
    pieces[-1] = b"}]"
    return b"".join(pieces)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OffHostRedirect(requests.RequestException):
    """The API answered with a redirect to another host (or port, or from https to http)."""

    def __init__(self, source: str, target: str):
        super().__init__(f"redirected from {source} to {target}")
        self.source = source
        self.target = target


class ApiSession(requests.Session):
    """A Session that follows a redirect only on the host it was sent to.

    requests drops ``Authorization`` when a redirect changes host, but keeps every other
    header (Postmark's ``X-Postmark-Server-Token``) and the body; so a redirect off the host
    is refused before the next request is sent.
    """

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: Any) -> None:
        source = response.request.url or ""
        target = prepared_request.url or ""
        if _origin(source) != _origin(target) and not _is_upgrade(source, target):
            raise OffHostRedirect(source.split("?", 1)[0], target.split("?", 1)[0])
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme)


def _is_upgrade(source: str, target: str) -> bool:
    """http://host/ to https://host/ on the default ports, which requests also allows."""
    old, new = _origin(source), _origin(target)
    return old == ("http", new[1], 80) and new == ("https", old[1], 443)


class HttpProvider(Provider):
    """Base of the HTTP providers; see the module docstring for what it handles."""

    default_base_url: ClassVar[str] = ""
    credential_variable: ClassVar[str] = ""
    known_options = frozenset({"base_url", "timeout"})

    def __init__(
        self, settings: Settings, options: dict[str, Any] | None = None, *, dry_run: bool = False
    ):
        super().__init__(settings, options, dry_run=dry_run)
        base_url = self.option("base_url", str, self.default_base_url).rstrip("/")
        where = settings.source or Path("<embedded defaults>")
        self.base_url = check_url(base_url, where, "provider.base_url", site=True)
        self.timeout = self.option("timeout", float, 30.0)
        self._credential = self.secret(self.credential_variable)
        self.session: requests.Session | None = None
        self._shared: tuple[PreparedIssue, object] | None = None

    # --- what a service module implements -------------------------------------------------

    def authenticate(self, session: requests.Session, credential: str) -> None:
        """Put the credential on the session. Default: a bearer token."""
        session.headers["Authorization"] = f"Bearer {credential}"

    def build_request(self, messages: Sequence[OutgoingMessage]) -> ApiRequest:
        raise NotImplementedError

    def parse_reply(
        self, messages: Sequence[OutgoingMessage], response: requests.Response
    ) -> list[DeliveryResult]:
        """Results for a reply that is not 401, 403, 429 or 5xx."""
        raise NotImplementedError

    def account_path(self) -> str:
        """A harmless authenticated GET (account or domain info); "" when there is none."""
        return ""

    def read_account(self, response: requests.Response) -> AccountCheck:
        """What a 200 from ``account_path`` says. Default: the credential works."""
        return AccountCheck(True, f"{self.credential_variable} accepted")

    def shared_parts(
        self, issue: PreparedIssue, build: Callable[[PreparedIssue], _T], *, rebuild: bool = False
    ) -> _T:
        """``build(issue)``, made once per issue and reused by every batch of it.

        For the parts of a payload every batch repeats (the bodies, the sender, the shared
        headers), already encoded: a send is one issue, so one slot is enough.
        """
        shared = self._shared
        if rebuild or shared is None or shared[0] is not issue:
            shared = self._shared = (issue, build(issue))
        return cast(_T, shared[1])

    # --- the shared loop ------------------------------------------------------------------

    def open(self) -> None:
        session = ApiSession()
        session.headers["User-Agent"] = USER_AGENT
        session.headers["Accept"] = "application/json"
        self.authenticate(session, self._credential)
        self.session = session

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        if self.session is None:
            raise ProviderError(self.name, "send_batch() called before open()")
        if not messages:
            return []
        request = self.build_request(messages)
        headers = dict(request.headers)
        body = request.body
        if body is not None:
            headers["Content-Type"] = request.content_type
        elif request.form is not None:
            body, headers["Content-Type"] = encode_multipart(request.form)
        try:
            response = self.session.post(
                self.base_url + request.path,
                data=body,
                headers=headers,
                timeout=(min(10.0, self.timeout), self.timeout),
            )
        except OffHostRedirect as exc:
            raise self.refuse_redirect(exc) from None
        except requests.ConnectTimeout as exc:
            return self.whole_batch(messages, f"cannot connect: {exc}")
        except requests.ConnectionError as exc:
            # Refused before anything was sent, or cut while the service was answering.
            sent = "NewConnectionError" not in repr(exc) and "NameResolutionError" not in repr(exc)
            return self.whole_batch(messages, f"connection failed: {exc}", uncertain=sent)
        except requests.Timeout:
            return self.whole_batch(
                messages,
                f"no reply within {self.timeout:g} s; the service may have accepted the batch",
                uncertain=True,
            )
        status = response.status_code
        if status == 429:
            return self.whole_batch(
                messages,
                f"rate limited (429): {self.describe(response)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            return self.whole_batch(
                messages,
                f"service error ({status}): {self.describe(response)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            raise self.refused_credential(response)
        results = self.parse_reply(messages, response)
        if len(results) != len(messages):
            raise ProviderError(
                self.name,
                f"{len(results)} results for {len(messages)} messages",
                reply=response.text,
            )
        return results

    def check_account(self) -> AccountCheck:
        path = self.account_path()
        if not path:
            return super().check_account()
        self.open()
        assert self.session is not None
        try:
            response = self.session.get(self.base_url + path, timeout=min(10.0, self.timeout))
        except requests.RequestException as exc:
            return AccountCheck(False, f"{self.base_url} cannot be reached: {exc}")
        finally:
            self.close()
        if response.status_code in (401, 403):
            return self.refused_account(response)
        if response.status_code != 200:
            return AccountCheck(
                False,
                f"GET {path} answered {response.status_code}: {self.describe(response)}",
            )
        try:
            return self.read_account(response)
        except (ValueError, AttributeError, KeyError, TypeError):
            return AccountCheck(
                False,
                f"GET {path} answered 200 with something unexpected: {self.describe(response)}",
            )

    def refused_account(self, response: requests.Response) -> AccountCheck:
        return AccountCheck(
            False,
            f"the API refused {self.credential_variable} ({response.status_code}: "
            f"{self.describe(response)}); set it to a valid key",
        )

    def whole_batch(
        self,
        messages: Sequence[OutgoingMessage],
        reason: str,
        *,
        retry_after: float | None = None,
        uncertain: bool = False,
    ) -> list[DeliveryResult]:
        return [
            DeliveryResult.temporary(m, reason, retry_after=retry_after, uncertain=uncertain)
            for m in messages
        ]

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``url`` with the open session and return the decoded JSON reply.

        A 429 or 5xx reply, or no reply, is tried again (honouring Retry-After) up to
        READ_ATTEMPTS times; anything else that is not 200 is a ProviderError carrying the
        service's reply.
        """
        if self.session is None:
            raise ProviderError(self.name, "the provider's session is not open")
        where = url.split("?", 1)[0]
        for attempt in range(1, READ_ATTEMPTS + 1):
            last = attempt == READ_ATTEMPTS
            try:
                response = self.session.get(
                    url, params=params, timeout=(min(10.0, self.timeout), self.timeout)
                )
            except OffHostRedirect as exc:
                raise self.refuse_redirect(exc) from None
            except requests.RequestException as exc:
                if last:
                    raise ProviderError(self.name, f"cannot read {where}: {exc}") from None
                time.sleep(2.0**attempt)
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                if last:
                    raise self.refuse(response, f"{where} kept failing")
                wait = parse_retry_after(response.headers.get("Retry-After"))
                time.sleep(min(MAX_READ_WAIT_SECONDS, 2.0**attempt if wait is None else wait))
                continue
            if status in (401, 403):
                raise self.refused_credential(response)
            if status != 200:
                raise self.refuse(response, f"reading {where} failed")
            try:
                return response.json()
            except ValueError:
                raise ProviderError(
                    self.name, f"{where} did not answer with JSON", reply=response.text
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def refused_credential(self, response: requests.Response) -> ProviderError:
        return ProviderError(
            self.name,
            f"the API refused the credential ({response.status_code}); "
            f"check {self.credential_variable}",
            reply=response.text,
        )

    def refuse_redirect(self, redirect: OffHostRedirect) -> ProviderError:
        return ProviderError(
            self.name,
            f"the API at {redirect.source} redirected to another host ({redirect.target}); "
            "nothing was sent there, because the credential would follow. If the service "
            "has moved, set base_url in the [provider] table of newsletter.toml",
        )

    def refuse(self, response: requests.Response, what: str) -> ProviderError:
        return ProviderError(self.name, f"{what} ({response.status_code})", reply=response.text)

    @staticmethod
    def describe(response: requests.Response) -> str:
        text = " ".join(response.text.split())
        return text[:300] or response.reason or "no details"


def split_duplicates(
    messages: Sequence[OutgoingMessage],
) -> tuple[list[OutgoingMessage], dict[int, DeliveryResult]]:
    """Messages with a unique address, and results for the repeats of an address.

    Services that key a batch by address (Mailgun's recipient-variables, SendGrid's
    personalizations) send one copy per address at most, or refuse the whole batch.
    """
    keys = [message.recipient.email.lower() for message in messages]
    if len(set(keys)) == len(keys):
        # The usual case, found without a dictionary entry and a result per message.
        return list(messages), {}
    seen: dict[str, int] = {}
    unique: list[OutgoingMessage] = []
    repeats: dict[int, DeliveryResult] = {}
    for index, (message, key) in enumerate(zip(messages, keys, strict=True)):
        if key in seen:
            repeats[index] = DeliveryResult.permanent(
                message,
                f"same address as subscriber {seen[key]} in this batch; one copy was sent",
            )
        else:
            seen[key] = message.recipient_id
            unique.append(message)
    return unique, repeats


def accepted_results(
    messages: Sequence[OutgoingMessage], provider_message_id: str
) -> list[DeliveryResult]:
    """All of ``messages`` accepted under one id (the service's id for the whole call)."""
    # Positional construction: the keyword-taking classmethod costs about as much again as
    # everything else a Mailgun or SendGrid batch does per recipient.
    return [
        DeliveryResult(message.recipient.id, "accepted", provider_message_id)
        for message in messages
    ]


def merge_results(
    messages: Sequence[OutgoingMessage],
    unique_results: list[DeliveryResult],
    repeats: dict[int, DeliveryResult],
) -> list[DeliveryResult]:
    if not repeats:
        return unique_results
    pending = iter(unique_results)
    return [repeats[index] if index in repeats else next(pending) for index in range(len(messages))]
