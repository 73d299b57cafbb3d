"""MeshConfig ext_authz providers → Envoy ext_authz filters, for AuthorizationPolicy CUSTOM.

A provider is an `extensionProviders` entry with `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`. Its
`service` (a mesh host, `ns/host` accepted) and `port` must be a known service port: the filter
calls the existing outbound cluster `outbound|<port>||<host>`, which every sidecar gets even when
a Sidecar resource would hide the service (clusters.py). Fields follow Istio's MeshConfig:

    timeout        how long Envoy waits for the authorizer (Istio's default: 10 minutes)
    failOpen       let the request through when the authorizer cannot be reached or fails
    statusOnError  the status returned in that case instead (default 403)
    pathPrefix     (HTTP) prepended to the request's path in the check request
    includeRequestHeadersInCheck, includeAdditionalHeadersInCheck, headersToUpstreamOnAllow,
    headersToDownstreamOnDeny, headersToDownstreamOnAllow (HTTP): header names, with Istio's
                   `prefix*` / `*suffix` / `*` forms, matched case-insensitively
    includeRequestBodyInCheck  maxRequestBytes, allowPartialMessage, packAsBytes

The filter is enabled only for requests whose dynamic metadata carries the marker the shadow
RBAC filter before it writes (`istio_ext_authz_shadow_effective_policy_id`, a policy id starting
`istio-ext-authz-`): requests the CUSTOM rules do not match never reach the authorizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as network_ext_authz_pb2
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2

from meshpilot.envoy import names
from meshpilot.envoy.protos import duration, parse_duration
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

HTTP_FILTER = "envoy.filters.http.ext_authz"
NETWORK_FILTER = "envoy.filters.network.ext_authz"
STAT_PREFIX = "istio_ext_authz_"
"""The shadow RBAC filter's `shadow_rules_stat_prefix`; Envoy prefixes its metadata keys with
it, so the marker is `istio_ext_authz_shadow_effective_policy_id`."""
POLICY_PREFIX = "istio-ext-authz-"
_MARKER_KEY = f"{STAT_PREFIX}shadow_effective_policy_id"
_RBAC_HTTP = "envoy.filters.http.rbac"
_RBAC_NETWORK = "envoy.filters.network.rbac"
_DEFAULT_TIMEOUT = 600.0
_KINDS = ("envoyExtAuthzHttp", "envoyExtAuthzGrpc")


@dataclass(frozen=True)
class Provider:
    name: str
    grpc: bool
    host: str
    port: int
    settings: Mapping[str, Any]

    @property
    def cluster(self) -> str:
        return names.outbound_cluster(self.host, self.port)


def provider(snapshot: Snapshot, name: str) -> Provider | None:
    """The named ext_authz provider, if MeshConfig has it and its service port is known."""
    entry = snapshot.mesh.provider(name) if name else None
    kind = next((k for k in _KINDS if entry is not None and k in entry), None)
    if entry is None or kind is None:
        return None
    settings = entry[kind]
    if not isinstance(settings, Mapping):
        return None
    host = str(settings.get("service", "")).rpartition("/")[2]  # `ns/host` names the host
    port = int(settings.get("port") or 0)
    service = snapshot.services.get(host)
    if service is None or service.port(port) is None:
        key = ("ext-authz-unknown-service", name, host, port)
        if key not in snapshot.cache:
            snapshot.cache[key] = True
            log.warning("ext_authz provider %r: %s:%d is not a known service and port",
                        name, host, port)
        return None
    return Provider(name, kind == "envoyExtAuthzGrpc", host, port, settings)


def provider_targets(snapshot: Snapshot) -> frozenset[tuple[str, int]]:
    """(host, port) of every usable ext_authz provider: sidecars need their clusters."""
    key = ("ext-authz-targets",)
    cached = snapshot.cache.get(key)
    if cached is None:
        found = (provider(snapshot, str(p.get("name", "")))
                 for p in snapshot.mesh.extension_providers)
        cached = frozenset((p.host, p.port) for p in found if p is not None)
        snapshot.cache[key] = cached
    return frozenset(cached)


def http_filter(target: Provider) -> http_ext_authz_pb2.ExtAuthz:
    settings = target.settings
    config = http_ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=bool(settings.get("failOpen", False)),
    )
    config.status_on_error.code = _status(settings)
    timeout = _timeout(settings)
    if target.grpc:
        config.grpc_service.envoy_grpc.cluster_name = target.cluster
        config.grpc_service.envoy_grpc.authority = target.host
        config.grpc_service.timeout.CopyFrom(timeout)
    else:
        service = config.http_service
        service.server_uri.uri = f"http://{target.host}"
        service.server_uri.cluster = target.cluster
        service.server_uri.timeout.CopyFrom(timeout)
        service.path_prefix = str(settings.get("pathPrefix", ""))
        headers = settings.get("includeRequestHeadersInCheck") or settings.get(
            "includeHeadersInCheck") or ()
        # Envoy rejects an empty ListStringMatcher: set each list only when given.
        if headers:
            config.allowed_headers.patterns.extend(_matcher(str(h)) for h in headers)
        for header, value in (settings.get("includeAdditionalHeadersInCheck") or {}).items():
            add = service.authorization_request.headers_to_add.add()
            add.key, add.value = str(header), str(value)
        response = service.authorization_response
        for field, attribute in (
            ("headersToUpstreamOnAllow", response.allowed_upstream_headers),
            ("headersToDownstreamOnDeny", response.allowed_client_headers),
            ("headersToDownstreamOnAllow", response.allowed_client_headers_on_success),
        ):
            if settings.get(field):
                attribute.patterns.extend(_matcher(str(h)) for h in settings[field])
    body = settings.get("includeRequestBodyInCheck")
    if isinstance(body, Mapping):
        config.with_request_body.max_request_bytes = int(body.get("maxRequestBytes") or 0)
        config.with_request_body.allow_partial_message = bool(body.get("allowPartialMessage"))
        config.with_request_body.pack_as_bytes = bool(body.get("packAsBytes"))
    config.filter_enabled_metadata.CopyFrom(_marker(_RBAC_HTTP))
    return config


def network_filter(target: Provider, stat_prefix: str) -> network_ext_authz_pb2.ExtAuthz:
    """The network filter: gRPC providers only (checked by the caller)."""
    config = network_ext_authz_pb2.ExtAuthz(
        stat_prefix=stat_prefix,
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=bool(target.settings.get("failOpen", False)),
    )
    config.grpc_service.envoy_grpc.cluster_name = target.cluster
    config.grpc_service.envoy_grpc.authority = target.host
    config.grpc_service.timeout.CopyFrom(_timeout(target.settings))
    config.filter_enabled_metadata.CopyFrom(_marker(_RBAC_NETWORK))
    return config


def _status(settings: Mapping[str, Any]) -> int:
    try:
        return int(settings.get("statusOnError") or 403)
    except ValueError:
        log.warning("ext_authz statusOnError %r is not a number; using 403",
                    settings.get("statusOnError"))
        return 403


def _timeout(settings: Mapping[str, Any]) -> Any:
    text = settings.get("timeout")
    return parse_duration(str(text)) if text else duration(_DEFAULT_TIMEOUT)


def _marker(rbac_filter: str) -> metadata_pb2.MetadataMatcher:
    matcher = metadata_pb2.MetadataMatcher(filter=rbac_filter)
    matcher.path.add(key=_MARKER_KEY)
    matcher.value.string_match.prefix = POLICY_PREFIX
    return matcher


def _matcher(name: str) -> string_pb2.StringMatcher:
    """Istio's header name forms: `*` (any), `prefix*`, `*suffix`, or exact."""
    if name == "*":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
    if name.endswith("*"):
        return string_pb2.StringMatcher(prefix=name[:-1], ignore_case=True)
    if name.startswith("*"):
        return string_pb2.StringMatcher(suffix=name[1:], ignore_case=True)
    return string_pb2.StringMatcher(exact=name, ignore_case=True)

