"""Mailgun's suppression lists: bounces, complaints and unsubscribes of the sending domain.

Each list is ``GET /v3/<domain>/<list>?limit=1000``, answered with ``items`` and ``paging``
URLs; the ``next`` URL is followed until a page comes back with no items. Mailgun's bounce
list holds permanent failures, but an item whose SMTP code is 4xx is left alone all the same.
"""

from __future__ import annotations

from collections.abc import Iterator

from newsletter.errors import ProviderError
from newsletter.providers.http import HttpProvider
from newsletter.providers.mailgun import MailgunProvider
from newsletter.store import Status
from newsletter.suppressions.common import Suppression, unexpected

PAGE_SIZE = 1000  # Mailgun's documented maximum
LISTS = (
    ("bounces", Status.BOUNCED),
    ("complaints", Status.COMPLAINED),
    ("unsubscribes", Status.UNSUBSCRIBED),
)


def fetch(provider: HttpProvider) -> Iterator[Suppression]:
    assert isinstance(provider, MailgunProvider)
    for list_name, status in LISTS:
        url = f"{provider.base_url}/v3/{provider.domain}/{list_name}"
        params: dict[str, int] | None = {"limit": PAGE_SIZE}
        followed = {url}
        while True:
            page = provider.get_json(url, params)
            items = page.get("items") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise unexpected(provider, list_name, page)
            if not items:
                break
            for item in items:
                found = _suppression(item, status)
                if found is not None:
                    yield found
            paging = page.get("paging")
            next_url = paging.get("next") if isinstance(paging, dict) else None
            if not isinstance(next_url, str) or not next_url or next_url in followed:
                break
            # The session carries the API key: follow only links to the same API.
            if not next_url.startswith(provider.base_url + "/"):
                raise ProviderError(
                    provider.name, f"the next page of {list_name} is on another host: {next_url}"
                )
            followed.add(next_url)
            url, params = next_url, None


def _suppression(item: object, status: Status) -> Suppression | None:
    if not isinstance(item, dict) or not isinstance(item.get("address"), str):
        return None
    address = item["address"]
    if status is Status.BOUNCED:
        code = str(item.get("code", "")).strip()
        if code.startswith("4"):
            return None  # a temporary failure is not a reason to stop mailing
        error = " ".join(str(item.get("error", "")).split())[:200]
        return Suppression(address, status, f"mailgun bounce {code}: {error}".rstrip(": "))
    if status is Status.COMPLAINED:
        return Suppression(address, status, "mailgun spam complaint")
    return Suppression(address, status, "mailgun unsubscribe")
