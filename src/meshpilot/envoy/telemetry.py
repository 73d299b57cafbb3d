"""Tracing and access logging for a proxy's HTTP connection managers.

What applies to a proxy comes from Istio's Telemetry resources, most specific first: one in
the proxy's namespace whose `selector` matches its labels, then one in its namespace without a
selector, then one in the root namespace (mesh-wide); each section (tracing, accessLogging)
is taken from the most specific resource that sets it. Without one, the MeshConfig decides:
`defaultProviders.tracing` with `defaultConfig.tracing.sampling` (1% by default), and
`accessLogFile`/`accessLogFormat`/`accessLogEncoding`.

Providers are MeshConfig `extensionProviders`:

- `zipkin: {service, port}` → Envoy's Zipkin tracer (JSON v2 spans to `/api/v2/spans`);
- `opentelemetry: {service, port}` → Envoy's OpenTelemetry tracer over gRPC;
- `envoyFileAccessLog: {path, logFormat: {text | labels}}` → a file access log (`labels`
  makes JSON lines); the built-in provider `envoy` is the MeshConfig access log settings.

A collector's `service` must be a service meshpilot knows (a ServiceEntry or a registry's),
because spans go to its outbound cluster; otherwise tracing is left off with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.tracing.v3 import custom_tag_pb2

from meshpilot.envoy import names
from meshpilot.envoy.protos import pack
from meshpilot.model import Config, Proxy
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

FILE_LOGGER = "envoy.access_loggers.file"
ZIPKIN = "envoy.tracers.zipkin"
OPENTELEMETRY = "envoy.tracers.opentelemetry"

ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
"""Istio's default access log line."""

ISTIO_JSON_LABELS = {
    "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
    "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%", "authority": "%REQ(:AUTHORITY)%",
    "request_id": "%REQ(X-REQUEST-ID)%", "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%", "route_name": "%ROUTE_NAME%",
}


@dataclass(frozen=True, slots=True)
class ProxyTelemetry:
    tracing: Any
    """An HttpConnectionManager.Tracing, or None."""
    access_logs: tuple[Any, ...]
    key: tuple[Any, ...]
    """What the result depends on, for cache keys of resources that embed it."""

    def apply(self, manager: hcm_pb2.HttpConnectionManager) -> None:
        if self.tracing is not None:
            manager.tracing.CopyFrom(self.tracing)
        manager.access_log.extend(self.access_logs)


def for_proxy(snapshot: Snapshot, proxy: Proxy) -> ProxyTelemetry:
    selected = _selected(snapshot, proxy)
    key = ("telemetry", proxy.namespace, tuple(str(c.key) for c in selected))
    found: ProxyTelemetry | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = ProxyTelemetry(
            _tracing(snapshot, selected), _access_logs(snapshot, selected), key
        )
    return found


def applicable(snapshot: Snapshot, proxy: Proxy) -> list[Config]:
    """The Telemetry resources that apply to a proxy, most specific first (the console's
    metrics overrides select by the same rules)."""
    return _selected(snapshot, proxy)


def _selected(snapshot: Snapshot, proxy: Proxy) -> list[Config]:
    """Applicable Telemetry resources, most specific first."""
    workload, namespace, root = [], [], []
    for telemetry in snapshot.telemetries:
        selector: Mapping[str, str] = (telemetry.spec.get("selector") or {}).get(
            "matchLabels"
        ) or {}
        if telemetry.namespace == proxy.namespace:
            if selector:
                if all(proxy.labels.get(k) == v for k, v in selector.items()):
                    workload.append(telemetry)
            else:
                namespace.append(telemetry)
        elif telemetry.namespace == snapshot.mesh.root_namespace and not selector:
            root.append(telemetry)
    return [*workload[:1], *namespace[:1], *root[:1]]


def _section(selected: list[Config], name: str) -> Mapping[str, Any] | None:
    for telemetry in selected:
        entries = telemetry.spec.get(name)
        if entries:
            first: Mapping[str, Any] = entries[0]
            return first
    return None


def _tracing(snapshot: Snapshot, selected: list[Config]) -> Any:
    mesh = snapshot.mesh
    section = _section(selected, "tracing")
    if section is None and not mesh.enable_tracing:
        return None
    if section is not None and section.get("disableSpanReporting"):
        return None
    provider_names = (
        [str(p.get("name")) for p in section.get("providers") or ()] if section else []
    ) or mesh.default_providers.get("tracing", [])
    if not provider_names:
        return None
    provider = mesh.provider(provider_names[0])
    if provider is None:
        log.warning("tracing provider %r is not in the MeshConfig's extensionProviders",
                    provider_names[0])
        return None
    tracer = _tracer(snapshot, provider)
    if tracer is None:
        return None
    tracing = hcm_pb2.HttpConnectionManager.Tracing()
    tracing.provider.CopyFrom(tracer)
    sampling = section.get("randomSamplingPercentage") if section else None
    tracing.random_sampling.value = float(
        sampling if sampling is not None else mesh.tracing_sampling
    )
    for tag, spec in ((section or {}).get("customTags") or {}).items():
        tracing.custom_tags.append(_custom_tag(str(tag), spec))
    return tracing


def _collector_cluster(snapshot: Snapshot, settings: Mapping[str, Any]) -> str | None:
    service = str(settings.get("service", ""))
    port = int(settings.get("port") or 0)
    known = snapshot.services.get(service)
    if known is None or known.port(port) is None:
        log.warning("tracing collector %s:%d is not a known service and port; tracing off",
                    service, port)
        return None
    return names.outbound_cluster(service, port)


def _tracer(snapshot: Snapshot, provider: Mapping[str, Any]) -> Any:
    if "zipkin" in provider:
        settings = provider["zipkin"]
        cluster = _collector_cluster(snapshot, settings)
        if cluster is None:
            return None
        config = zipkin_pb2.ZipkinConfig(
            collector_cluster=cluster,
            collector_endpoint="/api/v2/spans",
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            collector_hostname=str(settings.get("service")),
        )
        config.trace_id_128bit = not settings.get("enable64bitTraceId", False)
        config.shared_span_context.value = False
        return http_tracer_pb2.Tracing.Http(name=ZIPKIN, typed_config=pack(config))
    if "opentelemetry" in provider:
        settings = provider["opentelemetry"]
        cluster = _collector_cluster(snapshot, settings)
        if cluster is None:
            return None
        config = opentelemetry_pb2.OpenTelemetryConfig()
        config.grpc_service.envoy_grpc.cluster_name = cluster
        return http_tracer_pb2.Tracing.Http(name=OPENTELEMETRY, typed_config=pack(config))
    log.warning("tracing provider %r is not zipkin or opentelemetry", provider.get("name"))
    return None


def _custom_tag(tag: str, spec: Mapping[str, Any]) -> custom_tag_pb2.CustomTag:
    out = custom_tag_pb2.CustomTag(tag=tag)
    if "literal" in spec:
        out.literal.value = str(spec["literal"].get("value", ""))
    elif "environment" in spec:
        out.environment.name = str(spec["environment"]["name"])
        out.environment.default_value = str(spec["environment"].get("defaultValue", ""))
    elif "header" in spec:
        out.request_header.name = str(spec["header"]["name"])
        out.request_header.default_value = str(spec["header"].get("defaultValue", ""))
    return out


def _access_logs(snapshot: Snapshot, selected: list[Config]) -> tuple[Any, ...]:
    mesh = snapshot.mesh
    section = _section(selected, "accessLogging")
    if section is not None:
        if section.get("disabled"):
            return ()
        names_ = [str(p.get("name")) for p in section.get("providers") or ()] or ["envoy"]
    else:
        names_ = ["envoy"] if mesh.access_log_file else []
    out = []
    for name in names_:
        if name == "envoy":
            path = mesh.access_log_file or "/dev/stdout"
            fmt = mesh.access_log_format or ""
            out.append(_file_log(path, fmt, None, json=mesh.access_log_encoding == "JSON"))
            continue
        provider = mesh.provider(name)
        settings = (provider or {}).get("envoyFileAccessLog")
        if settings is None:
            log.warning("access log provider %r is not an envoyFileAccessLog provider", name)
            continue
        log_format: Mapping[str, Any] = settings.get("logFormat") or {}
        out.append(_file_log(str(settings.get("path") or "/dev/stdout"),
                             str(log_format.get("text") or ""), log_format.get("labels"),
                             json="labels" in log_format))
    return tuple(out)


def _file_log(path: str, text: str, labels: Mapping[str, Any] | None, json: bool) -> Any:
    config = file_pb2.FileAccessLog(path=path)
    if json:
        config.log_format.json_format.update(dict(labels or ISTIO_JSON_LABELS))
    else:
        line = text or ISTIO_TEXT_FORMAT
        config.log_format.text_format_source.inline_string = (
            line if line.endswith("\n") else line + "\n"
        )
    return accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(config))
