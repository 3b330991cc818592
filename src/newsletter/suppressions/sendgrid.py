"""SendGrid's suppression lists: bounces, spam reports and global unsubscribes.

Each list is ``GET /v3/suppression/<list>?limit=500&offset=N``, answered with a JSON array;
pages are read until one comes back shorter than the limit. Blocks (temporary refusals by the
receiving server) and invalid addresses are not synced: they are not a person's decision, and a
block lifts by itself. A bounce whose status is 4.x.x is left alone for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator

from newsletter.providers.http import HttpProvider
from newsletter.store import Status
from newsletter.suppressions.common import Suppression, unexpected

PAGE_SIZE = 500  # SendGrid's documented maximum
LISTS = (
    ("bounces", Status.BOUNCED),
    ("spam_reports", Status.COMPLAINED),
    ("unsubscribes", Status.UNSUBSCRIBED),
)


def fetch(provider: HttpProvider) -> Iterator[Suppression]:
    for list_name, status in LISTS:
        url = f"{provider.base_url}/v3/suppression/{list_name}"
        offset = 0
        while True:
            page = provider.get_json(url, {"limit": PAGE_SIZE, "offset": offset})
            if not isinstance(page, list):
                raise unexpected(provider, list_name, page)
            for item in page:
                found = _suppression(item, status)
                if found is not None:
                    yield found
            if len(page) < PAGE_SIZE:
                break
            offset += len(page)


def _suppression(item: object, status: Status) -> Suppression | None:
    if not isinstance(item, dict) or not isinstance(item.get("email"), str):
        return None
    address = item["email"]
    if status is Status.BOUNCED:
        code = str(item.get("status", "")).strip()
        if code.startswith("4"):
            return None
        detail = " ".join(str(item.get("reason", "")).split())[:200]
        return Suppression(address, status, f"sendgrid bounce {code}: {detail}".rstrip(": "))
    if status is Status.COMPLAINED:
        return Suppression(address, status, "sendgrid spam report")
    return Suppression(address, status, "sendgrid global unsubscribe")
