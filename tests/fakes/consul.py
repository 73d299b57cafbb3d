"""A fake Consul agent: the part of Consul's HTTP API a service-discovery client reads.

Reproduced, as Consul's API documentation describes it:

- `GET /v1/catalog/services` → `{"<name>": ["<tag>", …]}` (tags of all instances merged);
- `GET /v1/health/service/<name>` → `[{"Node": {…}, "Service": {…}, "Checks": [...]}]` with
  `Node.ID/Node/Address/Datacenter/TaggedAddresses/Meta`, `Service.ID/Service/Tags/Address/
  Meta/Port/Weights{Passing,Warning}/EnableTagOverride`, and the checks of the node
  (`serfHealth`) and of the service; `?passing` keeps only entries whose checks all pass;
  an unknown service answers `[]`;
- blocking queries: every read answers `X-Consul-Index`, `X-Consul-KnownLeader` and
  `X-Consul-LastContact`; with `index=N` the request is held until the resource's index
  exceeds N or `wait` (Go duration, default 5m, capped at 10m) plus a random jitter of up to
  wait/16 passed, and then answers with the current data and index — also when that index is
  lower than N (a server whose state was reset; see `reset_index`). The catalog list's index
  moves when instances are registered or deregistered; a service's index moves when one of its
  instances or their checks changes, and stays at its deregistration index once it is gone;
- `dc=` other than the agent's datacenter → 500 "No path to datacenter"; `stale` and
  `consistent` are accepted (answered the same);
- ACLs (when `acl_token` is set): the token comes from `X-Consul-Token`, `Authorization:
  Bearer` or `?token=`; an unknown token → 403 "ACL not found"; no token reads as the anonymous
  token, whose results are filtered empty with `X-Consul-Results-Filtered-By-ACLs: true`;
- writes: `PUT /v1/catalog/register` (`Node`, `Address`, `Datacenter`, `Service{…}`, `Check`
  or `Checks`; registering again updates, a check's new `Status` included) and
  `PUT /v1/catalog/deregister` (`Node`, `ServiceID`), both answering `true`.

Not reproduced: `filter`, `near`, `tag`, `hash`-based blocking, agent endpoints, Connect,
namespaces and partitions, peering.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer

MAX_WAIT = 600.0


def go_duration(text: str) -> float:
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and not (suffix == "s" and text.endswith("ms")):
            return float(text[: -len(suffix)]) * factor
    return float(text)


class FakeConsul(FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, datacenter: str = "dc1") -> None:
        super().__init__(host, port)
        self.datacenter = datacenter
        self.acl_token: str | None = None
        self.index = 10
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        """(node, service id) → Service."""
        self.checks: dict[tuple[str, str], dict[str, Any]] = {}
        """(node, check id) → Check."""
        self.services_index = self.index
        self.service_index: dict[str, int] = {}
        self._changed = asyncio.Event()

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/catalog/services", self._catalog_services)
        app.router.add_get("/v1/health/service/{name}", self._health_service)
        app.router.add_put("/v1/catalog/register", self._register)
        app.router.add_put("/v1/catalog/deregister", self._deregister)

    # State changes (also used directly by tests) ----------------------------------------------

    def _bump(self, *names: str, listing: bool = False) -> None:
        self.index += 1
        for name in names:
            self.service_index[name] = self.index
        if listing:
            self.services_index = self.index
        # Wake every blocked query; each re-checks its own index.
        self._changed.set()
        self._changed = asyncio.Event()

    def register(self, body: dict[str, Any]) -> None:
        """Consul's catalog register payload."""
        node = str(body["Node"])
        known = self.nodes.get(node)
        self.nodes[node] = {
            "ID": body.get("ID", known["ID"] if known else f"id-{node}"),
            "Node": node,
            "Address": body.get("Address", ""),
            "Datacenter": body.get("Datacenter") or self.datacenter,
            "TaggedAddresses": body.get("TaggedAddresses") or {},
            "Meta": body.get("NodeMeta") or {},
        }
        if (node, "serfHealth") not in self.checks:
            self.checks[(node, "serfHealth")] = self._check(node, {
                "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}, None)
        touched: set[str] = set()
        listing = False
        service = body.get("Service")
        if service:
            sid = str(service.get("ID") or service["Service"])
            name = str(service["Service"])
            before = self.services.get((node, sid))
            listing = before is None or before["Service"] != name
            if before is not None:
                touched.add(before["Service"])
            self.services[(node, sid)] = {
                "ID": sid,
                "Service": name,
                "Tags": list(service.get("Tags") or []),
                "Address": service.get("Address", ""),
                "Meta": dict(service.get("Meta") or {}),
                "Port": int(service.get("Port") or 0),
                "Weights": service.get("Weights") or {"Passing": 1, "Warning": 1},
                "EnableTagOverride": False,
                "CreateIndex": before["CreateIndex"] if before else self.index + 1,
                "ModifyIndex": self.index + 1,
            }
            touched.add(name)
        checks = body.get("Checks") or ([body["Check"]] if body.get("Check") else [])
        for check in checks:
            sid = check.get("ServiceID")
            owner = self.services.get((node, sid)) if sid else None
            self.checks[(node, str(check["CheckID"]))] = self._check(node, check, owner)
            touched.add(owner["Service"] if owner else "")
        if not owner_names(touched):
            touched |= {s["Service"] for (n, _), s in self.services.items() if n == node}
        self._bump(*owner_names(touched), listing=listing)

    def _check(self, node: str, check: dict[str, Any], owner: dict[str, Any] | None) -> dict[
        str, Any
    ]:
        return {
            "Node": node,
            "CheckID": check["CheckID"],
            "Name": check.get("Name", check["CheckID"]),
            "Status": check.get("Status", "critical"),
            "Notes": "",
            "Output": check.get("Output", ""),
            "ServiceID": owner["ID"] if owner else "",
            "ServiceName": owner["Service"] if owner else "",
            "ServiceTags": owner["Tags"] if owner else [],
        }

    def deregister(self, node: str, service_id: str) -> None:
        service = self.services.pop((node, service_id), None)
        if service is None:
            return
        for key in [k for k, c in self.checks.items() if k[0] == node
                    and c["ServiceID"] == service_id]:
            del self.checks[key]
        self._bump(service["Service"], listing=True)

    def set_check(self, node: str, check_id: str, status: str) -> None:
        check = self.checks[(node, check_id)]
        check["Status"] = status
        names = [check["ServiceName"]] if check["ServiceName"] else [
            s["Service"] for (n, _), s in self.services.items() if n == node]
        self._bump(*names)

    def reset_index(self, index: int = 1) -> None:
        """Simulate a server rebuilt from scratch: indexes start low again."""
        self.index = index
        self.services_index = index
        self.service_index = dict.fromkeys(self.service_index, index)
        self._changed.set()
        self._changed = asyncio.Event()

    # Reads -------------------------------------------------------------------------------------

    def _token_problem(self, request: web.Request) -> web.Response | bool:
        """403 for an unknown token; True when the anonymous token reads (filtered)."""
        if self.acl_token is None:
            return False
        token = (request.headers.get("X-Consul-Token")
                 or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                 or request.query.get("token", ""))
        if not token:
            return True
        if token != self.acl_token:
            return web.Response(status=403, text="ACL not found")
        return False

    async def _blocking(self, request: web.Request, current: Any) -> web.Response | int:
        """Hold the request per `index`/`wait`; the resource index to answer with."""
        if request.query.get("dc", self.datacenter) != self.datacenter:
            return web.Response(status=500, text="No path to datacenter")
        try:
            index = int(request.query.get("index", "0"))
            wait = min(go_duration(request.query.get("wait", "5m")), MAX_WAIT)
        except ValueError:
            return web.Response(status=400, text="Invalid index or wait")
        if index > 0:
            deadline = asyncio.get_running_loop().time() + wait + random.uniform(0, wait / 16)
            while current() <= index:
                rest = deadline - asyncio.get_running_loop().time()
                if rest <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), rest)
                except TimeoutError:
                    break
        answer: int = current()
        return answer

    def _reply(self, body: Any, index: int, filtered: bool) -> web.Response:
        headers = {
            "X-Consul-Index": str(index),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }
        if filtered:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return web.json_response(body, headers=headers)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        problem = self._token_problem(request)
        if isinstance(problem, web.Response):
            return problem
        index = await self._blocking(request, lambda: self.services_index)
        if isinstance(index, web.Response):
            return index
        listing: dict[str, list[str]] = {}
        if not problem:
            for service in self.services.values():
                tags = listing.setdefault(service["Service"], [])
                tags.extend(t for t in service["Tags"] if t not in tags)
        return self._reply(listing, index, bool(problem))

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        problem = self._token_problem(request)
        if isinstance(problem, web.Response):
            return problem
        index = await self._blocking(
            request, lambda: self.service_index.get(name, self.services_index))
        if isinstance(index, web.Response):
            return index
        entries = [] if problem else self._entries(name)
        if "passing" in request.query:
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        return self._reply(entries, index, bool(problem))

    def _entries(self, name: str) -> list[dict[str, Any]]:
        out = []
        for (node, sid), service in sorted(self.services.items()):
            if service["Service"] != name:
                continue
            checks = [dict(c) for (n, _), c in sorted(self.checks.items())
                      if n == node and c["ServiceID"] in ("", sid)]
            out.append({"Node": dict(self.nodes[node]), "Service": dict(service),
                        "Checks": checks})
        return out

    # Writes over HTTP ----------------------------------------------------------------------------

    async def _register(self, request: web.Request) -> web.Response:
        problem = self._token_problem(request)
        if problem:
            return web.Response(status=403, text="Permission denied")
        self.register(await request.json())
        return web.json_response(True)

    async def _deregister(self, request: web.Request) -> web.Response:
        problem = self._token_problem(request)
        if problem:
            return web.Response(status=403, text="Permission denied")
        body = await request.json()
        self.deregister(str(body["Node"]), str(body.get("ServiceID", "")))
        return web.json_response(True)


def owner_names(names: set[str]) -> list[str]:
    return sorted(n for n in names if n)


def service_body(name: str, node: str, address: str, port: int, *, sid: str | None = None,
                 status: str = "passing", tags: list[str] | None = None,
                 meta: dict[str, str] | None = None, service_address: str = "",
                 datacenter: str = "") -> dict[str, Any]:
    """A catalog register payload for one service instance with one check."""
    sid = sid or f"{name}-{node}"
    return {
        "Node": node,
        "Address": address,
        "Datacenter": datacenter,
        "Service": {"ID": sid, "Service": name, "Port": port, "Tags": tags or [],
                    "Meta": meta or {}, "Address": service_address},
        "Check": {"CheckID": f"service:{sid}", "Name": f"Service '{name}' check",
                  "Status": status, "ServiceID": sid},
    }
