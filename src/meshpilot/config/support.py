"""Which Istio fields meshpilot applies, so the rest can be named in a warning.

Validation accepts everything Istio's API allows; translation implements most of it. A field
that is accepted but not (yet) applied must never be dropped silently: `unsupported_fields`
walks a config's spec against the tree below and returns the path of every field it does not
cover, which the server logs once per config version and shows on its debug endpoints.

In the trees, `ALL` accepts a field and everything under it, a dict lists the accepted keys of
a mapping (`ANY_KEY` standing for user-chosen keys such as header names), and a one-element
list describes each item of a list.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from meshpilot.model import Config, Kind

log = logging.getLogger("meshpilot.config")

ALL = True
ANY_KEY = "*"

Tree = Any

_STRING_MATCH = {"exact": ALL, "prefix": ALL, "regex": ALL}
_DESTINATION = {"host": ALL, "subset": ALL, "port": {"number": ALL}}
_HEADER_OPS = {"set": ALL, "add": ALL, "remove": ALL}
_PERCENT = {"value": ALL}

_HTTP_MATCH = {
    "name": ALL, "uri": _STRING_MATCH, "scheme": _STRING_MATCH, "method": _STRING_MATCH,
    "authority": _STRING_MATCH, "headers": {ANY_KEY: _STRING_MATCH},
    "withoutHeaders": {ANY_KEY: _STRING_MATCH}, "queryParams": {ANY_KEY: _STRING_MATCH},
    "port": ALL, "sourceLabels": ALL, "sourceNamespace": ALL, "ignoreUriCase": ALL,
    "gateways": ALL,
}
_HTTP_ROUTE = {
    "name": ALL,
    "delegate": {"name": ALL, "namespace": ALL},
    "match": [_HTTP_MATCH],
    "route": [{"destination": _DESTINATION, "weight": ALL,
               "headers": {"request": _HEADER_OPS, "response": _HEADER_OPS}}],
    "redirect": {"uri": ALL, "authority": ALL, "port": ALL, "scheme": ALL, "redirectCode": ALL},
    "directResponse": {"status": ALL, "body": {"string": ALL}},
    "rewrite": {"uri": ALL, "authority": ALL, "uriRegexRewrite": {"match": ALL, "rewrite": ALL}},
    "timeout": ALL,
    "retries": {"attempts": ALL, "perTryTimeout": ALL, "retryOn": ALL,
                "retryRemoteLocalities": ALL},
    "fault": {
        "delay": {"fixedDelay": ALL, "percentage": _PERCENT, "percent": ALL},
        "abort": {"httpStatus": ALL, "grpcStatus": ALL, "percentage": _PERCENT},
    },
    "mirror": _DESTINATION,
    "mirrorPercentage": _PERCENT,
    "mirrorPercent": ALL,
    "mirrors": [{"destination": _DESTINATION, "percentage": _PERCENT}],
    "corsPolicy": {
        "allowOrigins": [_STRING_MATCH], "allowOrigin": ALL, "allowMethods": ALL,
        "allowHeaders": ALL, "exposeHeaders": ALL, "maxAge": ALL, "allowCredentials": ALL,
        "unmatchedPreflights": ALL,
    },
    "headers": {"request": _HEADER_OPS, "response": _HEADER_OPS},
}
_L4_MATCH = {"port": ALL, "sourceLabels": ALL, "sourceNamespace": ALL, "gateways": ALL}
_L4_ROUTE = [{"destination": _DESTINATION, "weight": ALL}]

_TLS_SETTINGS = {
    "mode": ALL, "clientCertificate": ALL, "privateKey": ALL, "caCertificates": ALL,
    "sni": ALL, "subjectAltNames": ALL, "insecureSkipVerify": ALL,
}
_TRAFFIC_POLICY_SECTIONS = {
    "loadBalancer": {
        "simple": ALL,
        "localityLbSetting": {"enabled": ALL, "distribute": ALL, "failover": ALL,
                              "failoverPriority": ALL},
        "consistentHash": {
            "httpHeaderName": ALL, "httpCookie": {"name": ALL, "path": ALL, "ttl": ALL},
            "useSourceIp": ALL, "httpQueryParameterName": ALL,
            "ringHash": {"minimumRingSize": ALL}, "maglev": {"tableSize": ALL},
            "minimumRingSize": ALL,
        },
    },
    "connectionPool": {
        "tcp": {"maxConnections": ALL, "connectTimeout": ALL, "maxConnectionDuration": ALL,
                "tcpKeepalive": {"probes": ALL, "time": ALL, "interval": ALL}},
        "http": {"http1MaxPendingRequests": ALL, "http2MaxRequests": ALL,
                 "maxRequestsPerConnection": ALL, "maxRetries": ALL, "idleTimeout": ALL,
                 "h2UpgradePolicy": ALL, "maxConcurrentStreams": ALL},
    },
    "outlierDetection": {
        "consecutive5xxErrors": ALL, "consecutiveErrors": ALL, "consecutiveGatewayErrors": ALL,
        "splitExternalLocalOriginErrors": ALL, "consecutiveLocalOriginFailures": ALL,
        "interval": ALL, "baseEjectionTime": ALL, "maxEjectionPercent": ALL,
        "minHealthPercent": ALL,
    },
    "tls": _TLS_SETTINGS,
}
_TRAFFIC_POLICY = {
    **_TRAFFIC_POLICY_SECTIONS,
    "portLevelSettings": [{"port": {"number": ALL}, **_TRAFFIC_POLICY_SECTIONS}],
}

SUPPORTED: Mapping[str, Tree] = {
    Kind.SERVICE_ENTRY: {
        "hosts": ALL, "addresses": ALL, "ports": ALL, "location": ALL, "resolution": ALL,
        "workloadSelector": ALL, "exportTo": ALL,
        "endpoints": [{"address": ALL, "ports": ALL, "labels": ALL, "network": ALL,
                       "locality": ALL, "weight": ALL, "serviceAccount": ALL}],
    },
    Kind.ENVOY_FILTER: {
        "workloadSelector": ALL, "priority": ALL,
        "configPatches": [{"applyTo": ALL, "match": ALL, "patch": {"operation": ALL,
                                                                   "value": ALL}}],
    },
    Kind.WASM_PLUGIN: {
        "selector": ALL, "url": ALL, "sha256": ALL, "pluginName": ALL, "pluginConfig": ALL,
        "phase": ALL, "priority": ALL, "vmConfig": {"env": [{"name": ALL, "value": ALL}]},
        "match": ALL, "type": ALL, "failStrategy": ALL, "imagePullPolicy": ALL,
    },
    Kind.TELEMETRY: {
        "selector": ALL,
        "tracing": [{"providers": ALL, "randomSamplingPercentage": ALL, "customTags": ALL,
                     "disableSpanReporting": ALL}],
        "accessLogging": [{"providers": ALL, "disabled": ALL}],
        # Applied to the metrics the console republishes (console/metric_overrides.py);
        # `reportingInterval` and `match.customMetric` are not.
        "metrics": [{"providers": ALL, "overrides": [{
            "match": {"metric": ALL, "mode": ALL}, "disabled": ALL,
            "tagOverrides": {ANY_KEY: {"operation": ALL, "value": ALL}},
        }]}],
    },
    Kind.WORKLOAD_GROUP: {
        "metadata": {"labels": ALL, "annotations": ALL},
        "template": {"ports": ALL, "labels": ALL, "network": ALL, "locality": ALL,
                     "weight": ALL, "serviceAccount": ALL},
    },
    Kind.WORKLOAD_ENTRY: {
        "address": ALL, "ports": ALL, "labels": ALL, "network": ALL, "locality": ALL,
        "weight": ALL, "serviceAccount": ALL,
    },
    Kind.VIRTUAL_SERVICE: {
        "hosts": ALL, "gateways": ALL, "exportTo": ALL,
        "http": [_HTTP_ROUTE],
        "tcp": [{"match": [_L4_MATCH], "route": _L4_ROUTE}],
        "tls": [{"match": [{**_L4_MATCH, "sniHosts": ALL}], "route": _L4_ROUTE}],
    },
    Kind.DESTINATION_RULE: {
        "host": ALL, "exportTo": ALL, "workloadSelector": ALL, "trafficPolicy": _TRAFFIC_POLICY,
        "subsets": [{"name": ALL, "labels": ALL, "trafficPolicy": _TRAFFIC_POLICY}],
    },
    Kind.GATEWAY: {
        # Translated by envoy/gateway.py and envoy/tls.py; `defaultEndpoint` and the deprecated
        # `port.targetPort` are not applied, so they are named here by omission.
        "selector": ALL,
        "servers": [{
            "port": {"number": ALL, "name": ALL, "protocol": ALL},
            "bind": ALL, "hosts": ALL, "name": ALL,
            "tls": {
                "httpsRedirect": ALL, "mode": ALL, "serverCertificate": ALL, "privateKey": ALL,
                "caCertificates": ALL, "caCrl": ALL, "credentialName": ALL,
                "credentialNames": ALL, "subjectAltNames": ALL, "verifyCertificateSpki": ALL,
                "verifyCertificateHash": ALL, "minProtocolVersion": ALL,
                "maxProtocolVersion": ALL, "cipherSuites": ALL,
                "tlsCertificates": [
                    {"serverCertificate": ALL, "privateKey": ALL, "caCertificates": ALL},
                ],
            },
        }],
    },
    Kind.SIDECAR: {
        "workloadSelector": ALL,
        "ingress": [{"port": ALL, "bind": ALL, "defaultEndpoint": ALL, "captureMode": ALL}],
        "egress": [{"port": ALL, "bind": ALL, "hosts": ALL, "captureMode": ALL}],
        "outboundTrafficPolicy": {"mode": ALL},
    },
    # security.istio.io: envoy/mtls.py, authz.py (CUSTOM's provider: ext_authz.py) and jwt.py.
    # `targetRef(s)` (Kubernetes Gateway API attachment) and `serviceAccounts` sources are not
    # applied.
    Kind.PEER_AUTHENTICATION: {
        "selector": {"matchLabels": ALL}, "mtls": {"mode": ALL},
        "portLevelMtls": {ANY_KEY: {"mode": ALL}},
    },
    Kind.AUTHORIZATION_POLICY: {
        "selector": {"matchLabels": ALL}, "action": ALL, "provider": {"name": ALL},
        "rules": [{
            "from": [{"source": {
                "principals": ALL, "notPrincipals": ALL, "requestPrincipals": ALL,
                "notRequestPrincipals": ALL, "namespaces": ALL, "notNamespaces": ALL,
                "ipBlocks": ALL, "notIpBlocks": ALL, "remoteIpBlocks": ALL,
                "notRemoteIpBlocks": ALL,
            }}],
            "to": [{"operation": {
                "hosts": ALL, "notHosts": ALL, "ports": ALL, "notPorts": ALL, "methods": ALL,
                "notMethods": ALL, "paths": ALL, "notPaths": ALL,
            }}],
            "when": ALL,
        }],
    },
    Kind.REQUEST_AUTHENTICATION: {
        "selector": {"matchLabels": ALL},
        "jwtRules": [{
            "issuer": ALL, "audiences": ALL, "jwks": ALL, "jwksUri": ALL, "fromHeaders": ALL,
            "fromParams": ALL, "fromCookies": ALL, "forwardOriginalToken": ALL,
            "outputPayloadToHeader": ALL, "outputClaimToHeaders": ALL,
        }],
    },
}


def unsupported_fields(config: Config) -> list[str]:
    """Paths (`spec.http[0].delegate`) of fields in the config that meshpilot does not apply."""
    tree = SUPPORTED.get(config.kind) if config.group.endswith("istio.io") else None
    if tree is None:
        return []
    found: list[str] = []
    _walk(config.spec, tree, "spec", found)
    return found


def _walk(value: Any, tree: Tree, path: str, found: list[str]) -> None:
    if tree is ALL:
        return
    if isinstance(tree, list) and isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, tree[0], f"{path}[{index}]", found)
    elif isinstance(tree, dict) and isinstance(value, Mapping):
        for key, item in value.items():
            sub = tree.get(key, tree.get(ANY_KEY))
            if sub is None:
                found.append(f"{path}.{key}")
            else:
                _walk(item, sub, f"{path}.{key}", found)


class UnsupportedFields:
    """A config-store handler that warns once per config version about fields not applied."""

    def __init__(self) -> None:
        self.by_config: dict[str, list[str]] = {}
        """`Kind namespace/name` → unsupported field paths, for the debug endpoints."""

    def on_config(self, old: Config | None, new: Config | None, event: object) -> None:
        current = new or old
        if current is None:
            return
        key = str(current.key)
        if new is None:
            self.by_config.pop(key, None)
            return
        fields = unsupported_fields(new)
        if fields and fields != self.by_config.get(key):
            where = f"{new.origin}: " if new.origin else ""
            for field in fields:
                log.warning("%s%s: %s is not applied by meshpilot (field ignored)",
                            where, key, field)
        if fields:
            self.by_config[key] = fields
        else:
            self.by_config.pop(key, None)
