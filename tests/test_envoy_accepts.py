"""Real Envoy accepts what meshpilot generates for every traffic feature.

Each case is a small mesh using one feature; a real `envoy --mode validate` loads the whole
config a sidecar would receive. A NACK-worthy field (a wrong type URL, a missing required
field, an unknown filter) fails the case with Envoy's own message.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshpilot.model import Config, Kind
from tests.envoy_check import envoy_rejects
from tests.simulation import sidecar, snapshot_of

REVIEWS = "reviews.default.svc.cluster.local"


def _se(name: str, hosts: list[str], ports: list[dict[str, Any]], **spec: Any) -> Config:
    body = {"hosts": hosts, "ports": ports, "resolution": "STATIC", "location": "MESH_INTERNAL",
            "endpoints": [{"address": "127.0.0.5", "labels": {"version": "v1"}},
                          {"address": "127.0.0.6", "labels": {"version": "v2"}}]}
    body.update(spec)
    return Config(Kind.SERVICE_ENTRY, name, "default", body)


HTTP = [{"number": 9080, "name": "http", "protocol": "HTTP"}]
MESH = [
    _se("reviews", [REVIEWS], HTTP),
    _se("db", ["db.default.svc.cluster.local"],
        [{"number": 5432, "name": "tcp", "protocol": "TCP"}]),
    _se("ext", ["api.example.com", "other.example.com"],
        [{"number": 443, "name": "tls", "protocol": "TLS"}], location="MESH_EXTERNAL"),
    Config(Kind.DESTINATION_RULE, "reviews", "default", {
        "host": "reviews",
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}}],
    }),
]


def _vs(http: dict[str, Any]) -> Config:
    route = [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 70},
             {"destination": {"host": "reviews", "subset": "v2"}, "weight": 30}]
    return Config(Kind.VIRTUAL_SERVICE, "reviews", "default",
                  {"hosts": ["reviews"], "http": [{"route": route, **http}]})


def _dr(policy: dict[str, Any]) -> Config:
    return Config(Kind.DESTINATION_RULE, "reviews", "default", {
        "host": "reviews", "trafficPolicy": policy,
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"},
                     "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}],
    })


CASES: dict[str, list[Config]] = {
    "fault delay and abort": [_vs({"fault": {
        "delay": {"fixedDelay": "2s", "percentage": {"value": 50}},
        "abort": {"httpStatus": 503, "percentage": {"value": 10.5}}}})],
    "fault grpc abort": [_vs({"fault": {"abort": {"grpcStatus": "UNAVAILABLE"}}})],
    "cors": [_vs({"corsPolicy": {
        "allowOrigins": [{"exact": "https://a.example"}, {"regex": ".*\\.b\\.example"}],
        "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a"], "exposeHeaders": ["x-b"],
        "maxAge": "24h", "allowCredentials": True, "unmatchedPreflights": "IGNORE"}})],
    "mirror": [_vs({"mirror": {"host": "reviews", "subset": "v2"},
                    "mirrorPercentage": {"value": 25}})],
    "mirrors": [_vs({"mirrors": [{"destination": {"host": "reviews", "subset": "v2"},
                                  "percentage": {"value": 5}}]})],
    "retries": [_vs({"retries": {"attempts": 3, "perTryTimeout": "1s",
                                 "retryOn": "5xx,gateway-error,503",
                                 "retryRemoteLocalities": True}})],
    "timeout and rewrite": [_vs({"timeout": "3s",
                                 "rewrite": {"uriRegexRewrite": {"match": "^/v1/(.*)",
                                                                 "rewrite": "/\\1"},
                                             "authority": "x"}})],
    "headers per destination": [Config(Kind.VIRTUAL_SERVICE, "reviews", "default", {
        "hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50,
             "headers": {"request": {"set": {"x-v": "1"}}, "response": {"add": {"x-r": "1"}}}},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50,
             "headers": {"request": {"remove": ["x-drop"]}}}]}]})],
    "redirect and direct response": [Config(Kind.VIRTUAL_SERVICE, "reviews", "default", {
        "hosts": ["reviews"], "http": [
            {"match": [{"uri": {"prefix": "/old"}}],
             "redirect": {"uri": "/new", "authority": "b", "redirectCode": 308}},
            {"directResponse": {"status": 418, "body": {"string": "teapot"}}}]})],
    "consistent hash by header": [_dr({"loadBalancer": {"consistentHash": {
        "httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 1024}}}})],
    "consistent hash by cookie, maglev": [_dr({"loadBalancer": {"consistentHash": {
        "httpCookie": {"name": "u", "ttl": "10s", "path": "/"}, "maglev": {"tableSize": 65537}}}})],
    "connection pool": [_dr({"connectionPool": {
        "tcp": {"maxConnections": 10, "connectTimeout": "1s",
                "tcpKeepalive": {"time": "60s", "interval": "10s", "probes": 3},
                "maxConnectionDuration": "1h"},
        "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 100, "maxRetries": 2,
                 "idleTimeout": "30s", "maxRequestsPerConnection": 4,
                 "h2UpgradePolicy": "UPGRADE", "maxConcurrentStreams": 50}}})],
    "outlier detection": [_dr({"outlierDetection": {
        "consecutive5xxErrors": 3, "consecutiveGatewayErrors": 2, "interval": "5s",
        "baseEjectionTime": "30s", "maxEjectionPercent": 50, "minHealthPercent": 20,
        "splitExternalLocalOriginErrors": True, "consecutiveLocalOriginFailures": 4}})],
    "tls simple": [_dr({"tls": {"mode": "SIMPLE", "sni": "reviews",
                                "subjectAltNames": ["reviews.example"]}})],
    "port level settings": [_dr({"portLevelSettings": [
        {"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]})],
    "tcp weighted route": [Config(Kind.VIRTUAL_SERVICE, "db", "default", {
        "hosts": ["db.default.svc.cluster.local"], "tcp": [{"match": [{"port": 5432}], "route": [
            {"destination": {"host": "db.default.svc.cluster.local"}, "weight": 60},
            {"destination": {"host": "reviews", "port": {"number": 9080}}, "weight": 40}]}]})],
    "tls sni route": [Config(Kind.VIRTUAL_SERVICE, "ext", "default", {
        "hosts": ["api.example.com"], "tls": [{"match": [{"port": 443,
                                                          "sniHosts": ["api.example.com"]}],
                                               "route": [{"destination": {
                                                   "host": "other.example.com"}}]}]})],
    "sidecar registry only": [Config(Kind.SIDECAR, "default", "default", {
        "egress": [{"hosts": ["./*"]}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})],
    "sidecar egress port and ingress": [Config(Kind.SIDECAR, "default", "default", {
        "ingress": [{"port": {"number": 9443, "protocol": "HTTP", "name": "in"},
                     "defaultEndpoint": "127.0.0.1:8080"}],
        "egress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                    "bind": "127.0.0.3", "hosts": ["./reviews.default.svc.cluster.local"]}]})],
}


@pytest.mark.parametrize("extra", list(CASES.values()), ids=list(CASES))
def test_envoy_accepts(extra: list[Config]) -> None:
    by_key = {c.key: c for c in [*MESH, *extra]}
    snapshot = snapshot_of(by_key.values())
    proxy = sidecar(ips=["127.0.0.9"])
    assert envoy_rejects(snapshot, proxy) == ""
