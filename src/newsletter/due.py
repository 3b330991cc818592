"""``newsletter run-due``: whatever is due now, for cron or a systemd timer every few minutes.

Today that is the subscribe form's queue: confirmation emails not sent yet (the app's worker
may be off, ``[web] confirmations = "run-due"``, or the provider was down), and requests that
have outlived their link. Every step is idempotent and claims its work in the store, so two
copies running at once (two hosts' timers, or the app's thread and cron) never send an email
twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from newsletter.confirmation import DrainReport, SendConfirmation, drain, send_confirmation
from newsletter.settings import Settings
from newsletter.subscribe_requests import limits_from_settings
from newsletter.tokens import Signer


@dataclass
class DueReport:
    confirmations: DrainReport


def run_due(
    settings: Settings, *, now: float | None = None, send: SendConfirmation = send_confirmation
) -> DueReport:
    moment = time.time() if now is None else now
    signer = Signer.for_settings(settings)
    return DueReport(drain(settings, signer, limits_from_settings(settings), now=moment, send=send))
