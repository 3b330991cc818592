"""Resend: the contacts it marks unsubscribed.

Resend's API has no list of bounces or complaints (it reports those only through webhooks), so
sync reads what it has: ``GET /contacts?limit=100&after=<last id>``, answered with ``data`` and
``has_more``, and marks the contacts whose ``unsubscribed`` is true.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from newsletter.providers.http import HttpProvider
from newsletter.store import Status
from newsletter.suppressions.common import Suppression, unexpected

PAGE_SIZE = 100  # Resend's documented maximum


def fetch(provider: HttpProvider) -> Iterator[Suppression]:
    url = f"{provider.base_url}/contacts"
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    while True:
        page = provider.get_json(url, params)
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise unexpected(provider, "contacts", page)
        for contact in data:
            if (
                isinstance(contact, dict)
                and contact.get("unsubscribed") is True
                and isinstance(contact.get("email"), str)
            ):
                yield Suppression(
                    contact["email"], Status.UNSUBSCRIBED, "resend contact unsubscribed"
                )
        last_id = data[-1].get("id") if data and isinstance(data[-1], dict) else None
        if page.get("has_more") is not True or not isinstance(last_id, str):
            break
        params = {"limit": PAGE_SIZE, "after": last_id}
