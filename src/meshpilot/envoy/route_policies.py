"""Per-route behaviour from VirtualService http routes: faults, CORS, mirroring, hashing.

Each builder takes the Istio fields as written and returns the Envoy message, or None when the
route does not use the feature. Faults and CORS are configured per route through
`typed_per_filter_config`, against filters every HTTP connection manager carries (see
`listeners.HTTP_FILTERS`), which is how Istio does it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2 as previous_priorities_pb2,
)
from envoy.type.v3 import percent_pb2

from meshpilot.envoy.matchers import string_matcher
from meshpilot.envoy.protos import pack, parse_duration

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"

# gRPC status names Istio accepts in `abort.grpcStatus`, with their codes.
_GRPC_STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
GRPC_CODES = {name: code for code, name in enumerate(_GRPC_STATUS_NAMES)}


def fraction(spec: Mapping[str, Any] | None, legacy_percent: Any = None) -> Any:
    """Istio's `percentage: {value: 12.5}` (or a legacy integer `percent`) as a fraction of a
    million, Envoy's finest denominator. Absent means 100%."""
    value = 100.0
    if spec is not None and "value" in spec:
        value = float(spec["value"])
    elif legacy_percent is not None:
        value = float(legacy_percent)
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def fault(spec: Mapping[str, Any] | None) -> fault_pb2.HTTPFault | None:
    if not spec:
        return None
    out = fault_pb2.HTTPFault()
    delay: Mapping[str, Any] = spec.get("delay") or {}
    if "fixedDelay" in delay:
        out.delay.fixed_delay.CopyFrom(parse_duration(str(delay["fixedDelay"])))
        out.delay.percentage.CopyFrom(fraction(delay.get("percentage"), delay.get("percent")))
    elif "exponentialDelay" in delay:
        raise ValueError("fault.delay.exponentialDelay is not supported by Envoy")
    abort: Mapping[str, Any] = spec.get("abort") or {}
    if "httpStatus" in abort:
        out.abort.http_status = int(abort["httpStatus"])
    elif "grpcStatus" in abort:
        status = str(abort["grpcStatus"])
        out.abort.grpc_status = int(status) if status.isdigit() else GRPC_CODES[status]
    if abort:
        out.abort.percentage.CopyFrom(fraction(abort.get("percentage")))
    return out


def cors(spec: Mapping[str, Any] | None) -> cors_pb2.CorsPolicy | None:
    if not spec:
        return None
    out = cors_pb2.CorsPolicy()
    for origin in spec.get("allowOrigins") or ():
        out.allow_origin_string_match.append(string_matcher(origin))
    for origin in spec.get("allowOrigin") or ():  # deprecated list of exact origins
        out.allow_origin_string_match.append(string_matcher({"exact": origin}))
    if spec.get("allowMethods"):
        out.allow_methods = ",".join(spec["allowMethods"])
    if spec.get("allowHeaders"):
        out.allow_headers = ",".join(spec["allowHeaders"])
    if spec.get("exposeHeaders"):
        out.expose_headers = ",".join(spec["exposeHeaders"])
    if "maxAge" in spec:
        out.max_age = str(parse_duration(str(spec["maxAge"])).seconds)
    if "allowCredentials" in spec:
        out.allow_credentials.value = bool(spec["allowCredentials"])
    if "unmatchedPreflights" in spec:
        forward = str(spec["unmatchedPreflights"]).upper() != "IGNORE"
        out.forward_not_matching_preflights.value = forward
    return out


def mirror_policies(
    http: Mapping[str, Any], cluster_of: Any
) -> list[rc.RouteAction.RequestMirrorPolicy]:
    """`mirror` + `mirrorPercentage` (or the legacy `mirrorPercent`), and `mirrors`.

    `cluster_of(destination)` turns an Istio Destination into a cluster name.
    """
    out = []
    if "mirror" in http:
        policy = rc.RouteAction.RequestMirrorPolicy(cluster=cluster_of(http["mirror"]))
        policy.runtime_fraction.default_value.CopyFrom(
            fraction(http.get("mirrorPercentage"), http.get("mirrorPercent"))
        )
        out.append(policy)
    for mirror in http.get("mirrors") or ():
        policy = rc.RouteAction.RequestMirrorPolicy(cluster=cluster_of(mirror["destination"]))
        policy.runtime_fraction.default_value.CopyFrom(fraction(mirror.get("percentage")))
        out.append(policy)
    return out


def hash_policy(consistent_hash: Mapping[str, Any]) -> rc.RouteAction.HashPolicy | None:
    """The route-side half of a DestinationRule's `loadBalancer.consistentHash`."""
    policy = rc.RouteAction.HashPolicy()
    if "httpHeaderName" in consistent_hash:
        policy.header.header_name = str(consistent_hash["httpHeaderName"])
    elif "httpCookie" in consistent_hash:
        cookie = consistent_hash["httpCookie"]
        policy.cookie.name = str(cookie["name"])
        if cookie.get("path"):
            policy.cookie.path = str(cookie["path"])
        if cookie.get("ttl"):
            policy.cookie.ttl.CopyFrom(parse_duration(str(cookie["ttl"])))
    elif consistent_hash.get("useSourceIp"):
        policy.connection_properties.source_ip = True
    elif "httpQueryParameterName" in consistent_hash:
        policy.query_parameter.name = str(consistent_hash["httpQueryParameterName"])
    else:
        return None
    return policy


def retry_remote_localities(policy: rc.RetryPolicy) -> None:
    """Retries prefer other priorities (localities) than the ones that already failed."""
    config = previous_priorities_pb2.PreviousPrioritiesConfig(update_frequency=2)
    policy.retry_priority.name = "envoy.retry_priorities.previous_priorities"
    policy.retry_priority.typed_config.CopyFrom(pack(config))

