"""Registry adapters found by URL scheme through Python entry points.

Each adapter is registered in the `meshpilot.registries` entry-point group under its scheme
(`consul`, `etcd`, …) and points at a factory `create(url, updater) -> ServiceRegistry`. Users
add their own registries by publishing a package with an entry point in the same group; no
change to meshpilot is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from meshpilot.registry.base import ServiceRegistry, Updater
from meshpilot.registry.urls import RegistryUrl, RegistryUrlError, parse_registry_url

GROUP = "meshpilot.registries"

Factory = Callable[[RegistryUrl, Updater], ServiceRegistry]


def registered() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def create_registry(text: str, updater: Updater) -> ServiceRegistry:
    """The registry adapter for a URL, or RegistryUrlError naming the schemes available."""
    available = registered()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme and scheme not in available:  # before the address: its rules are the scheme's
        known = ", ".join(sorted(available)) or "none installed"
        raise RegistryUrlError(f"{text!r}: no registry adapter for {scheme!r} ({known})")
    url = parse_registry_url(text)
    entry = available.get(url.scheme)
    if entry is None:
        known = ", ".join(sorted(available)) or "none installed"
        raise RegistryUrlError(f"{text!r}: no registry adapter for {url.scheme!r} ({known})")
    factory: Factory = entry.load()
    return factory(url, updater)
