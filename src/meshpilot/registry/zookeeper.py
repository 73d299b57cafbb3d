"""ZooKeeper registry: Dubbo providers (interface level) and application-level instances.

    zookeeper://127.0.0.1:2181[,host2:2181]/dubbo              Dubbo's interface layout
    zookeeper://127.0.0.1:2181/services                         application layout
    zookeeper://127.0.0.1:2181/my/root?layout=services          any root, layout by name

The layout is `layout=` (`dubbo` or `services`), else `services` when the URL's path ends in
`/services`, else `dubbo`; the root is the URL's path, else `/dubbo` or `/services`.

**Dubbo layout** — what Dubbo 2.x and 3.x write with interface-level registration:
`<root>/<interface>/providers/<URL-encoded provider URL>`, one ephemeral znode per exported
service, e.g. `dubbo://10.0.0.5:20880/org.apache.dubbo.demo.DemoService?application=demo&
side=provider&version=1.0.0&group=g1&weight=100`. Only `providers` are read (consumers,
routers and configurators are not applied); URLs with `enabled=false`, `disabled=true` or
`side=consumer` are left out.

- **host**: Java interface names make poor host names (`org.apache.dubbo.demo.DemoService`
  would become seven DNS labels), so each interface gets a mesh name: its simple name in kebab
  case, the group if any, and the first 6 hex digits of the SHA-1 of the full interface name —
  `demo-service-4f1c2a`, or `demo-service-g1-4f1c2a` in group `g1`. The name depends only on
  the interface (and group), never on what else is registered, and two interfaces with the
  same simple name never collide. With the default template the host is
  `demo-service-4f1c2a.default.zookeeper`; `host=` templates see it as `{service}` and the
  group as `{group}`. The `interface` label carries the full name.
- **ports** are named by the Dubbo protocol: `dubbo` (the default protocol: TCP, or the URL's
  `protocol=`), `tri` → `grpc-tri` (Triple is gRPC over HTTP/2), `grpc`, `rest` → `http-rest`,
  `http`; other protocols keep their name and take the default.
- **labels**: the provider URL's parameters (`application`, `version`, `group`, `release`, any
  custom one) minus bookkeeping ones (`methods`, `pid`, `timestamp`, …), plus `interface`.
- **weight**: the `weight` parameter, Dubbo's default 100 otherwise.

**Application layout** — Curator's ServiceDiscovery, as Spring Cloud Zookeeper and Dubbo 3's
application-level registration write it: `<root>/<app>/<instance-id>`, an ephemeral znode
holding JSON `{"name", "id", "address", "port", "sslPort", "enabled", "payload": {"metadata":
{…}}}`. Host `{service}.{namespace}.zookeeper` from the app name; port `port` unnamed (HTTP by
default, `protocol=` overrides), `sslPort` as `https`; Dubbo 3's `dubbo.endpoints` metadata
(`[{"port": 20880, "protocol": "dubbo"}]`) names the ports instead (`tcp-dubbo`, `grpc-tri`).
Metadata are labels except Dubbo's internal `dubbo.*` keys; an instance with `enabled: false`
or metadata `instance_status` other than `UP` is unhealthy.

**Watching**: children watches on the root and on each service's node (`providers`, or the app
node), data watches on application instances, and an existence watch where a node is missing.
ZooKeeper watches fire once; every event only marks its service dirty, and the asyncio side
re-reads the dirty services — re-arming their watches as it reads — and hands each one to the
catalog whole. A burst of events on one service costs one read.

**Client**: kazoo, the long-established ZooKeeper client (sessions, reconnection, the wire
protocol of ZooKeeper 3.4 to 3.9); it is threaded, so reads run in worker threads
(`asyncio.to_thread`) and kazoo's watch and connection callbacks cross into the event loop with
`loop.call_soon_threadsafe` only. (aiozk is native asyncio but much less used, and its session
recovery is less proven.) When the connection is suspended or the session lost, `watch()` ends:
the shared loop marks the registry stale, keeps its endpoints, backs off and reconnects with a
new session, and a full read then replaces the catalog — deletions made meanwhile included.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from meshpilot.model import Protocol
from meshpilot.registry.base import ServiceRegistry, Updater
from meshpilot.registry.catalog import ExternalRegistry, RegistryError
from meshpilot.registry.mapping import Instance, MappingRules, sanitize_host
from meshpilot.registry.urls import RegistryUrl, RegistryUrlError

log = logging.getLogger("meshpilot.registry.zookeeper")

LAYOUTS = ("dubbo", "services")

# Dubbo protocol → port name; a name with an Istio protocol prefix fixes the port's protocol.
_DUBBO_PORT_NAMES = {"tri": "grpc-tri", "grpc": "grpc", "rest": "http-rest", "http": "http"}

# Provider URL parameters that describe the process or the code, not the instance: no labels.
_NOT_LABELS = frozenset({
    "anyhost", "background", "bind.ip", "bind.port", "deprecated", "dubbo", "dynamic",
    "generic", "interface", "metadata-type", "methods", "pid", "prefer.serialization",
    "register-mode", "service-name-mapping", "side", "timestamp", "category", "enabled",
    "disabled", "weight", "token",
})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

_LOST = "\0lost"
"""Queue marker: the connection is suspended or the session lost."""


def dubbo_service_name(interface: str, group: str = "") -> str:
    """The mesh name of a Dubbo interface: `demo-service-4f1c2a`, see the module docstring."""
    simple = interface.rsplit(".", 1)[-1]
    kebab = _CAMEL.sub("-", simple).lower()
    digest = hashlib.sha1(interface.encode()).hexdigest()[:6]
    parts = [kebab, group.lower(), digest] if group else [kebab, digest]
    # One DNS label: dots or other characters in the group must not add labels.
    return "-".join(sanitize_host(part.replace(".", "-")) for part in parts)


def parse_dubbo_url(text: str) -> Instance | None:
    """One provider znode's name → an instance; None for a provider that must not get traffic."""
    url = urlsplit(unquote_plus(text))
    params = dict(parse_qsl(url.query, keep_blank_values=True))
    if params.get("enabled", "true").lower() == "false":
        return None
    if params.get("disabled", "false").lower() == "true":
        return None
    if params.get("side", "provider") != "provider":
        return None
    if params.get("category", "providers") != "providers":
        return None
    if not url.hostname or url.port is None:
        raise ValueError("no host:port")
    interface = params.get("interface") or url.path.strip("/")
    if not interface:
        raise ValueError("no interface")
    group = params.get("group", "")
    protocol = url.scheme or "dubbo"
    labels = {k: v for k, v in params.items() if k not in _NOT_LABELS}
    labels["interface"] = interface
    version = params.get("version", "")
    try:
        weight = int(params.get("weight", "100"))
    except ValueError:
        weight = 100
    return Instance(
        service=dubbo_service_name(interface, group),
        id=f"{url.hostname}:{url.port}" + (f"-{version}" if version else ""),
        address=url.hostname,
        ports={_DUBBO_PORT_NAMES.get(protocol, protocol): url.port},
        metadata=labels,
        weight=max(weight, 0),
        group=group,
    )


def parse_app_instance(app: str, node: str, data: bytes) -> list[Instance]:
    """One Curator ServiceInstance znode (Spring Cloud Zookeeper, Dubbo 3 app-level)."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    payload = value.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    raw_meta = payload.get("metadata")
    raw_meta = raw_meta if isinstance(raw_meta, dict) else {}
    meta = {str(k): str(v) for k, v in raw_meta.items()
            if v is not None and not str(k).startswith("dubbo.")}
    ports: dict[str, int] = {}
    endpoints = raw_meta.get("dubbo.endpoints")
    if endpoints:
        for entry in json.loads(endpoints):
            protocol = str(entry.get("protocol") or "dubbo")
            name = "tcp-dubbo" if protocol == "dubbo" else _DUBBO_PORT_NAMES.get(protocol, protocol)
            ports[name] = int(entry["port"])
    elif value.get("port") is not None:
        ports[""] = int(value["port"])
    if value.get("sslPort") is not None:
        ports["https"] = int(value["sslPort"])
    if not ports:
        raise ValueError("no port")
    healthy = value.get("enabled", True) is not False and meta.get(
        "instance_status", "UP").upper() == "UP"
    return [Instance(
        service=str(value.get("name") or app),
        id=str(value.get("id") or node),
        address=str(value["address"]),
        ports=ports,
        metadata=meta,
        healthy=healthy,
        weight=int(meta.get("weight", "1")) if meta.get("weight", "1").isdigit() else 1,
    )]


class ZooKeeperRegistry(ExternalRegistry):
    def __init__(self, url: RegistryUrl, updater: Updater) -> None:
        path = url.path.rstrip("/")
        layout = url.param("layout") or ("services" if path.endswith("/services") else "dubbo")
        if layout not in LAYOUTS:
            raise RegistryUrlError(f"{url.text}: layout={layout!r}; use one of {LAYOUTS}")
        self.layout = layout
        default = Protocol.TCP if layout == "dubbo" else Protocol.HTTP
        super().__init__(url, updater, MappingRules.from_url(url, default))
        self.root = path or f"/{layout}"
        self.session_timeout = url.number("sessionTimeout", 10.0)
        self.timeout = url.number("timeout", 10.0)
        self.reads = 0
        self._warned: set[str] = set()
        self._names: dict[str, set[str]] = {}
        """Service znode (interface or app) → the catalog services its instances make up."""

    def status(self) -> dict[str, Any]:
        return {**super().status(), "layout": self.layout, "root": self.root,
                "reads": self.reads}

    # The watch loop --------------------------------------------------------------------------

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        dirty: asyncio.Queue[str] = asyncio.Queue()

        def post(item: str) -> None:
            # Called on kazoo's threads: only hand over to the loop, never touch our state.
            with contextlib.suppress(RuntimeError):  # the loop closed: this watch() is gone
                loop.call_soon_threadsafe(dirty.put_nowait, item)

        def on_event(event: Any) -> None:
            if event.path:
                post(event.path)

        def on_state(state: str) -> None:
            if state in (KazooState.SUSPENDED, KazooState.LOST):
                post(_LOST)

        hosts = ",".join(f"{host}:{port}" for host, port in self.url.hosts)
        client = KazooClient(hosts=hosts, timeout=self.session_timeout)
        client.add_listener(on_state)
        try:
            await asyncio.to_thread(client.start, self.timeout)
            # One full read: every service, then hand the whole set to the catalog.
            nodes = await self._read_root(client, on_event)
            found = await self._read_services(client, nodes, on_event)
            self._names = {node: {i.service for i in found[node]} for node in found}
            self.catalog.replace_all(_by_name(i for instances in found.values() for i in instances))
            self.synced()
            known = set(nodes)
            while True:
                paths = {await dirty.get()}
                while not dirty.empty():
                    paths.add(dirty.get_nowait())
                if _LOST in paths:
                    raise RegistryError("connection to ZooKeeper suspended or session lost")
                scopes = {scope for scope in map(self._scope, paths) if scope}
                if self.root in paths:
                    nodes = await self._read_root(client, on_event)
                    for gone in known - set(nodes):
                        self._publish(gone, [])
                    scopes |= set(nodes) - known
                    known = set(nodes)
                scopes &= known
                if scopes:
                    found = await self._read_services(client, sorted(scopes), on_event)
                    for node in sorted(found):
                        self._publish(node, found[node])
        except (KazooException, KazooTimeoutError) as error:
            raise RegistryError(f"ZooKeeper {hosts}: {type(error).__name__}: {error}") from error
        finally:
            await asyncio.to_thread(_close, client)

    def _publish(self, node: str, instances: list[Instance]) -> None:
        """The current instances under one service znode, to the catalog.

        An interface's providers in different groups are different mesh services, so one znode
        can feed several catalog entries; the ones it no longer feeds are removed.
        """
        by_name = _by_name(instances)
        for gone in self._names.get(node, set()) - set(by_name):
            self.catalog.remove(gone)
        for name, group in sorted(by_name.items()):
            self.catalog.replace(name, group)
        self._names[node] = set(by_name)

    def _scope(self, path: str) -> str | None:
        """The service a changed path belongs to (None for the root itself)."""
        if not path.startswith(self.root + "/"):
            return None
        return path[len(self.root) + 1:].split("/", 1)[0] or None

    # Reads (each re-arms the watches of what it reads) ------------------------------------------

    async def _read_root(self, client: Any, on_event: Callable[[Any], None]) -> list[str]:
        children = await asyncio.to_thread(_children, client, [self.root], on_event, self.timeout)
        return sorted(children[self.root] or [])

    async def _read_services(
        self, client: Any, services: Iterable[str], on_event: Callable[[Any], None]
    ) -> dict[str, list[Instance]]:
        """Every current instance of the given services, by catalog key (the znode name)."""
        services = list(services)
        self.reads += len(services)
        if self.layout == "dubbo":
            paths = {s: f"{self.root}/{s}/providers" for s in services}
            children = await asyncio.to_thread(
                _children, client, list(paths.values()), on_event, self.timeout)
            return {s: self._providers(children[paths[s]] or []) for s in services}
        paths = {s: f"{self.root}/{s}" for s in services}
        children = await asyncio.to_thread(
            _children, client, list(paths.values()), on_event, self.timeout)
        nodes = [f"{paths[s]}/{n}" for s in services for n in children[paths[s]] or []]
        data = await asyncio.to_thread(_data, client, nodes, on_event, self.timeout)
        out: dict[str, list[Instance]] = {}
        for s in services:
            instances = []
            for node in children[paths[s]] or []:
                value = data.get(f"{paths[s]}/{node}")
                if value is None:
                    continue  # gone between the two reads; its watch reports it
                instances.extend(self._parse(parse_app_instance, s, node, value))
            out[s] = instances
        return out

    def _providers(self, names: list[str]) -> list[Instance]:
        out = []
        for name in sorted(names):
            out.extend(self._parse(_dubbo_instances, name))
        return out

    def _parse(self, parse: Callable[..., list[Instance]], *args: Any) -> list[Instance]:
        try:
            return parse(*args)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            what = "/".join(str(a) for a in args if not isinstance(a, bytes))
            if what not in self._warned:  # once: a bad node is read again on every change
                self._warned.add(what)
                log.warning("zookeeper %s: ignoring %s: %s", self.url.name, what, error)
            return []


def _dubbo_instances(name: str) -> list[Instance]:
    instance = parse_dubbo_url(name)
    return [instance] if instance else []


def _by_name(instances: Iterable[Instance]) -> dict[str, list[Instance]]:
    out: dict[str, list[Instance]] = {}
    for instance in instances:
        out.setdefault(instance.service, []).append(instance)
    return out


# Blocking helpers, run in worker threads ------------------------------------------------------


def _children(
    client: Any, paths: list[str], watch: Callable[[Any], None], timeout: float
) -> dict[str, list[str] | None]:
    """Children of many paths in one round of pipelined requests, each with a children watch.

    A missing path gets an existence watch instead (ZooKeeper sets no children watch on a node
    that does not exist), so its creation is reported too; its value is None.
    """
    pending = {p: client.get_children_async(p, watch=watch) for p in paths}
    out: dict[str, list[str] | None] = {}
    for path, result in pending.items():
        try:
            out[path] = list(result.get(timeout=timeout))
        except NoNodeError:
            if client.exists(path, watch=watch) is not None:
                out[path] = list(client.get_children(path, watch=watch))  # created meanwhile
            else:
                out[path] = None
    return out


def _data(
    client: Any, paths: list[str], watch: Callable[[Any], None], timeout: float
) -> dict[str, bytes]:
    pending = {p: client.get_async(p, watch=watch) for p in paths}
    out: dict[str, bytes] = {}
    for path, result in pending.items():
        try:
            value, _stat = result.get(timeout=timeout)
            out[path] = bytes(value or b"")
        except NoNodeError:
            continue
    return out


def _close(client: Any) -> None:
    try:
        client.stop()
    finally:
        client.close()


def create(url: RegistryUrl, updater: Updater) -> ServiceRegistry:
    return ZooKeeperRegistry(url, updater)
