"""etcd (v3) registry: services that go-micro, Kratos or any JSON writer keep under a key prefix.

    etcd://127.0.0.1:2379[,host2:2379]?layout=go-micro&prefix=/micro/registry

How it follows etcd:

- **list**: a Range over the prefix in pages of `pageSize` keys (default 1,000), every page
  read at the revision of the first one, so the listing is one consistent snapshot however many
  keys there are (and never one gRPC message over the size limit). The listing replaces the
  whole catalog (`replace_all`): services that vanished while we were not looking go.
- **watch**: one Watch stream on the prefix from the listed revision + 1, so no change between
  the list and the watch is lost. The events of one WatchResponse (one etcd transaction or a
  burst the server batched) are applied together, then each touched service is handed to the
  catalog once; the catalog decides between nothing, an EDS push and a full push.
- **compaction**: if the revision to watch from has been compacted (ErrCompacted: the Range
  fails with OUT_OF_RANGE or the watch answers with `compact_revision`), the adapter lists
  again and watches from the new revision. The data is not marked stale for it: etcd answered.
- **outage**: any RPC failure ends `watch()` with a RegistryError; the shared loop marks the
  registry stale (last known endpoints stay), backs off, and the next `watch()` connects anew
  (to the next host of the URL) and lists again. gRPC keepalive pings (every 10 s, 5 s to
  answer) notice a server that vanished without closing the connection.
- **lease expiry** needs nothing special: etcd deletes the keys of an expired lease, and the
  watch sees the deletions.

Layouts (`layout=`; `prefix=` defaults to the layout's own prefix). Each key below the prefix
is `<service>/<node>`; deeper keys keep their remainder in `<node>`. A value a layout cannot
read is logged once and treated as absent.

- `go-micro` (prefix `/micro/registry/`): `<service>/<node-id>`, as go-micro's etcd registry
  writes it (one key per node, under a lease), holding the service with that one node:
  `{"name", "version", "metadata", "endpoints", "nodes": [{"id", "address": "host:port",
  "metadata"}]}`.
- `kratos` (prefix `/microservices/`): `<service>/<instance-id>`, as Kratos' etcd registry
  writes it (under a lease): `{"id", "name", "version", "metadata", "endpoints":
  ["http://host:port", "grpc://host:port?isSecure=false"]}`.
- `json` (prefix `/services/`; the default layout): `<service>/<instance-id>` holding
  `{"address": "10.0.0.1", "port": 8080}` or `"ports": {"http": 8080, "grpc-api": 9090}`
  instead of `port`, and optionally `"metadata": {…}`, `"tags": […]`, `"healthy": true`,
  `"weight": 1`.

Mapping (see `mapping` for the rules shared by every registry):

- **service**: the value's `name` (go-micro, Kratos) or the key's `<service>` segment (json);
  host `{service}.{namespace}.etcd` by default, e.g. `greeter.default.etcd`.
- **ports**: go-micro nodes have one unnamed port; its protocol comes from the node's
  `protocol` metadata (`grpc`, `http`) and is TCP otherwise (go-micro's own `mucp` protocol is
  not HTTP that Envoy could route). Kratos endpoints become ports named by their scheme
  (`http`, `grpc`; `https`, `tls-grpc` with `isSecure=true`), so the protocol follows. json
  ports are named as given; an unnamed `port` takes `protocol=` or HTTP.
- **labels**: the service's and the node's metadata (the node's wins), plus `version`.
- **health**: go-micro and Kratos keys exist only while the instance lives (leases), so every
  key is healthy; json values may say `"healthy": false`.

More layouts can be added without changing meshpilot: publish an object with `name`,
`default_prefix`, `default_protocol` and `parse(service, node, value) -> [Instance]` in the
`meshpilot.etcd_layouts` entry-point group and select it with `layout=<name>`.

Client: `aetcd` (asyncio, maintained, works with etcd 3.4 and 3.5) connects, authenticates
(`username=`, `password=`) and provides the generated etcd API. The adapter drives the Watch
RPC itself through aetcd's stubs, because aetcd's own watch helper hands events over one at a
time without the response boundaries, `created` or `canceled` answers that batching and
compaction handling rely on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any
from typing import Protocol as TypingProtocol
from urllib.parse import parse_qs, urlsplit

import aetcd
import aetcd.exceptions
import grpc
from aetcd import rpc

from meshpilot.model import Protocol
from meshpilot.registry.base import ServiceRegistry, Updater
from meshpilot.registry.catalog import ExternalRegistry, RegistryError
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import RegistryUrl, RegistryUrlError

log = logging.getLogger("meshpilot.registry.etcd")

LAYOUT_GROUP = "meshpilot.etcd_layouts"

_KEEPALIVE = {
    # Notice a server that disappeared without closing the connection. etcd's default minimum
    # ping interval is 5 s; pinging more often gets the connection closed ("too many pings").
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    # A page of 1,000 large registrations can pass gRPC's default 4 MiB.
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}


class EtcdLayout(TypingProtocol):
    """How a key layout turns one key's value into instances."""

    @property
    def name(self) -> str: ...

    @property
    def default_prefix(self) -> str: ...

    @property
    def default_protocol(self) -> Protocol: ...

    def parse(self, service: str, node: str, value: bytes) -> list[Instance]:
        """Instances stored at `<prefix><service>/<node>`; raise ValueError when unreadable."""
        ...


# Value helpers ---------------------------------------------------------------------------------


def _object(value: bytes) -> dict[str, Any]:
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _strings(value: Any) -> dict[str, str]:
    """A metadata map as strings (registries write numbers and booleans too)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()
            if v is not None}


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} has no port")
    return host.strip("[]"), int(port)


def _weight(meta: Mapping[str, str], value: Any = None) -> int:
    raw = value if value is not None else meta.get("weight", 1)
    try:
        return max(int(float(raw)), 0)
    except (TypeError, ValueError):
        return 1


# Layouts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoMicroLayout:
    """go-micro's etcd registry: `/micro/registry/<service>/<node-id>`, one node per key."""

    name: str = "go-micro"
    default_prefix: str = "/micro/registry/"
    default_protocol: Protocol = Protocol.TCP

    def parse(self, service: str, node: str, value: bytes) -> list[Instance]:
        data = _object(value)
        name = str(data.get("name") or service)
        service_meta = _strings(data.get("metadata"))
        version = str(data.get("version") or "")
        out = []
        for entry in data.get("nodes") or []:
            host, port = split_host_port(str(entry["address"]))
            meta = {**service_meta, **_strings(entry.get("metadata"))}
            if version:
                meta.setdefault("version", version)
            out.append(Instance(
                service=name,
                id=str(entry.get("id") or node),
                address=host,
                ports={"": port},
                metadata=meta,
                weight=_weight(meta),
            ))
        return out


_KRATOS_PORT_NAMES = {
    ("http", False): "http",
    ("http", True): "https",
    ("grpc", False): "grpc",
    ("grpc", True): "tls-grpc",
}


@dataclass(frozen=True)
class KratosLayout:
    """Kratos' etcd registry: `/microservices/<service>/<id>`, endpoints as URLs."""

    name: str = "kratos"
    default_prefix: str = "/microservices/"
    default_protocol: Protocol = Protocol.HTTP

    def parse(self, service: str, node: str, value: bytes) -> list[Instance]:
        data = _object(value)
        name = str(data.get("name") or service)
        ident = str(data.get("id") or node)
        meta = _strings(data.get("metadata"))
        if data.get("version"):
            meta.setdefault("version", str(data["version"]))
        # An instance normally listens on one host; should endpoints name several, each host
        # becomes an instance of its own (an endpoint has one address).
        by_host: dict[str, dict[str, int]] = {}
        for text in data.get("endpoints") or []:
            parts = urlsplit(str(text))
            if not parts.hostname or parts.port is None:
                raise ValueError(f"endpoint {text!r} has no host:port")
            secure = parse_qs(parts.query).get("isSecure", ["false"])[0].lower() == "true"
            scheme = parts.scheme.lower() or "http"
            port_name = _KRATOS_PORT_NAMES.get((scheme, secure), scheme)
            by_host.setdefault(parts.hostname, {})[port_name] = parts.port
        return [
            Instance(
                service=name,
                id=ident if i == 0 else f"{ident}@{host}",
                address=host,
                ports=ports,
                metadata=meta,
                weight=_weight(meta),
            )
            for i, (host, ports) in enumerate(by_host.items())
        ]


@dataclass(frozen=True)
class JsonLayout:
    """meshpilot's plain layout: `<prefix>/<service>/<id>` → one instance as JSON."""

    name: str = "json"
    default_prefix: str = "/services/"
    default_protocol: Protocol = Protocol.HTTP

    def parse(self, service: str, node: str, value: bytes) -> list[Instance]:
        data = _object(value)
        address = str(data["address"])
        ports: dict[str, int]
        if isinstance(data.get("ports"), dict):
            ports = {str(k): int(v) for k, v in data["ports"].items()}
        elif data.get("port") is not None:
            ports = {"": int(data["port"])}
        else:
            raise ValueError("neither 'port' nor 'ports'")
        meta = _strings(data.get("metadata"))
        tags = data.get("tags") or []
        return [Instance(
            service=service,
            id=str(data.get("id") or node),
            address=address,
            ports=ports,
            metadata=meta,
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
            healthy=bool(data.get("healthy", True)),
            weight=_weight(meta, data.get("weight")),
        )]


BUILTIN_LAYOUTS: dict[str, EtcdLayout] = {
    layout.name: layout for layout in (GoMicroLayout(), KratosLayout(), JsonLayout())
}


def find_layout(name: str) -> EtcdLayout:
    """A built-in layout, or one published in the `meshpilot.etcd_layouts` entry points."""
    if name in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[name]
    for entry in entry_points(group=LAYOUT_GROUP):
        if entry.name == name:
            found = entry.load()
            layout: EtcdLayout = found() if isinstance(found, type) else found
            return layout
    known = sorted({*BUILTIN_LAYOUTS, *(e.name for e in entry_points(group=LAYOUT_GROUP))})
    raise RegistryUrlError(f"etcd layout {name!r} is unknown (known: {', '.join(known)})")


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix`."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # all 0xff: to the end of the keyspace


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted (now {revision})")
        self.revision = revision


# The adapter ---------------------------------------------------------------------------------


class EtcdRegistry(ExternalRegistry):
    def __init__(self, url: RegistryUrl, updater: Updater) -> None:
        self.layout = find_layout(url.param("layout", "json"))
        super().__init__(url, updater, MappingRules.from_url(url, self.layout.default_protocol))
        prefix = url.param("prefix") or self.layout.default_prefix
        # A trailing slash keeps `/micro/registry` from also matching `/micro/registry2/…`.
        self.prefix = (prefix if prefix.endswith("/") else prefix + "/").encode()
        self.page_size = max(int(url.number("pageSize", 1000)), 1)
        self.timeout = url.number("timeout", 10.0)
        self.revision = 0
        self.relists = 0
        self._attempt = 0
        self._nodes: dict[str, dict[bytes, tuple[Instance, ...]]] = {}
        """service → key → the instances that key holds."""
        self._service_of: dict[bytes, str] = {}
        self._bad_keys: set[tuple[bytes, bytes]] = set()

    def status(self) -> dict[str, Any]:
        return {**super().status(), "layout": self.layout.name,
                "prefix": self.prefix.decode(errors="replace"), "revision": self.revision,
                "relists": self.relists}

    async def watch(self) -> None:
        host, port = self.url.hosts[self._attempt % len(self.url.hosts)]
        self._attempt += 1
        client = aetcd.Client(
            host, port,
            username=self.url.param("username") or None,
            password=self.url.param("password") or None,
            timeout=self.timeout,
            options=_KEEPALIVE,
        )
        try:
            await client.connect()
            while True:
                try:
                    revision = await self._list(client)
                    await self._follow(client, revision + 1)
                except _Compacted as compacted:
                    # Changes between our revision and the compaction are gone: only a new
                    # listing can tell what the keys are now.
                    self.relists += 1
                    log.info("etcd %s: %s; listing again", self.url.name, compacted)
        except (aetcd.exceptions.ClientError, grpc.RpcError) as error:
            raise RegistryError(f"etcd {host}:{port}: {_describe(error)}") from error
        finally:
            await client.close()

    # Listing ---------------------------------------------------------------------------------

    async def _list(self, client: Any) -> int:
        start, end = self.prefix, prefix_range_end(self.prefix)
        revision = 0
        values: dict[bytes, bytes] = {}
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=self.page_size, revision=revision)
            try:
                response = await client.kvstub.Range(
                    request, timeout=self.timeout, metadata=client.metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.OUT_OF_RANGE and revision:
                    raise _Compacted(revision) from error  # compacted between two pages
                raise
            if not revision:
                revision = int(response.header.revision)
            for kv in response.kvs:
                values[kv.key] = kv.value
            if not response.more or not response.kvs:
                break
            start = response.kvs[-1].key + b"\0"
        self._nodes.clear()
        self._service_of.clear()
        for key, value in values.items():
            self._store(key, value)
        self.catalog.replace_all(self._by_service())
        self.revision = revision
        self.synced()
        log.debug("etcd %s: listed %d keys at revision %d", self.url.name, len(values), revision)
        return revision

    # Watching --------------------------------------------------------------------------------

    async def _follow(self, client: Any, start_revision: int) -> None:
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=self.prefix,
                range_end=prefix_range_end(self.prefix),
                start_revision=start_revision,
            ))
            # Keep our half of the stream open: etcd ends the watch when the client closes it.
            await stop.wait()

        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
        try:
            async for response in call:
                if response.compact_revision:
                    raise _Compacted(int(response.compact_revision))
                if response.canceled:
                    raise RegistryError(f"watch canceled: {response.cancel_reason or 'no reason'}")
                if response.events:
                    self._apply(response.events)
                    self.revision = int(response.header.revision)
        finally:
            stop.set()
            call.cancel()
        raise RegistryError("watch stream ended")

    def _apply(self, events: Iterable[Any]) -> None:
        touched: set[str] = set()
        for event in events:
            key = event.kv.key
            before = self._drop(key)
            if before:
                touched.add(before)
            if event.type == rpc.Event.PUT:
                after = self._store(key, event.kv.value)
                if after:
                    touched.add(after)
        for service in sorted(touched):
            self.catalog.replace(service, self._instances_of(service))

    # State -----------------------------------------------------------------------------------

    def _store(self, key: bytes, value: bytes) -> str | None:
        """Read one key into the state; the service it belongs to, or None if unreadable."""
        relative = key[len(self.prefix):].decode(errors="replace").strip("/")
        service, _, node = relative.partition("/")
        if not service or not node:
            return None  # a directory-style marker or a key outside the layout
        try:
            instances = self.layout.parse(service, node, value)
        except (ValueError, KeyError, TypeError) as error:
            # Once per key and value: a bad value is not repeated every relist.
            if (key, value) not in self._bad_keys:
                self._bad_keys.add((key, value))
                log.warning("etcd %s: ignoring %s: %s", self.url.name, key.decode(errors="replace"),
                            error)
            return None
        if not instances:
            return None
        name = instances[0].service
        self._nodes.setdefault(name, {})[key] = tuple(i for i in instances if i.service == name)
        self._service_of[key] = name
        return name

    def _drop(self, key: bytes) -> str | None:
        service = self._service_of.pop(key, None)
        if service is not None:
            nodes = self._nodes.get(service, {})
            nodes.pop(key, None)
            if not nodes:
                self._nodes.pop(service, None)
        return service

    def _instances_of(self, service: str) -> list[Instance]:
        return [i for key in sorted(self._nodes.get(service, {}))
                for i in self._nodes[service][key]]

    def _by_service(self) -> dict[str, list[Instance]]:
        return {service: self._instances_of(service) for service in self._nodes}


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    cause = error.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        return f"{cause.code().name}: {cause.details()}"
    return f"{type(error).__name__}: {error}"


def create(url: RegistryUrl, updater: Updater) -> ServiceRegistry:
    return EtcdRegistry(url, updater)
