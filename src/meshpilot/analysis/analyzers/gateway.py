"""Analyzers of Istio `Gateway` resources (networking.istio.io).

- `gateway.IngressGatewayPortAnalyzer`: the gateway's selector must select some Pod (IST0101),
  and every server port must be offered by a Service selecting those pods (IST0162). A
  Service offers both its `port` and its numeric `targetPort`: the gateway listens on the
  pod's port, which the Service may translate.
- `gateway.SecretAnalyzer`: a server's `tls.credentialName` must name a Secret in the
  namespace of the gateway *workload* (the selected pod), not of the Gateway resource
  (IST0101), and the secret must hold a currently valid certificate (IST0161).
- `gateway.ConflictingGatewayAnalyzer`: two gateways whose selectors select the same workload
  (equal, or one a subset of the other) and that both listen on a port with overlapping hosts
  conflict (IST0145).
- `gateway.CertificateAnalyzer`: the same certificate on servers of two gateways selecting the
  same workload lets HTTP/2 clients reuse a connection for the wrong host (IST0138).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import (
    hosts_match,
    is_subset,
    mapping,
    mappings,
    number,
    selector_matches,
    selector_string,
    string_map,
    strings,
    text,
)
from meshpilot.analysis.analyzers.x509 import CertificateError, check_certificate
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import GATEWAY, POD, SECRET, SERVICE, Collection, Resource

NOT_FOUND = message_type("ReferencedResourceNotFound")
PORT_NOT_ON_SERVICE = message_type("GatewayPortNotDefinedOnService")
INVALID_CREDENTIAL = message_type("InvalidGatewayCredential")
CONFLICTING = message_type("ConflictingGateways")
DUPLICATE_CERTIFICATE = message_type("GatewayDuplicateCertificate")


def gateway_selector(gateway: Resource) -> dict[str, str]:
    return string_map(gateway.spec.get("selector"))


def selector_field(selector: Mapping[str, str]) -> str:
    """Field path of the first selector label, where Istio points its selector messages."""
    return f"spec.selector.{sorted(selector)[0]}" if selector else "spec.selector"


def selected_pods(ctx: Context, selector: Mapping[str, str]) -> list[Resource]:
    return [pod for pod in ctx.for_each(POD) if selector_matches(selector, pod.labels)]


def servers(gateway: Resource) -> list[tuple[int, Mapping[str, Any]]]:
    return list(mappings(gateway.spec.get("servers")))


def server_port(server: Mapping[str, Any]) -> int | None:
    return number(mapping(server.get("port")).get("number"))


class IngressGatewayPortAnalyzer:
    name = "gateway.IngressGatewayPortAnalyzer"
    description = (
        "Checks a gateway's ports against the gateway's Kubernetes service ports"
    )
    inputs: tuple[Collection, ...] = (GATEWAY, POD, SERVICE)

    def analyze(self, ctx: Context) -> None:
        for gateway in ctx.for_each(GATEWAY):
            self._check(ctx, gateway)

    def _check(self, ctx: Context, gateway: Resource) -> None:
        selector = gateway_selector(gateway)
        pods = selected_pods(ctx, selector)
        if not pods:
            ctx.report(gateway, NOT_FOUND, "selector", selector_string(selector),
                       field=selector_field(selector))
            return
        offered: set[int] = set()
        for pod in pods:
            for service in ctx.for_each(SERVICE):
                if service.namespace != pod.namespace:
                    continue  # a Service selects pods in its own namespace only
                if not selector_matches(string_map(service.spec.get("selector")), pod.labels):
                    continue
                offered |= _tcp_ports(service)
        for index, server in servers(gateway):
            port = server_port(server)
            if port is not None and port not in offered:
                ctx.report(gateway, PORT_NOT_ON_SERVICE, port, selector_string(selector),
                           field=f"spec.servers[{index}].port.number")


def _tcp_ports(service: Resource) -> set[int]:
    ports: set[int] = set()
    for _, port in mappings(service.spec.get("ports")):
        if text(port.get("protocol")).upper() not in ("", "TCP"):
            continue
        for value in (port.get("port"), port.get("targetPort")):
            as_number = number(value)
            if as_number:
                ports.add(as_number)
    return ports


class SecretAnalyzer:
    name = "gateway.SecretAnalyzer"
    description = "Checks a gateway's referenced secrets for correctness"
    inputs: tuple[Collection, ...] = (GATEWAY, POD, SECRET)

    def analyze(self, ctx: Context) -> None:
        for gateway in ctx.for_each(GATEWAY):
            selector = gateway_selector(gateway)
            pods = selected_pods(ctx, selector)
            if not pods:
                ctx.report(gateway, NOT_FOUND, "selector", selector_string(selector),
                           field=selector_field(selector))
                continue
            # The credential lives with the gateway workload; with several, Istio takes one.
            namespace = pods[0].namespace
            for index, server in servers(gateway):
                credential = text(mapping(server.get("tls")).get("credentialName"))
                if not credential:
                    continue
                where = f"spec.servers[{index}].tls.credentialName"
                secret = ctx.find(SECRET, namespace, credential)
                if secret is None:
                    ctx.report(gateway, NOT_FOUND, "credentialName", credential, field=where)
                elif not has_valid_certificate(secret):
                    ctx.report(gateway, INVALID_CREDENTIAL, gateway.name, namespace, field=where)


def has_valid_certificate(secret: Resource) -> bool:
    """The secret holds a certificate (`cert` or `tls.crt`, with its key) that is valid now."""
    data = _secret_data(secret)
    for cert_key, key_key in (("cert", "key"), ("tls.crt", "tls.key")):
        if data.get(cert_key) and data.get(key_key):
            try:
                check_certificate(data[cert_key])
            except CertificateError:
                return False
            return True
    return False


def _secret_data(secret: Resource) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in mapping(secret.body.get("data")).items():
        try:
            data[str(key)] = base64.b64decode(text(value), validate=True)
        except (binascii.Error, ValueError):
            data[str(key)] = b""
    for key, value in mapping(secret.body.get("stringData")).items():
        data[str(key)] = text(value).encode()
    return data


class ConflictingGatewayAnalyzer:
    name = "gateway.ConflictingGatewayAnalyzer"
    description = "Checks a gateway's selector, port number and hosts"
    inputs: tuple[Collection, ...] = (GATEWAY,)

    def analyze(self, ctx: Context) -> None:
        gateways = list(ctx.for_each(GATEWAY))
        for gateway in gateways:
            selector = gateway_selector(gateway)
            for _, server in servers(gateway):
                port = server_port(server)
                if port is None:
                    continue
                hosts = strings(server.get("hosts"))
                others = [
                    other.full_name for other in gateways
                    if other is not gateway
                    and _same_workload(selector, gateway_selector(other))
                    and _listens(other, port, hosts)
                ]
                if others:
                    ctx.report(gateway, CONFLICTING, ",".join(others), selector_string(selector),
                               str(port), ",".join(hosts))


def _same_workload(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    return is_subset(a, b) or is_subset(b, a)


def _listens(gateway: Resource, port: int, hosts: list[str]) -> bool:
    for _, server in servers(gateway):
        if server_port(server) != port:
            continue
        theirs = strings(server.get("hosts"))
        if any(hosts_match(mine, other) for mine in hosts for other in theirs):
            return True
    return False


class CertificateAnalyzer:
    name = "gateway.CertificateAnalyzer"
    description = "Checks a gateway certificate"
    inputs: tuple[Collection, ...] = (GATEWAY,)

    def analyze(self, ctx: Context) -> None:
        gateways = list(ctx.for_each(GATEWAY))
        for gateway in gateways:
            selector = gateway_selector(gateway)
            for other in gateways:
                # Only gateways whose workloads include this one's (selector is a subset).
                if other is gateway or not is_subset(selector, gateway_selector(other)):
                    continue
                for _, mine in servers(gateway):
                    for _, theirs in servers(other):
                        if _same_certificate(mapping(mine.get("tls")),
                                             mapping(theirs.get("tls"))):
                            ctx.report(gateway, DUPLICATE_CERTIFICATE,
                                       [gateway.full_name, other.full_name],
                                       field="metadata.name")


def _same_certificate(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if not a or not b:
        return False
    name_a, name_b = text(a.get("credentialName")), text(b.get("credentialName"))
    if name_a or name_b:
        return bool(name_a and name_b) and name_a == name_b
    cert_a, cert_b = text(a.get("serverCertificate")), text(b.get("serverCertificate"))
    key_a, key_b = text(a.get("privateKey")), text(b.get("privateKey"))
    return bool(cert_a and key_a and key_b) and cert_a == cert_b and key_a == key_b
