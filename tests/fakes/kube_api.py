"""A fake Kubernetes API server, for the Kubernetes registry, config store, status writer,
leader election and `registry-sync --to kube` — there is no API server on these machines.

It is an aiohttp app written from the Kubernetes API documentation ("API Concepts",
"Server-Side Apply", the Lease and EndpointSlice references). What it reproduces:

- **Resources**: core `v1` Services (with a status subresource; a ClusterIP is assigned), Pods
  (status subresource), Secrets (`data` must be base64), Namespaces (cluster-scoped);
  `discovery.k8s.io/v1` EndpointSlices; `coordination.k8s.io/v1` Leases; and the
  `networking.istio.io` custom resources (every kind meshpilot admits) served at `v1`,
  `v1beta1` and `v1alpha3` from one stored object (the CRDs'
  `conversion: None`), each with a status subresource; likewise `security.istio.io`
  (PeerAuthentication, AuthorizationPolicy, RequestAuthentication at `v1`, `v1beta1`) and
  `telemetry.istio.io` Telemetry (`v1`, `v1alpha1`); the SMI kinds (`split.`, `specs.`,
  `access.smi-spec.io`, `v1alpha1`…`v1alpha4`) and the Gateway API's HTTPRoute, GRPCRoute,
  TCPRoute and Gateway, at the versions meshpilot admits. Objects in a namespace that does not
  exist are refused with 404; deleting a namespace deletes what it holds.
- **Object metadata**: `uid`, `creationTimestamp`, `resourceVersion` from one cluster-wide
  counter (etcd's revision), `generation` bumped on spec changes only, `managedFields`.
- **List** (`GET` a collection, all namespaces or one): `labelSelector` (equality and set-based:
  `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`), `fieldSelector` on
  `metadata.name` / `metadata.namespace`, `limit` and `continue` (a continue token older than
  the compaction window answers 410 Expired), the list's `metadata.resourceVersion`. Items of
  built-in lists carry no `kind`/`apiVersion`, items of custom resources do, as the real server.
- **Watch** (`?watch=1`): JSON lines of ADDED / MODIFIED / DELETED; `resourceVersion` unset or
  `0` starts with synthetic ADDED events for the current state; a `resourceVersion` older than
  the retained history gets an `ERROR` event carrying a 410 Expired Status (the client must
  relist); `allowWatchBookmarks=true` gets BOOKMARK events (every `bookmark_interval` s, when
  nothing else is pending); `timeoutSeconds` ends the stream; a label-selected watch sees an
  object leave the selection as DELETED and enter it as ADDED.
- **Writes**: `POST` (201; 409 AlreadyExists), `PUT` with optimistic concurrency (a stale
  `metadata.resourceVersion` answers 409 Conflict "the object has been modified"), `PUT` and
  `PATCH` of the `status` subresource (which change only `status`, while writes to the main
  resource leave `status` alone), JSON merge patches (`application/merge-patch+json`; a
  strategic merge patch is read as a merge patch for built-in kinds and refused with 415 for
  custom resources, as the real server does), `DELETE` with `preconditions` (uid,
  resourceVersion → 409 on mismatch).
- **Server-side apply** (`PATCH` with `application/apply-patch+yaml`): `fieldManager` is
  required; the applied configuration is merged field by field (maps granular, lists atomic —
  what custom resources without list-type markers get), each manager owns the fields it
  applied; a field another manager owns with a different value is a 409 Conflict listing the
  fields unless `force=true`, which takes them over; fields a manager applied before and no
  longer applies are removed when nobody else owns them; the object is created if absent.
  Non-apply writes give their manager (`fieldManager`, else the User-Agent's product) the
  fields they changed.
- **Authentication**: with `tokens` set, requests need `Authorization: Bearer <token>` (401).

For tests: `writes` records every successful write (verb, resource, namespace, name, the field
manager and the User-Agent, which meshpilot sets to its identity), `compact()` forgets the
watch history (every older `resourceVersion` becomes 410), `close_watches()` ends every open
watch as a server restart would, and the fault injection of `FakeServer` (HTTP 500, malformed
JSON, stop and start on the same port).

Not reproduced: admission webhooks, finalizers and graceful deletion, RBAC, `generateName`,
JSON patch, `resourceVersionMatch`, consistent snapshots across list pages (pages are cut from
the current state), protobuf, and OpenAPI validation of custom resources beyond the envelope.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.fakes.base import FakeServer

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
ISTIO_KINDS = (
    "ServiceEntry", "WorkloadEntry", "WorkloadGroup", "VirtualService", "DestinationRule",
    "Gateway", "Sidecar",
)
SMI_VERSIONS = ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1")  # preferred first, as served
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


@dataclass(frozen=True)
class ResourceType:
    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False
    """Served with a status subresource."""
    custom: bool = False
    """A custom resource (list items carry kind and apiVersion; no strategic merge patch)."""

    @property
    def key(self) -> str:
        """Where its objects are kept: the plural alone is not unique (`gateways` of Istio and
        of the Gateway API, `tcproutes` of SMI and of the Gateway API)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str | None = None) -> str:
        version = version or self.versions[0]
        return f"{self.group}/{version}" if self.group else version


TYPES: tuple[ResourceType, ...] = (
    ResourceType("", ("v1",), "namespaces", "Namespace", namespaced=False, status=True),
    ResourceType("", ("v1",), "services", "Service", status=True),
    ResourceType("", ("v1",), "pods", "Pod", status=True),
    ResourceType("", ("v1",), "nodes", "Node", namespaced=False, status=True),
    ResourceType("discovery.k8s.io", ("v1",), "endpointslices", "EndpointSlice"),
    ResourceType("coordination.k8s.io", ("v1",), "leases", "Lease"),
    ResourceType("", ("v1",), "secrets", "Secret"),
    *(ResourceType(ISTIO_GROUP, ISTIO_VERSIONS, plural(k), k, status=True, custom=True)
      for k in ISTIO_KINDS),
    *(ResourceType("security.istio.io", ("v1", "v1beta1"), plural(k), k, status=True,
                   custom=True)
      for k in ("PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication")),
    ResourceType("telemetry.istio.io", ("v1", "v1alpha1"), "telemetries", "Telemetry",
                 status=True, custom=True),
    # SMI and Gateway API, at the versions meshpilot admits (config/kinds.py), as installed
    # from those projects' CRDs (also without conversion webhooks).
    *(ResourceType(group, SMI_VERSIONS, plural(k), k, status=True, custom=True)
      for group, k in (("split.smi-spec.io", "TrafficSplit"),
                       ("specs.smi-spec.io", "HTTPRouteGroup"), ("specs.smi-spec.io", "TCPRoute"),
                       ("specs.smi-spec.io", "UDPRoute"), ("access.smi-spec.io", "TrafficTarget"))),
    *(ResourceType("gateway.networking.k8s.io", versions, plural(k), k, status=True, custom=True)
      for k, versions in (("HTTPRoute", ("v1", "v1beta1", "v1alpha2")),
                          ("GRPCRoute", ("v1", "v1alpha2")), ("TCPRoute", ("v1alpha2",)),
                          ("Gateway", ("v1", "v1beta1")))),
)


@dataclass(frozen=True)
class Write:
    """One successful write, as the tests inspect them."""

    verb: str
    """create, update, patch, apply, delete (with `/status` for the subresource)."""
    kind: str
    namespace: str
    name: str
    manager: str
    user_agent: str
    resource_version: str
    body: dict[str, Any] = field(default_factory=dict, compare=False)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str,
                 causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.causes = causes or []

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.causes:
            body["details"] = {"causes": self.causes}
        return body

    def response(self) -> web.Response:
        return web.json_response(self.status(), status=self.code)


# --- Label selectors ----------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[A-Za-z0-9_.-]*))?\s*$"
)


def _split_selector(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def parse_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """Requirements (key, operator, values); raises ApiError 400 for bad syntax."""
    requirements: list[tuple[str, str, set[str]]] = []
    for part in _split_selector(text):
        match = _REQUIREMENT.match(part)
        if match is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        key, op, value = match["key"], (match["op"] or "").strip(), match["value"] or ""
        if match["neg"]:
            if op:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
            requirements.append((key, "!", set()))
        elif not op:
            requirements.append((key, "exists", set()))
        elif op in ("in", "notin"):
            if not (value.startswith("(") and value.endswith(")")):
                raise ApiError(400, "BadRequest", f"{op} needs a parenthesised set: {part!r}")
            values = {v.strip() for v in value[1:-1].split(",") if v.strip()}
            requirements.append((key, op, values))
        else:
            requirements.append((key, "!=" if op == "!=" else "=", {value}))
    return requirements


def selector_matches(requirements: list[tuple[str, str, set[str]]],
                     labels: dict[str, str]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
        if op in ("=", "in") and (not present or labels[key] not in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
    return True


# --- Field ownership (server-side apply) ----------------------------------------------------

Path_ = tuple[str, ...]


def leaf_paths(value: Any, prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Paths of the fields a configuration sets: maps are walked, lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaf_paths(item, (*prefix, str(key)))
    else:
        yield prefix, value


def managed_paths(obj: dict[str, Any], *, status: bool) -> dict[Path_, Any]:
    """The fields of an object that field management tracks (not identity metadata)."""
    paths: dict[Path_, Any] = {}
    metadata = obj.get("metadata") or {}
    for section in ("labels", "annotations"):
        for key, value in (metadata.get(section) or {}).items():
            paths[("metadata", section, key)] = value
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata") or (key == "status") != status:
            continue
        paths.update(leaf_paths(value, (key,)))
    return paths


def get_path(obj: Any, path: Path_) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def set_path(obj: dict[str, Any], path: Path_, value: Any) -> None:
    for key in path[:-1]:
        child = obj.get(key)
        if not isinstance(child, dict):
            child = obj[key] = {}
        obj = child
    obj[path[-1]] = copy.deepcopy(value)


def delete_path(obj: dict[str, Any], path: Path_) -> None:
    parents = [obj]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    # Drop maps left empty by the removal (but never the top level).
    for depth in range(len(parents) - 1, 0, -1):
        if not parents[depth]:
            parents[depth - 1].pop(path[depth - 1], None)


def fields_v1(paths: set[Path_]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


_MISSING = object()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- Storage --------------------------------------------------------------------------------


@dataclass
class _Stored:
    obj: dict[str, Any]
    owners: dict[tuple[str, str], set[Path_]] = field(default_factory=dict)
    """(manager, operation) → the field paths it owns."""


@dataclass
class _Event:
    revision: int
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass
class _Watcher:
    rtype: ResourceType
    namespace: str
    queue: asyncio.Queue[_Event | None]


class KubeApiFake(FakeServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, history: int = 10_000,
                 bookmark_interval: float = 1.0, tokens: set[str] | None = None) -> None:
        super().__init__(host, port)
        self.history_limit = history
        self.bookmark_interval = bookmark_interval
        self.tokens = tokens
        self.revision = 1
        self.objects: dict[str, dict[tuple[str, str], _Stored]] = {t.key: {} for t in TYPES}
        self.history: dict[str, list[_Event]] = {t.key: [] for t in TYPES}
        self.compacted: dict[str, int] = {t.key: 0 for t in TYPES}
        """Per type, the highest revision no longer in the watch history."""
        self.watchers: list[_Watcher] = []
        self.writes: list[Write] = []
        self.watch_starts: list[tuple[str, str]] = []
        """(plural, resourceVersion asked) of every watch opened, for tests."""
        self.lists: list[str] = []
        """Plural of every list served, for tests (relists after a 410 show here)."""
        self._ips = itertools.count(1)
        self.kubeconfig = ""
        """Path of a kubeconfig for this fake, once `write_kubeconfig` wrote one."""
        for name in ("default", "kube-system", "istio-system"):
            self.create("v1", "Namespace", {"metadata": {"name": name}})

    # Direct access (tests, on the fake's loop) ---------------------------------------------

    def type_of(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for rtype in TYPES:
            if rtype.group == group and rtype.kind == kind and version in rtype.versions:
                return rtype
        raise KeyError(f"{api_version} {kind} is not served")

    def create(self, api_version: str, kind: str, obj: dict[str, Any],
               manager: str = "test") -> dict[str, Any]:
        rtype = self.type_of(api_version, kind)
        namespace = obj.get("metadata", {}).get("namespace", "default" if rtype.namespaced else "")
        return self._create(rtype, namespace, copy.deepcopy(obj), manager, "test", "")

    def update(self, api_version: str, kind: str, obj: dict[str, Any],
               manager: str = "test", *, status: bool = False) -> dict[str, Any]:
        """PUT the object, or with `status` its status subresource (as another controller)."""
        rtype = self.type_of(api_version, kind)
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default" if rtype.namespaced else "")
        return self._update(rtype, namespace, meta["name"], copy.deepcopy(obj), manager, "test",
                            status=status)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._delete(self.type_of(api_version, kind), namespace, name, None, "test", "test")

    def get(self, api_version: str, kind: str, namespace: str, name: str
            ) -> dict[str, Any] | None:
        rtype = self.type_of(api_version, kind)
        stored = self.objects[rtype.key].get((namespace if rtype.namespaced else "", name))
        return self._render(rtype, stored, api_version.rpartition("/")[2]) if stored else None

    def items(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        rtype = self.type_of(api_version, kind)
        version = api_version.rpartition("/")[2]
        return [self._render(rtype, s, version) for _, s in
                sorted(self.objects[rtype.key].items())]

    def compact(self) -> None:
        """Forget the watch history: every resourceVersion before now is too old (410)."""
        for plural_name in self.history:
            self.history[plural_name].clear()
            self.compacted[plural_name] = self.revision

    def close_watches(self) -> None:
        """End every open watch cleanly, as an API server does on restart or timeout."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)

    def write_kubeconfig(self, path: Path, token: str = "fake-token",
                         context: str = "fake") -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": context, "cluster": {"server": f"http://{self.address}"}}],
            "users": [{"name": context, "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        }
        path.write_text(yaml.safe_dump(config))
        self.kubeconfig = str(path)
        return path

    def writes_of(self, kind: str, verb_prefix: str = "") -> list[Write]:
        return [w for w in self.writes if w.kind == kind and w.verb.startswith(verb_prefix)]

    # HTTP --------------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authenticate(request)
            return await self._dispatch(request)
        except ApiError as error:
            return error.response()

    def _authenticate(self, request: web.Request) -> None:
        if self.tokens is None:
            return
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in self.tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _route(self, path: str) -> tuple[ResourceType, str, str, str, str]:
        """(type, version, namespace, name, subresource) for an API path."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                                            f"({path})")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        elif len(rest) == 2 and rest[0] == "namespaces" and group == "":
            return self._find(group, version, "namespaces"), version, "", rest[1], ""
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                                            f"({path})")
        rtype = self._find(group, version, rest[0])
        if namespace and not rtype.namespaced:
            raise ApiError(404, "NotFound", f"{rtype.plural} is not namespaced")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and (sub != "status" or not rtype.status):
            raise ApiError(404, "NotFound", f"{rtype.plural} has no subresource {sub!r}")
        return rtype, version, namespace, name, sub

    def _find(self, group: str, version: str, plural_name: str) -> ResourceType:
        for rtype in TYPES:
            if rtype.group == group and rtype.plural == plural_name and version in rtype.versions:
                return rtype
        raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                                        f"({group}/{version} {plural_name})")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        rtype, version, namespace, name, sub = self._route(request.path)
        query = request.query
        agent = request.headers.get("User-Agent", "")
        manager = query.get("fieldManager") or agent.split("/", 1)[0] or "unknown"
        method = request.method
        if method == "GET" and not name:
            if query.get("watch") in ("1", "true"):
                return await self._watch(request, rtype, version, namespace)
            return web.json_response(self._list(rtype, version, namespace, query))
        if method == "GET":
            stored = self._stored(rtype, namespace, name)
            return web.json_response(self._render(rtype, stored, version))
        body = await self._body(request)
        if method == "POST" and not name:
            self._check_body(rtype, version, body, namespace, None)
            created = self._create(rtype, namespace, body, manager, agent, version)
            return web.json_response(created, status=201)
        if method == "PUT" and name:
            self._check_body(rtype, version, body, namespace, name)
            updated = self._update(rtype, namespace, name, body, manager, agent,
                                   status=sub == "status", version=version)
            return web.json_response(updated)
        if method == "PATCH" and name:
            return await self._patch(request, rtype, version, namespace, name, sub, body,
                                     manager, agent)
        if method == "DELETE" and name:
            preconditions = (body or {}).get("preconditions") if isinstance(body, dict) else None
            self._delete(rtype, namespace, name, preconditions, manager, agent)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                      "status": "Success",
                                      "details": {"name": name, "kind": rtype.plural}})
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    async def _body(self, request: web.Request) -> Any:
        if not request.can_read_body:
            return None
        text = await request.text()
        if not text.strip():
            return None
        try:
            if request.content_type == "application/apply-patch+yaml":
                return yaml.safe_load(text)
            return json.loads(text)
        except (ValueError, yaml.YAMLError) as error:
            raise ApiError(400, "BadRequest", f"the body could not be decoded: {error}") from error

    def _check_body(self, rtype: ResourceType, version: str, body: Any, namespace: str,
                    name: str | None) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        if body.get("kind") not in (None, rtype.kind):
            raise ApiError(400, "BadRequest", f"kind {body.get('kind')!r} does not match "
                                              f"{rtype.kind}")
        if body.get("apiVersion") not in (None, rtype.api_version(version)):
            raise ApiError(400, "BadRequest", f"apiVersion {body.get('apiVersion')!r} does not "
                                              f"match {rtype.api_version(version)}")
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            raise ApiError(422, "Invalid", f"{rtype.kind} is invalid: metadata: Required value")
        if meta.get("namespace") not in (None, "", namespace) and rtype.namespaced:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                                              "match the namespace sent on the request")
        if name is not None and meta.get("name") != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name "
                                              "on the URL")

    # Reads -------------------------------------------------------------------------------------

    def _stored(self, rtype: ResourceType, namespace: str, name: str) -> _Stored:
        stored = self.objects[rtype.key].get((namespace, name))
        if stored is None:
            raise ApiError(404, "NotFound", f'{rtype.plural} "{name}" not found')
        return stored

    def _render(self, rtype: ResourceType, stored: _Stored, version: str | None = None
                ) -> dict[str, Any]:
        obj = copy.deepcopy(stored.obj)
        obj["apiVersion"] = rtype.api_version(version)
        obj["kind"] = rtype.kind
        obj["metadata"]["managedFields"] = [
            {"manager": manager, "operation": operation, "apiVersion": obj["apiVersion"],
             "fieldsType": "FieldsV1", "fieldsV1": fields_v1(paths)}
            for (manager, operation), paths in sorted(stored.owners.items()) if paths
        ]
        return obj

    def _filters(self, query: Any) -> tuple[list[tuple[str, str, set[str]]], dict[str, str]]:
        labels = parse_selector(query.get("labelSelector", ""))
        fields: dict[str, str] = {}
        for part in _split_selector(query.get("fieldSelector", "")):
            key, sep, value = part.partition("=")
            key = key.strip().rstrip("=")
            if not sep or key not in ("metadata.name", "metadata.namespace"):
                raise ApiError(400, "BadRequest", f'"{part}" is not a known field selector: '
                                                  "only metadata.name and metadata.namespace")
            fields[key] = value.strip().lstrip("=")
        return labels, fields

    @staticmethod
    def _matches(obj: dict[str, Any], namespace: str,
                 filters: tuple[list[tuple[str, str, set[str]]], dict[str, str]]) -> bool:
        meta = obj["metadata"]
        if namespace and meta.get("namespace") != namespace:
            return False
        labels, fields = filters
        if "metadata.name" in fields and meta["name"] != fields["metadata.name"]:
            return False
        if "metadata.namespace" in fields and meta.get("namespace") != fields[
                "metadata.namespace"]:
            return False
        return selector_matches(labels, meta.get("labels") or {})

    def _list(self, rtype: ResourceType, version: str, namespace: str, query: Any
              ) -> dict[str, Any]:
        self.lists.append(rtype.plural)
        filters = self._filters(query)
        start = ""
        if query.get("continue"):
            try:
                token = json.loads(base64.b64decode(query["continue"]))
                list_rv, start = int(token["rv"]), str(token["start"])
            except (ValueError, KeyError, TypeError) as error:
                raise ApiError(400, "BadRequest", "invalid continue token") from error
            if list_rv < self.compacted[rtype.key]:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to "
                                               "display a consistent list result. You can start "
                                               "a new list without the continue parameter.")
        limit = int(query.get("limit") or 0)
        keys = sorted(k for k in self.objects[rtype.key] if f"{k[0]}/{k[1]}" > start)
        items: list[dict[str, Any]] = []
        more = ""
        for key in keys:
            stored = self.objects[rtype.key][key]
            if not self._matches(stored.obj, namespace, filters):
                continue
            if limit and len(items) == limit:
                more = base64.b64encode(json.dumps(
                    {"rv": self.revision, "start": f"{items[-1]['metadata'].get('namespace', '')}"
                                                   f"/{items[-1]['metadata']['name']}"}
                ).encode()).decode()
                break
            item = self._render(rtype, stored, version)
            if not rtype.custom:
                del item["apiVersion"], item["kind"]
            items.append(item)
        metadata: dict[str, Any] = {"resourceVersion": str(self.revision)}
        if more:
            metadata["continue"] = more
        return {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version(version),
                "metadata": metadata, "items": items}

    async def _watch(self, request: web.Request, rtype: ResourceType, version: str,
                     namespace: str) -> web.StreamResponse:
        query = request.query
        filters = self._filters(query)
        asked = query.get("resourceVersion", "")
        self.watch_starts.append((rtype.plural, asked))
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watcher = _Watcher(rtype, namespace, asyncio.Queue())
        pending: list[dict[str, Any]] = []
        if asked in ("", "0"):
            pending = [{"type": "ADDED", "object": self._render(rtype, s, version)}
                       for _, s in sorted(self.objects[rtype.key].items())
                       if self._matches(s.obj, namespace, filters)]
        else:
            try:
                since = int(asked)
            except ValueError:
                since = -1
            if since < self.compacted[rtype.key]:
                pending = [{"type": "ERROR", "object": ApiError(
                    410, "Expired", f"too old resource version: {asked} "
                                    f"({self.compacted[rtype.key] + 1})").status()}]
                for error_event in pending:
                    await response.write(json.dumps(error_event).encode() + b"\n")
                await response.write_eof()
                return response
            for event in self.history[rtype.key]:
                if event.revision > since:
                    watcher.queue.put_nowait(event)
        self.watchers.append(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for event_json in pending:
                await response.write(json.dumps(event_json).encode() + b"\n")
            while (left := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(min(left, self.bookmark_interval)):
                        queued = await watcher.queue.get()
                except TimeoutError:
                    if bookmarks and loop.time() < deadline:
                        await response.write(json.dumps({"type": "BOOKMARK", "object": {
                            "kind": rtype.kind, "apiVersion": rtype.api_version(version),
                            "metadata": {"resourceVersion": str(self.revision)}}}).encode()
                            + b"\n")
                    continue
                if queued is None:
                    break
                out = self._filtered(queued, namespace, filters, rtype, version)
                if out is not None:
                    await response.write(json.dumps(out).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self.watchers.remove(watcher)
        return response

    def _filtered(self, event: _Event, namespace: str,
                  filters: tuple[list[tuple[str, str, set[str]]], dict[str, str]],
                  rtype: ResourceType, version: str) -> dict[str, Any] | None:
        """An event as a selected watch sees it: objects enter and leave the selection."""
        now = self._matches(event.obj, namespace, filters)
        before = event.old is not None and self._matches(event.old, namespace, filters)
        kind = event.type
        if kind == "MODIFIED":
            if now and not before:
                kind = "ADDED"
            elif before and not now:
                kind = "DELETED"
            elif not now:
                return None
        elif not now:
            return None
        obj = copy.deepcopy(event.obj)
        obj["apiVersion"] = rtype.api_version(version)
        obj["kind"] = rtype.kind
        return {"type": kind, "object": obj}

    # Writes ------------------------------------------------------------------------------------

    def _emit(self, rtype: ResourceType, kind: str, obj: dict[str, Any],
              old: dict[str, Any] | None) -> None:
        event = _Event(self.revision, kind, copy.deepcopy(obj), old)
        history = self.history[rtype.key]
        history.append(event)
        if len(history) > self.history_limit:
            dropped = history.pop(0)
            self.compacted[rtype.key] = dropped.revision
        for watcher in self.watchers:
            if watcher.rtype is rtype:
                watcher.queue.put_nowait(event)

    def _record(self, verb: str, rtype: ResourceType, namespace: str, name: str, manager: str,
                agent: str, body: Any = None) -> None:
        self.writes.append(Write(verb, rtype.kind, namespace, name, manager, agent,
                                 str(self.revision), body if isinstance(body, dict) else {}))

    def _next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)

    def _validate(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(422, "Invalid", f"{rtype.kind} is invalid: metadata.name: Required "
                                           "value: name or generateName is required")
        pattern = _DNS1123_LABEL if rtype.kind in ("Namespace", "Service") else _DNS1123_SUBDOMAIN
        if len(name) > 253 or not pattern.match(name):
            raise ApiError(422, "Invalid", f'{rtype.kind} "{name}" is invalid: metadata.name: '
                                           f"Invalid value: {name!r}",
                           [{"type": "FieldValueInvalid", "field": "metadata.name",
                             "message": "a lowercase RFC 1123 name"}])
        for section in ("labels", "annotations"):
            values = meta.get(section)
            if values is None:
                continue
            if not isinstance(values, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
                raise ApiError(400, "BadRequest", f"metadata.{section} must map strings to "
                                                  "strings")
        if rtype.kind == "Secret":
            # The real server decodes `data` into bytes: anything not base64 is refused.
            for key, value in (obj.get("data") or {}).items():
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise ApiError(400, "BadRequest", f"Secret.data[{key}]: illegal base64 "
                                                      "data") from None

    def _create(self, rtype: ResourceType, namespace: str, body: dict[str, Any], manager: str,
                agent: str, version: str, *, operation: str = "Update",
                owned: set[Path_] | None = None) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            meta["namespace"] = namespace
            if ("", namespace) not in self.objects["namespaces"]:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        else:
            meta.pop("namespace", None)
        self._validate(rtype, obj)
        key = (namespace if rtype.namespaced else "", meta["name"])
        if key in self.objects[rtype.key]:
            raise ApiError(409, "AlreadyExists", f'{rtype.plural} "{meta["name"]}" already '
                                                 "exists")
        for transient in ("resourceVersion", "uid", "creationTimestamp", "generation",
                          "managedFields", "deletionTimestamp"):
            meta.pop(transient, None)
        if rtype.status:
            obj.pop("status", None)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)
        if rtype.kind == "Service":
            spec = obj.setdefault("spec", {})
            if spec.get("type") != "ExternalName" and not spec.get("clusterIP"):
                number = next(self._ips)
                spec["clusterIP"] = f"10.96.{number // 250}.{number % 250 + 1}"
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_revision(),
                    creationTimestamp=_now(), generation=1)
        paths = owned if owned is not None else set(managed_paths(obj, status=False))
        stored = _Stored(obj, {(manager, operation): set(paths)} if paths else {})
        self.objects[rtype.key][key] = stored
        self._emit(rtype, "ADDED", obj, None)
        self._record("apply" if operation == "Apply" else "create", rtype, namespace,
                     meta["name"], manager, agent, body)
        return self._render(rtype, stored, version or None)

    def _update(self, rtype: ResourceType, namespace: str, name: str, body: dict[str, Any],
                manager: str, agent: str, *, status: bool, version: str = "",
                verb: str = "update") -> dict[str, Any]:
        key = (namespace if rtype.namespaced else "", name)
        stored = self._stored(rtype, *key)
        current = stored.obj
        asked = body.get("metadata", {}).get("resourceVersion")
        if asked and asked != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rtype.plural}'
                                            f'{"." + rtype.group if rtype.group else ""} '
                                            f'"{name}": the object has been modified; please '
                                            "apply your changes to the latest version and try "
                                            "again")
        new = copy.deepcopy(current)
        if status:
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            keep_meta = {k: current["metadata"][k] for k in (
                "name", "namespace", "uid", "creationTimestamp", "generation",
                "resourceVersion") if k in current["metadata"]}
            new = {k: copy.deepcopy(v) for k, v in body.items()
                   if k not in ("apiVersion", "kind", "status")}
            new["metadata"] = {**{k: v for k, v in new.get("metadata", {}).items()
                                  if k != "managedFields"}, **keep_meta}
            if rtype.status and "status" in current:
                new["status"] = current["status"]
            elif not rtype.status and "status" in body:
                new["status"] = copy.deepcopy(body["status"])
        self._validate(rtype, new)
        return self._commit(rtype, stored, new, manager, agent,
                            verb + ("/status" if status else ""), version, body)

    def _commit(self, rtype: ResourceType, stored: _Stored, new: dict[str, Any], manager: str,
                agent: str, verb: str, version: str, body: Any,
                operation: str = "Update") -> dict[str, Any]:
        current = stored.obj
        if _content(new) == _content(current):
            # A write that changes nothing is a no-op: no new resourceVersion, no event.
            return self._render(rtype, stored, version or None)
        status = verb.endswith("/status")
        if operation == "Update":
            before = managed_paths(current, status=status)
            after = managed_paths(new, status=status)
            changed = {p for p in after if before.get(p, _MISSING) != after[p]}
            changed |= {p for p in before if p not in after}
            for owner, paths in stored.owners.items():
                if owner != (manager, operation):
                    paths -= changed
            mine = stored.owners.setdefault((manager, operation), set())
            mine |= {p for p in changed if p in after}
        if _spec(new) != _spec(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_revision()
        stored.obj = new
        self._emit(rtype, "MODIFIED", new, current)
        self._record(verb, rtype, new["metadata"].get("namespace", ""), new["metadata"]["name"],
                     manager, agent, body)
        return self._render(rtype, stored, version or None)

    async def _patch(self, request: web.Request, rtype: ResourceType, version: str,
                     namespace: str, name: str, sub: str, body: Any, manager: str,
                     agent: str) -> web.Response:
        content_type = request.content_type
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the patch must be an object")
        if content_type == "application/apply-patch+yaml":
            field_manager = request.query.get("fieldManager")
            if not field_manager:
                raise ApiError(400, "BadRequest", "PATCH /apply requires a fieldManager")
            force = request.query.get("force") in ("1", "true")
            self._check_body(rtype, version, body, namespace, name)
            if body.get("apiVersion") is None or body.get("kind") is None:
                raise ApiError(400, "BadRequest", "apiVersion and kind are required in an "
                                                  "applied configuration")
            result = self._apply(rtype, version, namespace, name, body, field_manager, force,
                                 agent, status=sub == "status")
            return web.json_response(result)
        if content_type == "application/strategic-merge-patch+json" and rtype.custom:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an "
                                                        "unknown format - accepted media types "
                                                        "include: application/json-patch+json, "
                                                        "application/merge-patch+json, "
                                                        "application/apply-patch+yaml")
        if content_type not in ("application/merge-patch+json",
                                "application/strategic-merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType", f"{content_type} is not supported")
        key = (namespace if rtype.namespaced else "", name)
        stored = self._stored(rtype, *key)
        asked = (body.get("metadata") or {}).get("resourceVersion")
        if asked and asked != stored.obj["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rtype.plural} '
                                            f'"{name}": the object has been modified; please '
                                            "apply your changes to the latest version and try "
                                            "again")
        patched = merge_patch(stored.obj, body)
        patched["metadata"] = {**patched.get("metadata", {}),
                               **{k: stored.obj["metadata"][k] for k in (
                                   "name", "namespace", "uid", "creationTimestamp",
                                   "generation", "resourceVersion")
                                  if k in stored.obj["metadata"]}}
        status = sub == "status"
        if rtype.status:
            if status:
                patched = {**copy.deepcopy(stored.obj), "status": patched.get("status")}
                if patched["status"] is None:
                    del patched["status"]
            elif "status" in stored.obj:
                patched["status"] = copy.deepcopy(stored.obj["status"])
            else:
                patched.pop("status", None)
        self._validate(rtype, patched)
        result = self._commit(rtype, stored, patched, manager, agent,
                              "patch" + ("/status" if status else ""), version, body)
        return web.json_response(result)

    def _apply(self, rtype: ResourceType, version: str, namespace: str, name: str,
               config: dict[str, Any], manager: str, force: bool, agent: str, *,
               status: bool) -> dict[str, Any]:
        applied = managed_paths(config, status=status)
        key = (namespace if rtype.namespaced else "", name)
        stored = self.objects[rtype.key].get(key)
        if stored is None:
            if status:
                raise ApiError(404, "NotFound", f'{rtype.plural} "{name}" not found')
            body = {k: v for k, v in config.items() if k != "status" or not rtype.status}
            return self._create(rtype, namespace, body, manager, agent, version,
                                operation="Apply", owned=set(applied))
        current = stored.obj
        conflicts: dict[str, list[Path_]] = {}
        for (other, _operation), paths in stored.owners.items():
            if other == manager:
                continue
            for path in paths & applied.keys():
                if get_path(current, path) != applied[path]:
                    conflicts.setdefault(other, []).append(path)
        if conflicts and not force:
            causes = [{"type": "FieldManagerConflict",
                       "message": f'conflict with "{other}"',
                       "field": "." + ".".join(path)}
                      for other, paths in sorted(conflicts.items()) for path in sorted(paths)]
            raise ApiError(409, "Conflict", f"Apply failed with {len(causes)} conflict"
                                            f"{'s' if len(causes) > 1 else ''}: " + "; ".join(
                                                f'{c["message"]}: {c["field"]}' for c in causes),
                           causes)
        new = copy.deepcopy(current)
        mine = stored.owners.get((manager, "Apply"), set())
        others: set[Path_] = set()
        for owner, paths in stored.owners.items():
            if owner != (manager, "Apply"):
                if force:
                    paths.difference_update(applied)
                others |= paths
        for path in mine - applied.keys() - others:
            delete_path(new, path)
        for path, value in applied.items():
            set_path(new, path, value)
        stored.owners[(manager, "Apply")] = set(applied)
        self._validate(rtype, new)
        return self._commit(rtype, stored, new, manager, agent,
                            "apply" + ("/status" if status else ""), version, config,
                            operation="Apply")

    def _delete(self, rtype: ResourceType, namespace: str, name: str,
                preconditions: dict[str, Any] | None, manager: str, agent: str) -> None:
        key = (namespace if rtype.namespaced else "", name)
        stored = self._stored(rtype, *key)
        meta = stored.obj["metadata"]
        for field_name in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(field_name)
            if wanted and wanted != meta[field_name]:
                raise ApiError(409, "Conflict", f"Precondition failed: {field_name}: "
                                                f"expected {wanted}, found {meta[field_name]}")
        del self.objects[rtype.key][key]
        gone = copy.deepcopy(stored.obj)
        gone["metadata"]["resourceVersion"] = self._next_revision()
        self._emit(rtype, "DELETED", gone, stored.obj)
        self._record("delete", rtype, namespace, name, manager, agent)
        if rtype.kind == "Namespace":
            for other in TYPES:
                if other.namespaced:
                    for ns, item in [k for k in self.objects[other.key] if k[0] == name]:
                        self._delete(other, ns, item, None, manager, agent)


def _content(obj: dict[str, Any]) -> Any:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in (
        "resourceVersion", "managedFields", "generation")}
    return {**{k: v for k, v in obj.items() if k != "metadata"}, "metadata": meta}


def _spec(obj: dict[str, Any]) -> Any:
    """What `generation` follows: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- For tests: object builders and fixtures ----------------------------------------------------


def service_object(name: str, namespace: str = "default",
                   ports: list[dict[str, Any]] | None = None,
                   labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"ports": ports if ports is not None else
                     [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                     "selector": {"app": name}, **spec}}


def endpoint(address: str, pod: str = "", *, ready: bool | None = True,
             serving: bool | None = None, terminating: bool | None = None,
             zone: str = "", namespace: str = "default") -> dict[str, Any]:
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving),
                                    ("terminating", terminating)) if v is not None}
    entry: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if pod:
        entry["targetRef"] = {"kind": "Pod", "name": pod, "namespace": namespace}
    if zone:
        entry["zone"] = zone
    return entry


def endpoint_slice_object(service: str, endpoints: list[dict[str, Any]],
                          ports: list[tuple[str, int]] | None = None, *,
                          namespace: str = "default", name: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": name or f"{service}-abc12", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "test"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": "TCP"}
                  for n, p in (ports if ports is not None else [("http", 8080)])],
    }


def pod_object(name: str, ip: str, labels: dict[str, str], *, namespace: str = "default",
               service_account: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"serviceAccountName": service_account,
                     "containers": [{"name": "app", "image": "echo"}]},
            "status": {"podIP": ip, "phase": "Running"}}


def istio_object(kind: str, name: str, spec: dict[str, Any], namespace: str = "default",
                 labels: dict[str, str] | None = None, group: str = ISTIO_GROUP,
                 version: str = "v1") -> tuple[str, str, dict[str, Any]]:
    """(apiVersion, kind, object), ready for `KubeApiFake.create(*istio_object(…))`."""
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    if labels:
        obj["metadata"]["labels"] = labels
    return f"{group}/{version}", kind, obj


@contextlib.asynccontextmanager
async def running_api(directory: Path, **options: Any) -> Any:
    """A started fake on this loop, with `kubeconfig` (a path) pointing at it."""
    fake = KubeApiFake(**{"bookmark_interval": 0.2, **options})
    await fake.start()
    fake.write_kubeconfig(directory / "kubeconfig")
    try:
        yield fake
    finally:
        await fake.stop()
