"""What every suppression list reader shares: the record it yields, and a reply it cannot read.

Reading goes through ``HttpProvider.get_json``, which applies the provider's 401/403/429/5xx
policy, the same one its sends follow.
"""

from __future__ import annotations

from typing import Any

from newsletter.errors import ProviderError
from newsletter.providers.base import Suppression
from newsletter.providers.http import HttpProvider

__all__ = ["Suppression", "unexpected"]


def unexpected(provider: HttpProvider, where: str, reply: Any) -> ProviderError:
    return ProviderError(
        provider.name,
        f"{where} answered in a shape this version does not know",
        reply=repr(reply)[:2000],
    )
