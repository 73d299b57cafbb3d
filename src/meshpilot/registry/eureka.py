"""Eureka: a full fetch, then deltas, reconciled by the registry's hash code — what Eureka's own
clients do, over its REST API with `Accept: application/json`.

    eureka://127.0.0.1:8761/eureka?pollInterval=5

How it watches:

1. `GET <path>/apps` (path `/eureka` by default, as Spring Cloud serves it; Netflix's own server
   uses `/eureka/v2`) returns every application with every instance, whatever its status. That
   is the local view; the registry is synced.
2. Every `pollInterval` seconds `GET <path>/apps/delta` returns the instances the server saw
   change recently (its delta queue keeps about three minutes), each with an `actionType`:
   ADDED and MODIFIED replace the instance in the view, DELETED removes it.
3. Both answers carry `apps__hashcode`, the server's summary of its whole registry: for each
   instance status, in sorted order, `<STATUS>_<count>_` (e.g. `DOWN_1_UP_3_`). The same code
   is computed over the local view after applying a delta; if they differ (a delta was missed —
   the poll came too late or the server restarted), the view is thrown away and fetched in
   full again. A server with deltas disabled (HTTP 403) is fetched in full every time.

Only services whose instances changed are handed to the catalog after a delta; a full fetch
hands over the complete listing, which also deletes applications that are gone.

Why 5 s by default rather than Eureka clients' 30 s: a delta is one small request, and the
mesh should follow the registry as closely as the server lets it. The server itself only
refreshes its response cache every 30 s by default (`responseCacheUpdateIntervalMs`), which
bounds what any poll interval can achieve; the interval must stay well under the delta
retention (3 minutes) or every poll ends in a full fetch.

Mapping:

- status `UP` is healthy; `DOWN`, `STARTING` and `UNKNOWN` are unhealthy (published only under
  `fallbackToAll=true` when no instance is UP); `OUT_OF_SERVICE` — taken out on purpose — is
  never published;
- the service is the instance's `vipAddress` (its first entry when comma-separated; the app
  name when empty), or the app name with `serviceName=app`; host names are lower-cased;
- one port: the non-secure `port` named `http` when `@enabled`, else the `securePort` named
  `https` when only that one is enabled (instances with neither are skipped);
- the address is `ipAddr`, else `hostName`; `metadata` becomes labels (Eureka's `@class`
  marker dropped); an AWS `dataCenterInfo` `availability-zone` gives the locality's zone
  and region.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meshpilot.model import Protocol
from meshpilot.registry.base import Updater
from meshpilot.registry.catalog import ExternalRegistry, RegistryError
from meshpilot.registry.httpapi import HttpApi, HttpError, as_dict, string_map
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import RegistryUrl, RegistryUrlError

log = logging.getLogger("meshpilot.registry.eureka")

DEFAULT_PATH = "/eureka"
DEFAULT_POLL_INTERVAL = 5.0
JSON_HEADERS = {"Accept": "application/json"}


def create(url: RegistryUrl, updater: Updater) -> EurekaRegistry:
    return EurekaRegistry(url, updater)


@dataclass(frozen=True, slots=True)
class _Record:
    """One instance as Eureka describes it: its status and what the mesh would publish."""

    app: str
    id: str
    status: str
    service: str
    instance: Instance | None
    """None when the instance has no enabled port or is OUT_OF_SERVICE."""


def reconcile_hashcode(statuses: Iterable[str]) -> str:
    """Eureka's `apps__hashcode`: `<STATUS>_<count>_` for each status, sorted by status."""
    counts = collections.Counter(statuses)
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


class EurekaRegistry(ExternalRegistry):
    def __init__(self, url: RegistryUrl, updater: Updater) -> None:
        super().__init__(url, updater, MappingRules.from_url(url, Protocol.HTTP))
        self.base = (url.path or DEFAULT_PATH).rstrip("/")
        self.poll_interval = url.number("pollInterval", DEFAULT_POLL_INTERVAL)
        if self.poll_interval <= 0:
            raise RegistryUrlError(f"{url.text}: pollInterval must be positive")
        self.by_vip = url.param("serviceName", "vip") != "app"
        self._view: dict[tuple[str, str], _Record] = {}
        self.full_fetches = 0
        self.delta_fetches = 0
        self._delta_disabled = False

    def status(self) -> dict[str, Any]:
        status = super().status()
        status.update(fullFetches=self.full_fetches, deltaFetches=self.delta_fetches)
        return status

    # The watch ---------------------------------------------------------------------------------

    async def watch(self) -> None:
        async with HttpApi(self.url, JSON_HEADERS) as api:
            await self._full_fetch(api)
            while True:
                await asyncio.sleep(self.poll_interval)
                if self._delta_disabled or not await self._delta(api):
                    await self._full_fetch(api)

    async def _full_fetch(self, api: HttpApi) -> None:
        response = await api.get(f"{self.base}/apps")
        self.full_fetches += 1
        records, _ = self._parse(response.body)
        self._view = {(r.app, r.id): r for r in records}
        by_service: dict[str, list[Instance]] = collections.defaultdict(list)
        for record in self._view.values():
            if record.instance is not None:
                by_service[record.service].append(record.instance)
        self.catalog.replace_all(by_service)
        self.synced()

    async def _delta(self, api: HttpApi) -> bool:
        """Apply a delta; False when it cannot be trusted and a full fetch is needed."""
        try:
            response = await api.get(f"{self.base}/apps/delta")
        except HttpError as error:
            if error.status != 403:
                raise
            log.info("registry %s: deltas disabled on the server; fetching in full",
                     self.url.name)
            self._delta_disabled = True
            return False
        self.delta_fetches += 1
        records, server_hash = self._parse(response.body)
        changed: set[str] = set()
        for record, action in records_with_actions(records, response.body):
            key = (record.app, record.id)
            before = self._view.pop(key, None)
            if before is not None:
                changed.add(before.service)
            if action != "DELETED":
                self._view[key] = record
            changed.add(record.service)
        local_hash = reconcile_hashcode(r.status for r in self._view.values())
        if local_hash != server_hash:
            log.info("registry %s: hash code %r after delta, server has %r; fetching in full",
                     self.url.name, local_hash, server_hash)
            return False
        for service in sorted(changed):
            self.catalog.replace(service, [
                r.instance for r in self._view.values()
                if r.service == service and r.instance is not None
            ])
        self.synced()
        return True

    # Parsing -----------------------------------------------------------------------------------

    def _parse(self, body: Any) -> tuple[list[_Record], str]:
        root = as_dict(as_dict(body, "Eureka response").get("applications"), "applications")
        records = [
            self._record(as_dict(raw, "instance"))
            for app in _one_or_many(root.get("application"))
            for raw in _one_or_many(as_dict(app, "application").get("instance"))
        ]
        return records, str(root.get("apps__hashcode", ""))

    def _record(self, raw: dict[str, Any]) -> _Record:
        app = str(raw.get("app") or "").upper()
        address = str(raw.get("ipAddr") or raw.get("hostName") or "")
        instance_id = str(raw.get("instanceId") or raw.get("hostName") or address)
        status = str(raw.get("status") or "UNKNOWN").upper()
        if not app or not instance_id:
            raise RegistryError("Eureka instance without app or instanceId")
        plain, secure = _port(raw.get("port")), _port(raw.get("securePort"))
        if plain is not None:
            ports, vip = {"http": plain}, raw.get("vipAddress")
        elif secure is not None:
            ports, vip = {"https": secure}, raw.get("secureVipAddress") or raw.get("vipAddress")
        else:
            ports, vip = {}, None
        service = app.lower()
        if self.by_vip and isinstance(vip, str) and vip.strip():
            service = vip.split(",")[0].strip()
        metadata = string_map(raw.get("metadata"))
        metadata.pop("@class", None)
        zone = _availability_zone(raw.get("dataCenterInfo"))
        if zone and not ({"locality", "zone", "region"} & set(metadata)):
            metadata.update(region=zone.rstrip("abcdefghijklmnopqrstuvwxyz") or zone, zone=zone)
        instance = None
        if ports and address and status != "OUT_OF_SERVICE":
            instance = Instance(
                service=service,
                id=instance_id,
                address=address,
                ports=ports,
                metadata=metadata,
                healthy=status == "UP",
            )
        return _Record(app, instance_id, status, service, instance)


def records_with_actions(records: list[_Record], body: Any) -> list[tuple[_Record, str]]:
    """Pair parsed delta records with their `actionType` (same order as `_parse`)."""
    root = body["applications"]
    actions = [
        str(raw.get("actionType") or "MODIFIED").upper()
        for app in _one_or_many(root.get("application"))
        for raw in _one_or_many(app.get("instance"))
    ]
    return list(zip(records, actions, strict=True))


def _one_or_many(value: Any) -> list[Any]:
    """Eureka's older JSON codec writes a one-element list as the element itself."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _port(value: Any) -> int | None:
    """`{"$": 8080, "@enabled": "true"}` → 8080 when enabled (a bare number counts as enabled)."""
    if isinstance(value, dict):
        enabled = str(value.get("@enabled", "true")).lower() == "true"
        number = value.get("$")
    else:
        enabled, number = True, value
    try:
        port = int(number) if number is not None else 0
    except (TypeError, ValueError):
        return None
    return port if enabled and 0 < port < 65536 else None


def _availability_zone(info: Any) -> str:
    if not isinstance(info, dict):
        return ""
    metadata = info.get("metadata")
    if isinstance(metadata, dict):
        return str(metadata.get("availability-zone") or "")
    return ""
