"""Consul: services from the catalog, instances from the health endpoint, both followed with
blocking queries.

    consul://127.0.0.1:8500?datacenter=dc1&token=…&wait=60s&consistency=stale

How it watches (Consul's HTTP API, "Blocking Queries"):

1. `GET /v1/catalog/services` lists the service names. Then every service's instances are read
   with `GET /v1/health/service/<name>?passing`, all at once, and handed to the catalog as one
   complete listing; the registry is synced.
2. From then on one long poll follows the service list and one follows each service: a
   request carries `index=<the X-Consul-Index of the previous answer>&wait=<wait>`, and Consul
   holds it until something under that index changed or `wait` (plus up to wait/16 of jitter)
   passed. A new service gets its own watcher; a service gone from the list is removed.
3. As Consul's documentation asks of clients: an index that went backwards (a restored or
   rebuilt server) starts over from 0, an index below 1 is treated as 1, and each watcher waits
   at least `minInterval` (0.1 s) between requests so a service that changes constantly cannot
   make it spin. Any failure of any request ends the watch; the registry loop marks the data
   stale, keeps it, and reconnects with backoff. A reconnect re-reads everything (step 1), so
   services deleted while Consul was unreachable are deleted then, not before.

Mapping (see `mapping` for the rules shared by every registry):

- only instances whose checks all pass (`?passing`); with `fallbackToAll=true` every instance
  is read (no `passing`) and the catalog publishes the unhealthy ones only when none passes;
- `Service.Address`, or `Node.Address` when the service registered none; `Service.Port` is the
  one port, its protocol from a `protocol` entry in `Meta` or a `protocol=…` tag, else HTTP;
- `Tags` and `Meta` become labels; `Service.Weights.Passing` the weight;
- `Node.Datacenter` is the locality's region (unless `Meta` gives a locality) and `{datacenter}`
  in a `host=` template;
- the service named `consul` (Consul servers' own RPC port) is not published.

Parameters: `datacenter` (`dc=` too; default: the agent's), `token` (sent as `X-Consul-Token`;
`tokenFile=PATH` reads it from a file, else `CONSUL_HTTP_TOKEN` from the environment), `wait`
(default `60s`, at most `10m`), `consistency` (`default`, `stale` or `consistent`), `tls=true`
for HTTPS, `minInterval` (seconds), `maxConnections` (default 150). Each watched service holds
one connection in a long poll; Consul allows 200 per client address by default
(`http_max_conns_per_client`), so past `maxConnections` services the extra watchers wait for a
free connection and may see changes up to `wait` late — raise both for larger catalogs. A
listing Consul filtered because the token may not read
everything (`X-Consul-Results-Filtered-By-ACLs: true`) is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

from meshpilot.model import Protocol
from meshpilot.registry.base import Updater
from meshpilot.registry.catalog import ExternalRegistry, RegistryError
from meshpilot.registry.httpapi import (
    HttpApi,
    Response,
    as_dict,
    as_list,
    duration,
    string_map,
)
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import RegistryUrl, RegistryUrlError

log = logging.getLogger("meshpilot.registry.consul")

DEFAULT_PORT = 8500
MAX_WAIT = 600.0
"""Consul caps `wait` at 10 minutes."""
SKIPPED_SERVICES = frozenset({"consul"})
CONCURRENCY = 16
"""Health reads in flight at once during a full read."""


def create(url: RegistryUrl, updater: Updater) -> ConsulRegistry:
    return ConsulRegistry(url, updater)


class ConsulRegistry(ExternalRegistry):
    def __init__(self, url: RegistryUrl, updater: Updater) -> None:
        super().__init__(url, updater, MappingRules.from_url(url, Protocol.HTTP))
        self.datacenter = url.param("datacenter") or url.param("dc")
        self.wait = min(duration(url.param("wait", "60s")), MAX_WAIT)
        self.min_interval = url.number("minInterval", 0.1)
        self.max_connections = int(url.number("maxConnections", 150))
        consistency = url.param("consistency", "default")
        if consistency not in ("default", "stale", "consistent"):
            raise RegistryUrlError(
                f"{url.text}: consistency={consistency!r} (default, stale or consistent)")
        self.consistency = consistency
        self._token = _token(url)
        self._warned_filtered = False

    def status(self) -> dict[str, Any]:
        status = super().status()
        if self._token:
            status["url"] = _redact(self.url.text)  # the token must not reach debug pages
        return status

    # The watch ---------------------------------------------------------------------------------

    async def watch(self) -> None:
        headers = {"X-Consul-Token": self._token} if self._token else {}
        async with HttpApi(self.url, headers, self.max_connections) as api:
            names, index = await self._services(api, 0)
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def first_read(name: str) -> tuple[list[Instance], int]:
                async with semaphore:
                    return await self._health(api, name, 0)

            reads = await asyncio.gather(*(first_read(n) for n in names))
            self.catalog.replace_all({n: r[0] for n, r in zip(names, reads, strict=True)})
            self.synced()
            watchers = _Watchers()
            try:
                for name, (_, service_index) in zip(names, reads, strict=True):
                    watchers.start(name, self._follow_service(api, name, service_index))
                watchers.start("", self._follow_services(api, watchers, index))
                await watchers.failure
            finally:
                await watchers.stop_all()

    async def _follow_services(self, api: HttpApi, watchers: _Watchers, index: int) -> None:
        while True:
            started = time.monotonic()
            names, index = await self._services(api, index)
            for name in set(watchers.names()) - set(names) - {""}:
                await watchers.stop(name)
                self.catalog.remove(name)
            for name in names:
                if name not in watchers.names():
                    watchers.start(name, self._follow_service(api, name, 0))
            self.synced()
            await self._pace(started)

    async def _follow_service(self, api: HttpApi, name: str, index: int) -> None:
        while True:
            started = time.monotonic()
            instances, index = await self._health(api, name, index)
            self.catalog.replace(name, instances)
            await self._pace(started)

    async def _pace(self, started: float) -> None:
        # Consul's advice: rate-limit blocking loops, a resource that changes all the time would
        # otherwise answer every request at once.
        rest = self.min_interval - (time.monotonic() - started)
        if rest > 0:
            await asyncio.sleep(rest)

    # Requests ----------------------------------------------------------------------------------

    def _params(self, index: int) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.datacenter:
            params["dc"] = self.datacenter
        if self.consistency != "default":
            params[self.consistency] = ""
        if index > 0:
            params["index"] = str(index)
            params["wait"] = f"{int(self.wait * 1000)}ms"
        return params

    def _timeout(self, index: int) -> float:
        # Consul may hold a request for wait + wait/16 of jitter; give it some slack on top.
        return self.wait * 17 / 16 + 10.0 if index > 0 else 10.0

    async def _query(self, api: HttpApi, path: str, params: dict[str, str], index: int) -> tuple[
        Any, int
    ]:
        response = await api.get(path, params, seconds=self._timeout(index))
        self._check_filtered(response)
        return response.body, _next_index(response, index)

    async def _services(self, api: HttpApi, index: int) -> tuple[list[str], int]:
        body, new_index = await self._query(
            api, "/v1/catalog/services", self._params(index), index)
        services = as_dict(body, "/v1/catalog/services")
        return sorted(n for n in services if n not in SKIPPED_SERVICES), new_index

    async def _health(self, api: HttpApi, name: str, index: int) -> tuple[list[Instance], int]:
        params = self._params(index)
        if not self.catalog_fallback:
            params["passing"] = ""
        path = f"/v1/health/service/{_quote(name)}"
        body, new_index = await self._query(api, path, params, index)
        entries = as_list(body if body is not None else [], path)
        return [self._instance(name, as_dict(e, path)) for e in entries], new_index

    @property
    def catalog_fallback(self) -> bool:
        return self.url.flag("fallbackToAll")

    def _check_filtered(self, response: Response) -> None:
        filtered = response.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
        if filtered and not self._warned_filtered:
            self._warned_filtered = True
            log.warning("registry %s: Consul filtered results by ACL; the token cannot read "
                        "every service", self.url.name)

    # Conversion --------------------------------------------------------------------------------

    def _instance(self, name: str, entry: dict[str, Any]) -> Instance:
        node = as_dict(entry.get("Node") or {}, "Node")
        service = as_dict(entry.get("Service") or {}, "Service")
        checks = entry.get("Checks") or []
        address = str(service.get("Address") or node.get("Address") or "")
        port = service.get("Port")
        if not address or not isinstance(port, int) or port <= 0:
            raise RegistryError(f"Consul service {name}: instance without address or port")
        weights = service.get("Weights") or {}
        weight = weights.get("Passing", 1) if isinstance(weights, dict) else 1
        datacenter = str(node.get("Datacenter") or self.datacenter or "")
        return Instance(
            service=name,
            id=str(service.get("ID") or f"{node.get('Node', '')}/{address}:{port}"),
            address=address,
            ports={"": port},
            metadata=string_map(service.get("Meta")),
            tags=tuple(str(t) for t in service.get("Tags") or ()),
            healthy=all(
                isinstance(c, dict) and c.get("Status") == "passing" for c in checks
            ),
            weight=int(weight) if isinstance(weight, int | float) and weight > 0 else 1,
            datacenter=datacenter,
        )


def _next_index(response: Response, previous: int) -> int:
    """X-Consul-Index, with the resets Consul's documentation asks clients to make."""
    raw = response.headers.get("X-Consul-Index", "")
    try:
        index = int(raw)
    except ValueError:
        raise RegistryError(f"missing or invalid X-Consul-Index header {raw!r}") from None
    if index < previous:
        return 0  # went backwards: the server's state was reset; start over
    return max(index, 1)


def _quote(name: str) -> str:
    return quote(name, safe="")


def _token(url: RegistryUrl) -> str:
    if url.param("token"):
        return url.param("token")
    if url.param("tokenFile"):
        try:
            return Path(url.param("tokenFile")).read_text().strip()
        except OSError as error:
            raise RegistryUrlError(f"{url.text}: tokenFile: {error}") from error
    return os.environ.get("CONSUL_HTTP_TOKEN", "")


def _redact(text: str) -> str:
    return re.sub(r"(token=)[^&]*", r"\1REDACTED", text)


class _Watchers:
    """Named long-poll tasks; the first one to fail resolves `failure` with its error."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def names(self) -> list[str]:
        return list(self._tasks)

    def start(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=f"consul-watch-{name or '<services>'}")
        self._tasks[name] = task
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.failure.done():
            return
        error = task.exception()
        self.failure.set_exception(error or RegistryError(f"{task.get_name()} ended"))

    async def stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.failure.done() and not self.failure.cancelled():
            self.failure.exception()  # retrieved: no "exception was never retrieved" warning
