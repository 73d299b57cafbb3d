"""Nacos: services and instances polled over Nacos's HTTP open API (2.x and 3.x).

    nacos://127.0.0.1:8848?namespace=dev&group=DEFAULT_GROUP&pollInterval=5&api=v2

Nacos's own SDKs are told of changes by the server over a gRPC stream. That protocol is
Nacos-internal; over the documented HTTP API a client polls — Nacos 3's documentation says as
much for clients without the gRPC stream. Every `pollInterval` seconds (default 5) the adapter
lists the services of each group (page by page, 500 a page) and reads every service's
instances, a few requests at a time, then hands the complete listing to the catalog, which
pushes only what changed (and deletes services that are gone). Why 5 s: Nacos tells HTTP
clients to refresh a service every `cacheMillis` (10 s); polling at half that keeps the mesh
within a few seconds of the registry at a cost of 1 + services requests per round, which
`pollInterval` trades off for large registries.

API flavours (`api=`), each with the documented paths under `/nacos`:

- `v2` (default; Nacos 2.x, and 3.x with its legacy adapter): `GET /v2/ns/service/list`,
  `GET /v2/ns/instance/list`, answers inside `{code, message, data}`;
- `v1` (Nacos 1.x and 2.x): `GET /v1/ns/service/list` (`{count, doms}`),
  `GET /v1/ns/instance/list` (the bare service info with its `hosts`);
- `v3` (Nacos 3.x): `GET /v3/admin/ns/service/list` (`pageItems`, needs read permission on
  the namespace) and `GET /v3/client/ns/instance/list` (`data` is the list of instances).

Parameters: `namespace` (Nacos namespace id; default `public`), `group` (default
`DEFAULT_GROUP`; several comma-separated — then put `{group}` into the `host=` template, or
services of the same name in two groups collide), `pollInterval` (seconds), `clusters`
(comma-separated cluster names to read; default all), `clusterAs` (`label`, the default, or
`zone` or `region`: where the cluster name goes besides the `nacos.cluster` label),
`ephemeral` (`true` or `false` to read only ephemeral or only persistent instances; default
both), `contextPath` (default `/nacos`), `accessToken` (sent as Nacos's `accessToken`),
`pageSize` (services per listing page, default and at most 500).

Mapping:

- published: instances that are `enabled`, `healthy` and have a weight above 0, as Nacos's
  own client selects them; `fallbackToAll=true` publishes unhealthy ones when none is healthy;
  disabled and zero-weight instances never;
- `metadata` becomes labels, plus `nacos.cluster`, `nacos.group` and `nacos.ephemeral`;
- weights: Nacos weights are decimals (default 1.0). Within a service they are multiplied by
  the smallest of 1, 10 or 100 that makes them all whole numbers, then rounded (at least 1):
  whole weights stay as they are — the same scale as every other registry and ServiceEntry —
  and fractional ones keep their ratios to two decimals (0.5 and 1.0 become 5 and 10,
  0.25 and 1.0 become 25 and 100).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshpilot.model import Protocol
from meshpilot.registry.base import Updater
from meshpilot.registry.catalog import ExternalRegistry, RegistryError
from meshpilot.registry.httpapi import HttpApi, as_dict, as_list, string_map
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import RegistryUrl, RegistryUrlError

log = logging.getLogger("meshpilot.registry.nacos")

DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_GROUP = "DEFAULT_GROUP"
PAGE_SIZE = 500
"""The largest page Nacos serves."""
CONCURRENCY = 8
NOT_FOUND_CODES = frozenset({20004, 21008})
"""Open API codes for "resource not found" and "service not exist": a service deleted between
listing and reading it has no instances, which is not an error."""


def create(url: RegistryUrl, updater: Updater) -> NacosRegistry:
    return NacosRegistry(url, updater)


class NacosRegistry(ExternalRegistry):
    def __init__(self, url: RegistryUrl, updater: Updater) -> None:
        super().__init__(url, updater, MappingRules.from_url(url, Protocol.HTTP))
        self.namespace_id = url.param("namespace") or "public"
        self.groups = [g.strip() for g in (url.param("group") or DEFAULT_GROUP).split(",")
                       if g.strip()]
        self.poll_interval = url.number("pollInterval", DEFAULT_POLL_INTERVAL)
        if self.poll_interval <= 0:
            raise RegistryUrlError(f"{url.text}: pollInterval must be positive")
        self.api = url.param("api", "v2")
        if self.api not in ("v1", "v2", "v3"):
            raise RegistryUrlError(f"{url.text}: api={self.api!r} (v1, v2 or v3)")
        self.cluster_as = url.param("clusterAs", "label")
        if self.cluster_as not in ("label", "zone", "region"):
            raise RegistryUrlError(f"{url.text}: clusterAs={self.cluster_as!r}")
        self.clusters = url.param("clusters")
        ephemeral = url.param("ephemeral")
        self.ephemeral: bool | None = None if not ephemeral else url.flag("ephemeral")
        self.context = "/" + url.param("contextPath", "/nacos").strip("/")
        self._token = url.param("accessToken")
        self.page_size = int(url.number("pageSize", PAGE_SIZE))
        if not 0 < self.page_size <= PAGE_SIZE:
            raise RegistryUrlError(f"{url.text}: pageSize must be 1 to {PAGE_SIZE}")
        self.polls = 0

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["polls"] = self.polls
        return status

    # The watch ---------------------------------------------------------------------------------

    async def watch(self) -> None:
        headers = {"accessToken": self._token} if self._token and self.api == "v3" else {}
        async with HttpApi(self.url, headers) as api:
            while True:
                await self._poll(api)
                await asyncio.sleep(self.poll_interval)

    async def _poll(self, api: HttpApi) -> None:
        names = [(group, name) for group in self.groups for name in await self._services(
            api, group)]
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def read(group: str, name: str) -> list[Instance]:
            async with semaphore:
                return await self._instances(api, group, name)

        listing = await asyncio.gather(*(read(g, n) for g, n in names))
        self.catalog.replace_all({
            _key(group, name): instances
            for (group, name), instances in zip(names, listing, strict=True)
        })
        self.polls += 1
        self.synced()

    # Requests ----------------------------------------------------------------------------------

    def _params(self, **extra: str) -> dict[str, str]:
        params = {"namespaceId": self.namespace_id, **extra}
        if self._token and self.api != "v3":
            params["accessToken"] = self._token
        return params

    async def _services(self, api: HttpApi, group: str) -> list[str]:
        names: list[str] = []
        page = 1
        while True:
            if self.api == "v3":
                path = f"{self.context}/v3/admin/ns/service/list"
                params = self._params(groupNameParam=group, pageNo=str(page),
                                      pageSize=str(self.page_size))
            else:
                path = f"{self.context}/{self.api}/ns/service/list"
                params = self._params(groupName=group, pageNo=str(page),
                                      pageSize=str(self.page_size))
            body = self._data(await api.get(path, params), path)
            data = as_dict(body, path)
            if self.api == "v3":
                items = as_list(data.get("pageItems") or [], path)
                found = [str(i["name"]) for i in items
                         if isinstance(i, dict) and i.get("groupName", group) == group]
                total = int(data.get("totalCount") or 0)
                batch = len(items)
            else:
                found = [str(n) for n in as_list(
                    data.get("services" if self.api == "v2" else "doms") or [], path)]
                total = int(data.get("count") or 0)
                batch = len(found)
            names.extend(found)
            if batch < self.page_size or page * self.page_size >= total:
                return names
            page += 1

    async def _instances(self, api: HttpApi, group: str, name: str) -> list[Instance]:
        params = self._params(serviceName=name, groupName=group)
        if self.api == "v3":
            path = f"{self.context}/v3/client/ns/instance/list"
            if self.clusters:
                params["clusterName"] = self.clusters
        else:
            path = f"{self.context}/{self.api}/ns/instance/list"
            params["healthyOnly"] = "false"  # health is decided here (fallbackToAll)
            if self.clusters:
                params["clusters" if self.api == "v1" else "clusterName"] = self.clusters
        response = await api.get(path, params, ok=(200, 404, 400, 500))
        body = response.body
        if isinstance(body, dict) and body.get("code") in NOT_FOUND_CODES:
            return []
        if response.status != 200:
            raise RegistryError(f"GET {path} {name}: HTTP {response.status}: {body!r:.200}")
        data = self._data(response, path)
        hosts = data if self.api == "v3" else as_dict(data, path).get("hosts") or []
        raw = [as_dict(h, "host") for h in as_list(hosts, path)]
        return self._convert(group, name, raw)

    def _data(self, response: Any, path: str) -> Any:
        """The payload: v1 answers bare, v2 and v3 inside `{code, message, data}`."""
        body = response.body
        if self.api == "v1":
            return body
        envelope = as_dict(body, path)
        if envelope.get("code") != 0:
            raise RegistryError(f"{path}: code {envelope.get('code')}: {envelope.get('message')}")
        return envelope.get("data")

    # Conversion --------------------------------------------------------------------------------

    def _convert(self, group: str, name: str, hosts: list[dict[str, Any]]) -> list[Instance]:
        usable = [
            h for h in hosts
            if h.get("enabled", True) is not False
            and _weight(h) > 0
            and (self.ephemeral is None or bool(h.get("ephemeral", True)) == self.ephemeral)
        ]
        scale = _weight_scale([_weight(h) for h in usable])
        instances = []
        for host in usable:
            ip, port = host.get("ip"), host.get("port")
            if not isinstance(ip, str) or not ip or not isinstance(port, int) or port <= 0:
                raise RegistryError(f"Nacos service {group}@@{name}: instance without ip/port")
            cluster = str(host.get("clusterName") or "DEFAULT")
            metadata = string_map(host.get("metadata"))
            metadata.update({
                "nacos.cluster": cluster,
                "nacos.group": group,
                "nacos.ephemeral": str(bool(host.get("ephemeral", True))).lower(),
            })
            if self.cluster_as != "label" and not ({"locality", "zone", "region"} & set(
                    metadata)):
                metadata[self.cluster_as] = cluster
            instances.append(Instance(
                service=name,
                id=str(host.get("instanceId") or f"{ip}#{port}#{cluster}#{group}@@{name}"),
                address=ip,
                ports={"": port},
                metadata=metadata,
                healthy=host.get("healthy", True) is not False,
                weight=max(1, round(_weight(host) * scale)),
                group=group,
            ))
        return instances


def _key(group: str, name: str) -> str:
    """The catalog's key for a service: Nacos's own `group@@name` form."""
    return f"{group}@@{name}"


def _weight(host: dict[str, Any]) -> float:
    value = host.get("weight", 1.0)
    return float(value) if isinstance(value, int | float) else 1.0


def _weight_scale(weights: list[float]) -> int:
    """The smallest of 1, 10, 100 that makes every weight whole (to two decimals)."""
    for scale in (1, 10):
        if all(abs(w * scale - round(w * scale)) < 1e-6 for w in weights):
            return scale
    return 100
