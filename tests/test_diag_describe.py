"""`describe proxy|service` through the CLI against an in-process server with a raw proxy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

from meshpilot.cli.main import app
from meshpilot.model import Config, Kind
from meshpilot.security.runtime import SecurityRuntime
from tests.configs import destination_rule, service_entry, virtual_service, workload_entry
from tests.conftest import Harness
from tests.xds_client import CLUSTER, AdsClient, make_node

REVIEWS = "reviews.default.svc.cluster.local"
runner = CliRunner()


def mesh(harness: Harness) -> None:
    harness.store.apply(service_entry("reviews", [REVIEWS], selector={"app": "reviews"}))
    for name, ip, version in (("reviews-v1", "127.0.1.1", "v1"), ("reviews-v2", "127.0.1.2", "v2")):
        harness.store.apply(workload_entry(name, ip, {"app": "reviews", "version": version}))
    harness.store.apply(
        destination_rule(
            "reviews",
            "reviews",
            [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
                {"name": "v3", "labels": {"version": "v3"}},
            ],
        )
    )
    harness.store.apply(
        virtual_service(
            "reviews",
            ["reviews"],
            [
                {
                    "name": "jason",
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
                },
                {
                    "name": "split",
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 3},
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 1},
                        {"destination": {"host": "reviews", "subset": "v4"}, "weight": 0},
                    ],
                },
            ],
        )
    )
    harness.store.apply(destination_rule("ghost", "ghost", [{"name": "a", "labels": {"x": "y"}}]))
    harness.store.mark_synced()


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


def reviews_v1_node() -> object:
    return make_node(
        "sidecar~127.0.1.1~reviews-v1.default~default.svc.cluster.local",
        workload="reviews-v1",
        labels={"app": "reviews", "version": "v1"},
        ips="127.0.1.1",
        outbound_bind="127.0.1.1",
    )


async def test_describe_proxy(xds: Harness) -> None:
    mesh(xds)
    proxy = AdsClient(xds.port, node=reviews_v1_node())
    await proxy.ack(await proxy.request(CLUSTER))
    address = f"127.0.0.1:{xds.port}"
    result = await cli("describe", "proxy", "reviews-v1.default", "--xds-address", address)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Proxy: {proxy.node.id}",
        "   Workload: reviews-v1.default, labels app=reviews,version=v1",
        "   IPs: 127.0.1.1",
        "--------------------",
        f"Service: {REVIEWS} (ServiceEntry default/reviews)",
        "   Port: http 9080/HTTP targets workload port 9080",
        'DestinationRule: reviews.default for "reviews"',
        "   Matching subsets: v1",
        "      (Non-matching subsets v2,v3)",
        "   No Traffic Policy",
        "VirtualService: reviews.default",
        '   Route "split": subset v1 75%',
        "--------------------",
        "Identity: spiffe://cluster.local/ns/default/sa/default",
        "Effective PeerAuthentication: none (no mesh CA: inbound ports take plaintext)",
        "Applied PeerAuthentication: (none)",
        "Applied AuthorizationPolicy: (none)",
        "Applied RequestAuthentication: (none)",
        "WARNING: subset v3 of DestinationRule reviews.default matches no endpoint",
        f"WARNING: VirtualService reviews.default routes to subset v4 of {REVIEWS}, which no "
        "DestinationRule defines",
    ]
    as_json = json.loads(
        (
            await cli("x", "describe", "pod", proxy.node.id, "--xds-address", address, "-o", "json")
        ).stdout
    )
    (service,) = as_json["services"]
    assert service["destinationRule"]["matchingSubsets"] == ["v1"]
    assert service["virtualService"]["routes"] == [
        {"name": "split", "shares": [{"subset": "v1", "percent": 75.0}], "when": []}
    ]
    as_yaml = await cli("describe", "proxy", proxy.node.id, "--xds-address", address, "-o", "yaml")
    assert yaml.safe_load(as_yaml.stdout) == as_json
    await proxy.close()


async def test_describe_service_and_unknowns(xds: Harness) -> None:
    mesh(xds)
    address = f"127.0.0.1:{xds.port}"
    result = await cli("describe", "service", "reviews", "--xds-address", address)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "   Endpoints: 127.0.1.1:9080, 127.0.1.2:9080" in lines
    assert "   Subsets: v1 (1 endpoints), v2 (1 endpoints), v3 (0 endpoints)" in lines
    assert "   Route \"jason\": subset v2 100% when header end-user exact 'jason'" in lines
    assert '   Route "split": subset v1 75%, subset v2 25%, subset v4 0%' in lines
    assert (
        "WARNING: DestinationRule ghost.default is for host ghost.default.svc.cluster.local, "
        "which no service has"
    ) in lines

    missing = await cli("describe", "service", "nothing", "--xds-address", address)
    assert missing.exit_code == 1
    assert "no service nothing.default.svc.cluster.local" in missing.stderr
    nobody = await cli("describe", "proxy", "nobody.default", "--xds-address", address)
    assert nobody.exit_code == 1 and "not one connected proxy" in nobody.stderr


def _policy(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> Config:
    return Config(kind=kind, name=name, namespace=namespace, spec=spec)


async def test_describe_proxy_security(xds: Harness, tmp_path: Path) -> None:
    """Identity, per-port mTLS by PeerAuthentication precedence, and the policies selecting
    the workload, with the server running a mesh CA."""
    xds.server.security = SecurityRuntime.create(xds.server, "example.org", tmp_path).security
    ports = [
        {"number": 9080, "name": "http", "protocol": "HTTP"},
        {"number": 5432, "name": "tcp", "protocol": "TCP"},
    ]
    xds.store.apply(service_entry("reviews", [REVIEWS], ports, selector={"app": "reviews"}))
    entry = workload_entry("reviews-v1", "127.0.1.1", {"app": "reviews", "version": "v1"})
    xds.store.apply(Config(kind=entry.kind, name=entry.name, namespace=entry.namespace,
                           spec={**entry.spec, "serviceAccount": "reviews"}))
    peer, authz, authn = (Kind.PEER_AUTHENTICATION, Kind.AUTHORIZATION_POLICY,
                          Kind.REQUEST_AUTHENTICATION)
    reviews = {"matchLabels": {"app": "reviews"}}
    for config in (
        _policy(peer, "mesh", {"mtls": {"mode": "STRICT"}}, "istio-system"),
        # UNSET inherits the mesh's STRICT; one port is let off.
        _policy(peer, "ports",
                {"selector": reviews, "portLevelMtls": {"5432": {"mode": "DISABLE"}}}),
        _policy(peer, "elsewhere", {"mtls": {"mode": "DISABLE"}}, "shop"),
        _policy(authz, "allow-client", {"selector": reviews, "rules": [{}]}),
        _policy(authz, "for-others", {"selector": {"matchLabels": {"app": "other"}}}),
        _policy(authz, "mesh-audit", {"action": "AUDIT", "rules": [{}]}, "istio-system"),
        _policy(authn, "jwt", {"jwtRules": [{"issuer": "https://issuer.example"}]}),
    ):
        xds.store.apply(config)
    xds.store.mark_synced()
    proxy = AdsClient(xds.port, node=reviews_v1_node())
    await proxy.ack(await proxy.request(CLUSTER))
    address = f"127.0.0.1:{xds.port}"
    result = await cli("describe", "pod", "reviews-v1.default", "--xds-address", address)
    assert result.exit_code == 0, result.output
    text = result.stdout.split("--------------------\n")[-1].splitlines()
    assert text == [
        "Identity: spiffe://example.org/ns/default/sa/reviews",
        "Effective PeerAuthentication: workload mTLS mode STRICT",
        "   Port 5432: DISABLE",
        "   Port 9080: STRICT",
        "Applied PeerAuthentication: ports.default, mesh.istio-system",
        "Applied AuthorizationPolicy: allow-client.default, mesh-audit.istio-system",
        "Applied RequestAuthentication: jwt.default",
    ]
    as_json = json.loads(
        (await cli("describe", "proxy", "reviews-v1.default", "--xds-address", address,
                   "-o", "json")).stdout
    )
    assert as_json["security"] == {
        "identity": "spiffe://example.org/ns/default/sa/reviews",
        "mtls": True,
        "workloadMode": "STRICT",
        "portModes": {"5432": "DISABLE", "9080": "STRICT"},
        "peerAuthentications": ["ports.default", "mesh.istio-system"],
        "authorizationPolicies": ["allow-client.default", "mesh-audit.istio-system"],
        "requestAuthentications": ["jwt.default"],
    }
    await proxy.close()
