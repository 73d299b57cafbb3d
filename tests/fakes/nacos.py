"""A fake Nacos server: the naming part of Nacos's HTTP open API, v1, v2 and v3.

Reproduced, as Nacos's open-API documentation describes it (all under `/nacos`):

- namespaces by `namespaceId` (default `public`) and groups by `groupName` (default
  `DEFAULT_GROUP`); a service's full name is `<group>@@<service>`;
- service lists, paged by `pageNo`/`pageSize` (at most 500):
  `GET /v1/ns/service/list` → `{"count": n, "doms": [...]}`,
  `GET /v2/ns/service/list` → `{"code": 0, "message": "success", "data": {"count": n,
  "services": [...]}}`,
  `GET /v3/admin/ns/service/list` (`groupNameParam`) → `data: {"totalCount", "pageNumber",
  "pagesAvailable", "pageItems": [{"name", "groupName", "clusterCount", "ipCount",
  "healthyInstanceCount", "triggerFlag"}]}`;
- instance lists: `GET /v1/ns/instance/list` → the service info (`name`, `groupName`,
  `clusters`, `cacheMillis` 10000, `hosts`, `lastRefTime`, `checksum`, `allIPs`,
  `reachProtectionThreshold`, `valid`), `clusters=` and `healthyOnly=` filters;
  `GET /v2/ns/instance/list` → the same inside the `{code, message, data}` envelope,
  `clusterName=` and `healthyOnly=`; `GET /v3/client/ns/instance/list` → `data` is the list of
  instances, `clusterName=`; an unknown service has no instances;
- instances: `instanceId` (`ip#port#cluster#group@@service`), `ip`, `port`, `weight` (a
  double), `healthy`, `enabled`, `ephemeral`, `clusterName`, `serviceName`
  (`group@@service`), `metadata`, `instanceHeartBeatInterval`, `instanceHeartBeatTimeOut`,
  `ipDeleteTimeout`, `instanceIdGenerator`;
- writes: `POST`, `PUT` and `DELETE /v1/ns/instance` (form or query parameters `ip`, `port`,
  `serviceName`, `groupName`, `namespaceId`, `clusterName`, `weight`, `enabled`, `healthy`,
  `ephemeral`, `metadata` as a JSON string) answering `ok`, and the same at `/v2/ns/instance`
  answering `{"code": 0, "message": "success", "data": "ok"}`.

Not reproduced: the gRPC push channel, UDP push, authentication, the protection threshold,
selectors, server-side health checking (health is whatever was registered or set).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer

DEFAULT_GROUP = "DEFAULT_GROUP"


class FakeNacos(FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.registry: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
        """namespaceId → (group, service) → instances."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/nacos/v1/ns/service/list", self._service_list_v1)
        app.router.add_get("/nacos/v2/ns/service/list", self._service_list_v2)
        app.router.add_get("/nacos/v3/admin/ns/service/list", self._service_list_v3)
        app.router.add_get("/nacos/v1/ns/instance/list", self._instance_list_v1)
        app.router.add_get("/nacos/v2/ns/instance/list", self._instance_list_v2)
        app.router.add_get("/nacos/v3/client/ns/instance/list", self._instance_list_v3)
        for version in ("v1", "v2"):
            for method in ("POST", "PUT", "DELETE"):
                app.router.add_route(method, f"/nacos/{version}/ns/instance", self._write)

    # State changes (also used directly by tests) ----------------------------------------------

    def register(self, service: str, ip: str, port: int, *, group: str = DEFAULT_GROUP,
                 namespace: str = "public", cluster: str = "DEFAULT", weight: float = 1.0,
                 healthy: bool = True, enabled: bool = True, ephemeral: bool = True,
                 metadata: dict[str, str] | None = None) -> None:
        instances = self.registry.setdefault(namespace, {}).setdefault((group, service), [])
        instances[:] = [i for i in instances if (i["ip"], i["port"], i["clusterName"]) != (
            ip, port, cluster)]
        instances.append({
            "instanceId": f"{ip}#{port}#{cluster}#{group}@@{service}",
            "ip": ip,
            "port": port,
            "weight": float(weight),
            "healthy": healthy,
            "enabled": enabled,
            "ephemeral": ephemeral,
            "clusterName": cluster,
            "serviceName": f"{group}@@{service}",
            "metadata": dict(metadata or {}),
            "instanceHeartBeatInterval": 5000,
            "instanceHeartBeatTimeOut": 15000,
            "ipDeleteTimeout": 30000,
            "instanceIdGenerator": "simple",
        })

    def update(self, service: str, ip: str, port: int, *, group: str = DEFAULT_GROUP,
               namespace: str = "public", **fields: Any) -> None:
        for instance in self.registry.get(namespace, {}).get((group, service), []):
            if (instance["ip"], instance["port"]) == (ip, port):
                instance.update(fields)

    def deregister(self, service: str, ip: str, port: int, *, group: str = DEFAULT_GROUP,
                   namespace: str = "public") -> None:
        services = self.registry.get(namespace, {})
        instances = services.get((group, service), [])
        instances[:] = [i for i in instances if (i["ip"], i["port"]) != (ip, port)]
        # Nacos keeps empty services for a while; they list with no instances.

    # Reads -------------------------------------------------------------------------------------

    @staticmethod
    def _namespace(request: web.Request) -> str:
        return request.query.get("namespaceId") or "public"

    def _names(self, request: web.Request, group_key: str = "groupName") -> list[str]:
        group = request.query.get(group_key) or DEFAULT_GROUP
        services = self.registry.get(self._namespace(request), {})
        return sorted(name for (g, name) in services if g == group)

    @staticmethod
    def _page(request: web.Request, items: list[Any]) -> tuple[list[Any], int, int]:
        page = max(int(request.query.get("pageNo", "1")), 1)
        size = min(max(int(request.query.get("pageSize", "20")), 1), 500)
        return items[(page - 1) * size: page * size], page, size

    @staticmethod
    def _ok(data: Any) -> web.Response:
        return web.json_response({"code": 0, "message": "success", "data": data})

    async def _service_list_v1(self, request: web.Request) -> web.Response:
        names = self._names(request)
        page, _, _ = self._page(request, names)
        return web.json_response({"count": len(names), "doms": page})

    async def _service_list_v2(self, request: web.Request) -> web.Response:
        names = self._names(request)
        page, _, _ = self._page(request, names)
        return self._ok({"count": len(names), "services": page})

    async def _service_list_v3(self, request: web.Request) -> web.Response:
        group = request.query.get("groupNameParam") or DEFAULT_GROUP
        services = self.registry.get(self._namespace(request), {})
        items = [{
            "name": name,
            "groupName": g,
            "clusterCount": len({i["clusterName"] for i in instances}),
            "ipCount": len(instances),
            "healthyInstanceCount": sum(1 for i in instances if i["healthy"]),
            "triggerFlag": "false",
        } for (g, name), instances in sorted(services.items()) if g == group]
        page, number, size = self._page(request, items)
        return self._ok({"totalCount": len(items), "pageNumber": number,
                         "pagesAvailable": (len(items) + size - 1) // size, "pageItems": page})

    def _hosts(self, request: web.Request, cluster_key: str) -> tuple[str, str, list[Any]]:
        group = request.query.get("groupName") or DEFAULT_GROUP
        name = request.query["serviceName"]
        hosts = [dict(i) for i in self.registry.get(self._namespace(request), {}).get(
            (group, name), [])]
        clusters = [c for c in request.query.get(cluster_key, "").split(",") if c]
        if clusters:
            hosts = [h for h in hosts if h["clusterName"] in clusters]
        if request.query.get("healthyOnly", "false") == "true":
            hosts = [h for h in hosts if h["healthy"]]
        return group, name, hosts

    def _service_info(self, group: str, name: str, clusters: str, hosts: list[Any]) -> dict[
        str, Any
    ]:
        return {
            "name": f"{group}@@{name}",
            "groupName": group,
            "clusters": clusters,
            "cacheMillis": 10000,
            "hosts": hosts,
            "lastRefTime": int(time.time() * 1000),
            "checksum": "",
            "allIPs": False,
            "reachProtectionThreshold": False,
            "valid": True,
        }

    async def _instance_list_v1(self, request: web.Request) -> web.Response:
        group, name, hosts = self._hosts(request, "clusters")
        return web.json_response(self._service_info(group, name, request.query.get(
            "clusters", ""), hosts))

    async def _instance_list_v2(self, request: web.Request) -> web.Response:
        group, name, hosts = self._hosts(request, "clusterName")
        return self._ok(self._service_info(group, name, request.query.get(
            "clusterName", ""), hosts))

    async def _instance_list_v3(self, request: web.Request) -> web.Response:
        _, _, hosts = self._hosts(request, "clusterName")
        return self._ok(hosts)

    # Writes over HTTP ----------------------------------------------------------------------------

    async def _write(self, request: web.Request) -> web.Response:
        form = {**request.query, **(await request.post())}
        values = {k: str(v) for k, v in form.items()}
        service, ip, port = values["serviceName"], values["ip"], int(values["port"])
        group = values.get("groupName") or DEFAULT_GROUP
        namespace = values.get("namespaceId") or "public"
        if request.method == "DELETE":
            self.deregister(service, ip, port, group=group, namespace=namespace)
        else:
            self.register(
                service, ip, port, group=group, namespace=namespace,
                cluster=values.get("clusterName") or "DEFAULT",
                weight=float(values.get("weight", "1.0")),
                healthy=values.get("healthy", "true") == "true",
                enabled=values.get("enabled", "true") == "true",
                ephemeral=values.get("ephemeral", "true") == "true",
                metadata=json.loads(values["metadata"]) if values.get("metadata") else None,
            )
        if "/v2/" in request.path:
            return self._ok("ok")
        return web.Response(text="ok")
