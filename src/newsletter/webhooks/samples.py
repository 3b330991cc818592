"""``newsletter webhooks test``: each provider's documented sample events, signed, posted.

The samples are signed with the secret the app is configured with, so a running app that
answers 401 or 403 to them is set up differently from this newsletter.toml (another secret,
another key) or its clock is off. SES cannot be tested this way: only Amazon holds SNS's
signing key (docs/webhooks.md says how to test it with SES's mailbox simulator).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from newsletter.errors import WebhookConfigError
from newsletter.settings import Settings
from newsletter.webhooks import PREFIX, build_sources


@dataclass(frozen=True)
class SampleResult:
    description: str
    status: int
    answer: str  # what the app said it did, or why nothing came back


def post_samples(
    settings: Settings, source: str, url: str, *, private_key_pem: bytes | None = None
) -> list[SampleResult]:
    """Post the signed samples of ``source`` to the app at ``url`` (its base or the endpoint)."""
    if source == "ses":
        raise WebhookConfigError(
            "ses: only Amazon can sign SNS messages; test the SES webhook by sending to "
            "bounce@simulator.amazonses.com and complaint@simulator.amazonses.com instead"
        )
    configured = build_sources(settings)
    if source not in configured:
        raise WebhookConfigError(
            f"there is no [webhooks.{source}] table in {settings.source or 'the settings'}; "
            "add it first (docs/webhooks.md)"
        )
    endpoint = url.rstrip("/")
    if not endpoint.endswith(PREFIX + source):
        endpoint += PREFIX + source
    results = []
    for sample in configured[source].samples(time.time(), private_key_pem):
        try:
            response = requests.post(endpoint, data=sample.body, headers=sample.headers, timeout=30)
        except requests.RequestException as exc:
            results.append(SampleResult(sample.description, 0, f"no answer: {exc}"))
            continue
        results.append(SampleResult(sample.description, response.status_code, _said(response)))
    return results


def _said(response: requests.Response) -> str:
    if response.status_code == 200:
        try:
            found = response.json()
            return (
                f"recorded {found['recorded']}, duplicates {found['duplicates']}, "
                f"status changes {found['status_changes']}"
            )
        except (ValueError, KeyError, TypeError):
            return "accepted"
    return {
        400: "refused: the app could not read the event",
        401: "refused: the signature or credentials do not match the app's",
        403: "refused: too old, replayed, or not allowed (check the clocks)",
        404: "this source is not switched on in the app's [webhooks]",
        413: "refused: too large",
    }.get(response.status_code, response.reason or "unexpected answer")
