"""A thin adapter over `kubernetes_asyncio`: objects as plain JSON, every resource alike.

`kubernetes_asyncio` does the parts that are hard to get right — reading a kubeconfig (contexts,
client certificates, exec and token plugins) or the in-cluster service account, TLS, and
bearer-token refresh — and its `ApiClient` carries the requests. Its generated typed API
classes are not used: meshpilot reads Services, EndpointSlices, Pods, Leases, Secrets and Istio
custom resources the same way, as dictionaries, so one small set of verbs (list, watch, get, create,
replace, replace_status, apply, delete) covers all of them and a watch stream is read line by
line with full control over `resourceVersion`, bookmarks and 410 Gone.

Errors: the API's own refusals raise `KubeApiError` with the HTTP status and the `Status`
object's reason (`status == 409` conflict, `410` expired, `404` not found); a connection that
fails or breaks raises `KubeUnavailable`, an `OSError`, which is what the registry engine and
the config stores treat as "the source is away, keep the last known state and retry".

Addresses: `kube://?kubeconfig=PATH&context=NAME` (`kubeconfig` defaults to `$KUBECONFIG`, then
`~/.kube/config`; inside a pod — `KUBERNETES_SERVICE_HOST` set and no kubeconfig given — the
service account is used, or force it with `inCluster=true`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

log = logging.getLogger("meshpilot.kube")

Object = dict[str, Any]


class KubeUnavailable(OSError):
    """The API server could not be reached, or the connection broke."""


class KubeApiError(Exception):
    """The API server refused a request (its `Status`: code, reason, message)."""

    def __init__(self, status: int, reason: str, message: str,
                 body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})

    @classmethod
    def from_status(cls, status: Mapping[str, Any], http_status: int = 0) -> KubeApiError:
        return cls(int(status.get("code") or http_status), str(status.get("reason") or ""),
                   str(status.get("message") or ""), status)


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource type: where it lives in the API and what its objects are called."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}/{self.version}"


SERVICES = Resource("", "v1", "services", "Service")
PODS = Resource("", "v1", "pods", "Pod")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
SECRETS = Resource("", "v1", "secrets", "Secret")


def plural_of(kind: str) -> str:
    """Kubernetes' default plural: ServiceEntry → serviceentries, Gateway → gateways."""
    lower = kind.lower()
    if lower.endswith("y") and not lower.endswith(("ay", "ey", "oy", "uy")):
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    return lower + "s"


def custom_resource(group: str, version: str, kind: str) -> Resource:
    return Resource(group, version, plural_of(kind), kind)


@dataclass(frozen=True, slots=True)
class KubeOptions:
    """How to reach an API server, read from a `kube://` address."""

    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False
    params: Mapping[str, str] | None = None
    text: str = "kube://"

    @classmethod
    def from_url(cls, text: str) -> KubeOptions:
        parts = urlsplit(text)
        if parts.scheme != "kube":
            raise ValueError(f"{text!r}: expected kube://?kubeconfig=PATH&context=NAME")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        # `kube://CONTEXT` is accepted as a short form of `?context=CONTEXT`.
        context = params.get("context") or parts.netloc
        return cls(
            kubeconfig=params.get("kubeconfig", ""),
            context=context,
            in_cluster=params.get("inCluster", "").lower() in ("1", "true", "yes"),
            params=params,
            text=text,
        )

    def param(self, key: str, default: str = "") -> str:
        return (self.params or {}).get(key, default)

    def seconds(self, key: str, default: float) -> float:
        value = self.param(key)
        try:
            return float(value) if value else default
        except ValueError as error:
            raise ValueError(f"{self.text}: {key}={value!r} is not a number") from error

    @property
    def name(self) -> str:
        return f"kube:{self.context}" if self.context else "kube"


def _use_in_cluster(options: KubeOptions) -> bool:
    if options.in_cluster:
        return True
    if options.kubeconfig or os.environ.get("KUBECONFIG"):
        return False
    default = Path.home() / ".kube" / "config"
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not default.exists()


async def load_configuration(options: KubeOptions) -> Configuration:
    configuration = Configuration()
    try:
        if _use_in_cluster(options):
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = options.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
            await load_kube_config(config_file=path or None, context=options.context or None,
                                   client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError) as error:
        raise ValueError(f"{options.text}: cannot load the Kubernetes configuration: "
                         f"{error}") from error
    return configuration


@dataclass(frozen=True, slots=True)
class ObjectList:
    items: list[Object]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED or BOOKMARK (ERROR events are raised as KubeApiError)."""
    object: Object

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))


APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


class KubeClient:
    """Raw JSON verbs over an `ApiClient`. Create with `await KubeClient.connect(options)`."""

    def __init__(self, api: ApiClient, *, request_timeout: float = 30.0) -> None:
        self.api = api
        self.request_timeout = request_timeout

    @classmethod
    async def connect(cls, options: KubeOptions, user_agent: str = "meshpilot") -> KubeClient:
        configuration = await load_configuration(options)
        api = ApiClient(configuration)
        # The User-Agent names this process (its leader-election identity where it has one),
        # so an API server's audit log tells the replicas apart.
        api.user_agent = user_agent
        return cls(api)

    async def close(self) -> None:
        await self.api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # Transport ---------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, query: Mapping[str, str] | None,
                    body: Any, content_type: str, limits: aiohttp.ClientTimeout
                    ) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            response: aiohttp.ClientResponse = await self.api.call_api(
                path, method, query_params=list((query or {}).items()), header_params=headers,
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=limits,
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeUnavailable(f"{method} {path}: {type(error).__name__}: {error}") from error
        return response

    async def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Object:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        response = await self._send(method, path, query, body, content_type, timeout)
        try:
            raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeUnavailable(f"{method} {path}: {error}") from error
        finally:
            response.release()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError as error:
            if response.status >= 400:
                raise KubeApiError(response.status, response.reason or "",
                                   raw[:200].decode(errors="replace")) from error
            raise KubeUnavailable(f"{method} {path}: the response is not JSON") from error
        if response.status >= 400:
            if isinstance(data, dict) and data.get("kind") == "Status":
                raise KubeApiError.from_status(data, response.status)
            raise KubeApiError(response.status, response.reason or "", str(data)[:200])
        if not isinstance(data, dict):
            raise KubeUnavailable(f"{method} {path}: expected a JSON object")
        return data

    # Verbs -------------------------------------------------------------------------------------

    async def list(self, resource: Resource, namespace: str | None = None, *,
                   label_selector: str = "", field_selector: str = "",
                   limit: int = 500) -> ObjectList:
        """Every object (all pages), and the resourceVersion to watch from."""
        items: list[Object] = []
        query: dict[str, str] = {"limit": str(limit)}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        while True:
            page = await self.request("GET", resource.path(namespace), query=query)
            for item in page.get("items") or []:
                # Items of built-in lists come without kind and apiVersion.
                item.setdefault("kind", resource.kind)
                item.setdefault("apiVersion", resource.api_version)
                items.append(item)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return ObjectList(items, str(metadata.get("resourceVersion", "")))
            query["continue"] = token

    async def watch(self, resource: Resource, resource_version: str,
                    namespace: str | None = None, *, label_selector: str = "",
                    field_selector: str = "",
                    timeout_seconds: int = 0) -> AsyncIterator[WatchEvent]:
        """Changes after `resource_version`, until the server ends the stream.

        Bookmarks are asked for and passed on (they only move the resourceVersion). An ERROR
        event raises KubeApiError — 410 Expired means the caller must list again.
        """
        seconds = timeout_seconds or random.randint(300, 600)  # spread re-watches, as client-go
        query = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds),
                 "resourceVersion": resource_version}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        # No total timeout: the stream lasts `seconds`; a silent connection is cut after a read
        # gap well beyond the bookmark interval.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=seconds + 30)
        response = await self._send("GET", resource.path(namespace), query, None,
                                    "application/json", timeout)
        try:
            if response.status >= 400:
                raw = await response.read()
                try:
                    status = json.loads(raw)
                except ValueError:
                    status = {"message": raw[:200].decode(errors="replace")}
                raise KubeApiError.from_status(status, response.status)
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, TimeoutError) as error:
                    raise KubeUnavailable(f"watch {resource}: {error}") from error
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as error:
                    raise KubeUnavailable(f"watch {resource}: a line is not JSON") from error
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    raise KubeApiError.from_status(obj)
                if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    raise KubeUnavailable(f"watch {resource}: unknown event type {kind!r}")
                yield WatchEvent(kind, obj)
        finally:
            response.close()

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Object | None:
        try:
            return await self.request("GET", resource.path(namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, resource: Resource, obj: Object) -> Object:
        namespace = obj.get("metadata", {}).get("namespace")
        return await self.request("POST", resource.path(namespace), body=obj)

    async def replace(self, resource: Resource, obj: Object) -> Object:
        """PUT; with `metadata.resourceVersion` set, a stale object answers 409."""
        meta = obj["metadata"]
        return await self.request("PUT", resource.path(meta.get("namespace"), meta["name"]),
                                  body=obj)

    async def replace_status(self, resource: Resource, obj: Object) -> Object:
        meta = obj["metadata"]
        return await self.request(
            "PUT", resource.path(meta.get("namespace"), meta["name"], "status"), body=obj)

    async def apply(self, resource: Resource, obj: Object, *, field_manager: str,
                    force: bool = False) -> Object:
        """Server-side apply: the fields in `obj` are what `field_manager` wants."""
        meta = obj["metadata"]
        query = {"fieldManager": field_manager}
        if force:
            query["force"] = "true"
        # JSON is YAML: the apply content type takes the JSON body as it is.
        return await self.request("PATCH", resource.path(meta.get("namespace"), meta["name"]),
                                  query=query, body=obj, content_type=APPLY_PATCH)

    async def delete(self, resource: Resource, namespace: str | None, name: str, *,
                     uid: str = "", resource_version: str = "") -> None:
        """Delete, optionally only if the object is still the one seen (else 409)."""
        body: Object = {"kind": "DeleteOptions", "apiVersion": "v1"}
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version))
                         if v}
        if preconditions:
            body["preconditions"] = preconditions
        await self.request("DELETE", resource.path(namespace, name), body=body)


async def sleep_jitter(seconds: float) -> None:
    """Sleep about `seconds` (±20%), so replicas retrying together spread out."""
    await asyncio.sleep(seconds * random.uniform(0.8, 1.2))
