"""A fake Eureka server: the REST operations Eureka documents for non-Java clients, in JSON.

Reproduced (paths under `/eureka`, as Spring Cloud's Eureka server serves them):

- `GET /eureka/apps` → `{"applications": {"versions__delta": "…", "apps__hashcode": "…",
  "application": [{"name": "APP", "instance": [...]}]}}`, every instance whatever its status;
- `GET /eureka/apps/delta` → the same shape holding only the instances changed within the
  delta retention (`delta_retention`, 180 s like the server's default
  `retentionTimeInMSInDeltaQueue`), each with `actionType` ADDED, MODIFIED or DELETED, and the
  `apps__hashcode` of the *whole* registry; `disable_delta = True` answers 403 (the server's
  `disableDelta`);
- `apps__hashcode`: for each status in sorted order `<STATUS>_<count>_`, over all instances;
- instances as Eureka's JSON codec writes them: `instanceId`, `hostName`, `app` (upper case),
  `ipAddr`, `status`, `overriddenStatus`, `port` and `securePort` as `{"$": n, "@enabled":
  "true"|"false"}`, `vipAddress`, `secureVipAddress`, `dataCenterInfo` (`@class`, `name`),
  `leaseInfo`, `metadata` (with `"@class": "java.util.Collections$EmptyMap"` when empty),
  `lastUpdatedTimestamp`, `lastDirtyTimestamp`, `actionType`;
- JSON only for `Accept: application/json`; any other Accept gets XML, Eureka's default (here a
  minimal document, which a JSON client cannot read);
- writes: `POST /eureka/apps/<APP>` with `{"instance": {…}}` → 204 (registers or replaces),
  `DELETE /eureka/apps/<APP>/<id>` → 200 (404 when unknown),
  `PUT /eureka/apps/<APP>/<id>/status?value=OUT_OF_SERVICE` → 200 (status override),
  `DELETE /eureka/apps/<APP>/<id>/status` → 200 (override removed, back to UP),
  `PUT /eureka/apps/<APP>/<id>` (heartbeat) → 200 or 404.

Not reproduced: the server's 30 s read-only response cache (answers are always current),
lease expiry and self-preservation, remote regions, XML payloads, peer replication.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer


def hashcode(statuses: list[str]) -> str:
    counts = collections.Counter(statuses)
    return "".join(f"{s}_{counts[s]}_" for s in sorted(counts))


class FakeEureka(FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.apps: dict[str, dict[str, dict[str, Any]]] = {}
        self.delta_retention = 180.0
        self.disable_delta = False
        self._recent: list[tuple[float, dict[str, Any]]] = []
        self._version = 1

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/eureka/apps", self._get_apps)
        app.router.add_get("/eureka/apps/delta", self._get_delta)
        app.router.add_post("/eureka/apps/{app}", self._post_instance)
        app.router.add_delete("/eureka/apps/{app}/{id}", self._delete_instance)
        app.router.add_put("/eureka/apps/{app}/{id}/status", self._put_status)
        app.router.add_delete("/eureka/apps/{app}/{id}/status", self._delete_status)
        app.router.add_put("/eureka/apps/{app}/{id}", self._heartbeat)

    # State changes (also used directly by tests) ----------------------------------------------

    def _changed(self, instance: dict[str, Any], action: str) -> None:
        now = time.time()
        instance["lastUpdatedTimestamp"] = instance["lastDirtyTimestamp"] = str(int(now * 1000))
        self._recent.append((now, {**instance, "actionType": action}))
        self._version += 1

    def register(self, instance: dict[str, Any]) -> None:
        app = str(instance["app"]).upper()
        instance = {**instance, "app": app}
        metadata = instance.get("metadata") or {}
        instance["metadata"] = metadata or {"@class": "java.util.Collections$EmptyMap"}
        known = self.apps.setdefault(app, {})
        action = "MODIFIED" if instance["instanceId"] in known else "ADDED"
        known[instance["instanceId"]] = instance
        self._changed(instance, action)

    def deregister(self, app: str, instance_id: str) -> bool:
        instances = self.apps.get(app.upper(), {})
        instance = instances.pop(instance_id, None)
        if instance is None:
            return False
        if not instances:
            del self.apps[app.upper()]
        self._changed(dict(instance), "DELETED")
        return True

    def set_status(self, app: str, instance_id: str, status: str, override: bool = False) -> bool:
        instance = self.apps.get(app.upper(), {}).get(instance_id)
        if instance is None:
            return False
        instance["status"] = status
        instance["overriddenStatus"] = status if override else "UNKNOWN"
        self._changed(instance, "MODIFIED")
        return True

    # Reads -------------------------------------------------------------------------------------

    def _all(self) -> list[dict[str, Any]]:
        return [i for instances in self.apps.values() for i in instances.values()]

    def _document(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        by_app: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for instance in instances:
            by_app[instance["app"]].append(instance)
        return {"applications": {
            "versions__delta": str(self._version),
            "apps__hashcode": hashcode([i["status"] for i in self._all()]),
            "application": [{"name": name, "instance": items}
                            for name, items in sorted(by_app.items())],
        }}

    def _respond(self, request: web.Request, document: dict[str, Any]) -> web.Response:
        if "application/json" not in request.headers.get("Accept", ""):
            return web.Response(text="<applications><versions__delta>1</versions__delta>"
                                "</applications>", content_type="application/xml")
        return web.json_response(document)

    async def _get_apps(self, request: web.Request) -> web.Response:
        plain = [{k: v for k, v in i.items() if k != "actionType"} for i in self._all()]
        return self._respond(request, self._document(plain))

    async def _get_delta(self, request: web.Request) -> web.Response:
        if self.disable_delta:
            return web.Response(status=403, text="delta disabled")
        horizon = time.time() - self.delta_retention
        self._recent = [(t, i) for t, i in self._recent if t >= horizon]
        return self._respond(request, self._document([i for _, i in self._recent]))

    # Writes over HTTP ----------------------------------------------------------------------------

    async def _post_instance(self, request: web.Request) -> web.Response:
        body = await request.json()
        instance = dict(body["instance"])
        instance.setdefault("app", request.match_info["app"])
        self.register(instance)
        return web.Response(status=204)

    async def _delete_instance(self, request: web.Request) -> web.Response:
        found = self.deregister(request.match_info["app"], request.match_info["id"])
        return web.Response(status=200 if found else 404)

    async def _put_status(self, request: web.Request) -> web.Response:
        value = request.query.get("value", "UP")
        found = self.set_status(request.match_info["app"], request.match_info["id"], value,
                                override=True)
        return web.Response(status=200 if found else 500)

    async def _delete_status(self, request: web.Request) -> web.Response:
        found = self.set_status(request.match_info["app"], request.match_info["id"],
                                request.query.get("value", "UP"))
        return web.Response(status=200 if found else 500)

    async def _heartbeat(self, request: web.Request) -> web.Response:
        known = request.match_info["id"] in self.apps.get(request.match_info["app"].upper(), {})
        return web.Response(status=200 if known else 404)


def instance_body(app: str, address: str, port: int, *, instance_id: str | None = None,
                  status: str = "UP", secure_port: int | None = None, port_enabled: bool = True,
                  vip: str | None = None, metadata: dict[str, str] | None = None) -> dict[
                      str, Any]:
    """An instance as a Eureka client registers it (JSON codec field layout)."""
    return {
        "instanceId": instance_id or f"{address}:{app.lower()}:{port}",
        "hostName": address,
        "app": app.upper(),
        "ipAddr": address,
        "status": status,
        "overriddenStatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true" if port_enabled else "false"},
        "securePort": {"$": secure_port or 443,
                       "@enabled": "true" if secure_port else "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                           "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": metadata or {},
        "homePageUrl": f"http://{address}:{port}/",
        "statusPageUrl": f"http://{address}:{port}/info",
        "healthCheckUrl": f"http://{address}:{port}/health",
        "vipAddress": vip if vip is not None else app.lower(),
        "secureVipAddress": vip if vip is not None else app.lower(),
        "isCoordinatingDiscoveryServer": "false",
    }
