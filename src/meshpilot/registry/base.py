"""The interface every service registry implements, and the door it uses to ask for pushes.

A registry keeps its own view of services and endpoints and answers reads from it. When its
view changes it tells the server through an `Updater`: a full push when services changed,
an endpoint-only push (EDS for the named hosts) when only endpoints did.
"""

from __future__ import annotations

from typing import Any, Protocol

from meshpilot.model import Endpoint, PushRequest, Service


class Updater(Protocol):
    """The narrow door inputs use to reach the push pipeline."""

    def config_update(self, request: PushRequest) -> None: ...


class ServiceRegistry(Protocol):
    @property
    def provider(self) -> str:
        """Kind of registry, e.g. `serviceentry`, `consul`."""
        ...

    @property
    def cluster_id(self) -> str: ...

    def services(self) -> list[Service]: ...

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        """Endpoints of one service, every port."""
        ...

    def has_synced(self) -> bool: ...

    async def wait_synced(self) -> None: ...

    async def run(self) -> None:
        """Watch the source until cancelled."""
        ...

    def status(self) -> dict[str, Any]:
        """State for debug pages and metrics: name, connected, synced, stale, counts, errors."""
        ...
