"""What every suppression source shares: the record it yields and one paged GET with retries."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests

from newsletter.errors import ProviderError
from newsletter.providers.http import HttpProvider, OffHostRedirect, parse_retry_after
from newsletter.store import Status

ATTEMPTS = 4
MAX_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Suppression:
    """One address on a provider's list: the status it means here, and why, for the record."""

    email: str
    status: Status  # BOUNCED, COMPLAINED or UNSUBSCRIBED
    reason: str


def get_json(provider: HttpProvider, url: str, params: dict[str, Any] | None = None) -> Any:
    """GET ``url`` with the provider's open session and return the decoded JSON reply.

    A 429 or 5xx reply, or no reply, is tried again (honouring Retry-After) up to ATTEMPTS
    times; anything else that is not 200 is a ProviderError carrying the service's reply.
    """
    session = provider.session
    if session is None:
        raise ProviderError(provider.name, "the provider's session is not open")
    where = url.split("?", 1)[0]
    for attempt in range(1, ATTEMPTS + 1):
        last = attempt == ATTEMPTS
        try:
            response = session.get(
                url, params=params, timeout=(min(10.0, provider.timeout), provider.timeout)
            )
        except OffHostRedirect as exc:
            raise provider.refuse_redirect(exc) from None
        except requests.RequestException as exc:
            if last:
                raise ProviderError(provider.name, f"cannot read {where}: {exc}") from None
            time.sleep(2.0**attempt)
            continue
        status = response.status_code
        if status == 429 or status >= 500:
            if last:
                raise provider.refuse(response, f"{where} kept failing")
            wait = parse_retry_after(response.headers.get("Retry-After"))
            time.sleep(min(MAX_WAIT_SECONDS, 2.0**attempt if wait is None else wait))
            continue
        if status in (401, 403):
            raise ProviderError(
                provider.name,
                f"the API refused the credential ({status}); check {provider.credential_variable}",
                reply=response.text,
            )
        if status != 200:
            raise provider.refuse(response, f"reading {where} failed")
        try:
            return response.json()
        except ValueError:
            raise ProviderError(
                provider.name, f"{where} did not answer with JSON", reply=response.text
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def unexpected(provider: HttpProvider, where: str, reply: Any) -> ProviderError:
    return ProviderError(
        provider.name,
        f"{where} answered in a shape this version does not know",
        reply=repr(reply)[:2000],
    )
