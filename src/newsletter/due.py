"""``newsletter run-due``: whatever is due now, for cron or a systemd timer every few minutes.

Two kinds of work, in this order:

- the subscribe form's queue: confirmation emails not sent yet (the app's worker may be off,
  ``[web] confirmations = "run-due"``, or the provider was down), and requests that have
  outlived their link;
- scheduled sends whose moment has come (``newsletter schedule``; see ``schedule.py``),
  started or resumed through the same path as ``newsletter send``.

Every step is idempotent and claims its work in the store (or, for a send, the issue's lock
and its journal), so two copies running at once (two hosts' timers, or the app's thread and
cron) never send an email twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from newsletter.confirmation import DrainReport, SendConfirmation, drain, send_confirmation
from newsletter.schedule import DueOptions, DueSend, send_due
from newsletter.settings import Settings
from newsletter.subscribe_requests import limits_from_settings
from newsletter.tokens import Signer


@dataclass
class DueReport:
    confirmations: DrainReport
    sends: list[DueSend] = field(default_factory=list)


def run_due(
    settings: Settings,
    *,
    now: float | None = None,
    send: SendConfirmation = send_confirmation,
    options: DueOptions | None = None,
) -> DueReport:
    options = options or DueOptions()
    moment = options.clock().timestamp() if now is None else now
    signer = Signer.for_settings(settings)
    confirmations = drain(settings, signer, limits_from_settings(settings), now=moment, send=send)
    return DueReport(confirmations, send_due(settings, options))
