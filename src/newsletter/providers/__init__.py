"""Providers: the adapters that hand messages to a mail service.

Providers are found through the entry-point group ``newsletter.providers``; the built-in ones
register themselves there in pyproject.toml exactly as a third-party package would.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points

from newsletter.errors import ProviderConfigError, ProviderError
from newsletter.providers.base import DeliveryResult, DeliveryStatus, Provider
from newsletter.settings import Settings

ENTRY_POINT_GROUP = "newsletter.providers"

__all__ = [
    "ENTRY_POINT_GROUP",
    "DeliveryResult",
    "DeliveryStatus",
    "Provider",
    "create_provider",
    "installed_providers",
    "load_provider",
    "rehearsal_providers",
]


def installed_providers() -> list[str]:
    """The names of every installed provider, sorted."""
    return sorted({point.name for point in entry_points(group=ENTRY_POINT_GROUP)})


def load_provider(name: str) -> type[Provider]:
    """The provider class registered as ``name``."""
    points = [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]
    if not points:
        installed = ", ".join(installed_providers()) or "none"
        raise ProviderConfigError(
            name or "provider",
            f"no provider named {name!r} is installed; installed providers: {installed}. "
            "Set [provider] name in newsletter.toml to one of them.",
        )
    provider = points[0].load()
    if not (isinstance(provider, type) and issubclass(provider, Provider)):
        raise ProviderConfigError(
            name, f"the entry point {points[0].value} is not a newsletter Provider subclass"
        )
    return provider


def create_provider(
    settings: Settings, name: str | None = None, *, dry_run: bool = False
) -> Provider:
    """The provider ``name`` (default: the settings'), configured from ``[provider]``; not opened."""
    return load_provider(name or settings.provider)(settings, dry_run=dry_run)


def rehearsal_providers(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that deliver nothing (outbox, null); unknown names count as real."""
    found = []
    for name in names:
        try:
            if not load_provider(name).delivers:
                found.append(name)
        except ProviderError:
            pass  # no longer installed: assume it delivered, so nobody gets a second copy
    return found
