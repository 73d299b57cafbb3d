"""`proxy-status` and `proxy-config` through the CLI itself, against an in-process server and
raw ADS clients (statuses are injected exactly: an unanswered response, an ACK, a NACK), and
from saved dump files built from the server's own `/debug/config_dump`.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

from meshpilot.cli.main import app
from meshpilot.debug.configdump import config_dump_json
from meshpilot.debug.topics import find_connection
from tests.configs import destination_rule, service_entry, virtual_service, workload_entry
from tests.conftest import Harness
from tests.xds_client import CLUSTER, LISTENER, AdsClient, make_node

REVIEWS = "reviews.default.svc.cluster.local"
runner = CliRunner()

CERT = """-----BEGIN CERTIFICATE-----
MIIBZDCCAQmgAwIBAgIEEjSrzTAKBggqhkjOPQQDAjAPMQ0wCwYDVQQDDAR0ZXN0
MB4XDTI2MTEyNjAyMzYxMVoXDTM2MTEyMzAyMzYxMVowDzENMAsGA1UEAwwEdGVz
dDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABBRSkGT52Vw13qYaHTrlnaVBAq4Y
sU9yrDsPwciKKE9cqJxsBLpkfsUAo4j8Djw8L2UINxh5vJaXGRCBpfLTAHujUzBR
MB0GA1UdDgQWBBT7jq2I9WKDowD7PDEVxS9kc7/2xjAfBgNVHSMEGDAWgBT7jq2I
9WKDowD7PDEVxS9kc7/2xjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kA
MEYCIQCKm8OUMavWDRGAHuFi910upYjAyU/jusLqQ6I68N5PqQIhAN8c8GW0LJ4u
ywtxHnzBFVBH/aQq457hlV18EDMKOqIv
-----END CERTIFICATE-----
"""
"""Self-signed, serial 1234abcd, valid 2026-11-26T02:36:11Z to 2036-11-23T02:36:11Z."""


def mesh(harness: Harness) -> None:
    harness.store.apply(service_entry("reviews", [REVIEWS], selector={"app": "reviews"}))
    harness.store.apply(
        workload_entry("reviews-v1", "127.0.1.1", {"app": "reviews", "version": "v1"})
    )
    harness.store.apply(
        destination_rule(
            "reviews",
            REVIEWS,
            [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"v": "2"}}],
        )
    )
    harness.store.apply(
        virtual_service(
            "reviews",
            ["reviews"],
            [
                {
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                },
                {"route": [{"destination": {"host": "reviews"}}]},
            ],
        )
    )
    harness.store.mark_synced()


async def cli(*args: str) -> Result:
    # The CLI blocks on gRPC; the server runs on this test's loop, so the CLI gets a thread.
    return await asyncio.to_thread(runner.invoke, app, list(args))


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def table(text: str) -> list[list[str]]:
    """Rows of the first tabwriter table in `text`, split on runs of 3+ spaces."""
    block = text.strip().split("\n\n")[0]
    return [re.split(r" {3,}", line.strip()) for line in block.splitlines()]


async def test_proxy_status_table_json_yaml(xds: Harness) -> None:
    mesh(xds)
    address = f"127.0.0.1:{xds.port}"
    synced = AdsClient(xds.port)
    await synced.ack(await synced.request(CLUSTER))
    other = AdsClient(
        xds.port,
        node=make_node("sidecar~127.0.0.3~ratings.prod~prod.svc.cluster.local", "prod", "ratings"),
    )
    listeners = await other.request(LISTENER)  # sent, never acknowledged: STALE
    clusters = await other.request(CLUSTER)
    await other.nack(clusters, "Proto constraint validation failed (ClusterValidationError)")
    await other.expect_no_response()

    rows = table(ok(await cli("proxy-status", "--xds-address", address)))
    assert rows[0] == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"]
    by_name = {row[0]: row for row in rows[1:]}
    first = by_name[synced.node.id]
    assert first[1] == "Kubernetes"
    assert first[2].startswith("SYNCED (") and first[2].endswith("s)")
    assert first[3:7] == ["IGNORED"] * 4
    second = by_name[other.node.id]
    assert second[2].startswith("ERROR (") and second[3].startswith("STALE (")

    text = ok(await cli("ps", "--xds-address", address))
    assert "Rejected by Envoy:" in text
    assert f"{other.node.id} CDS: Proto constraint validation failed" in text

    only_prod = table(ok(await cli("ps", "--xds-address", address, "-n", "prod")))
    assert [row[0] for row in only_prod[1:]] == [other.node.id]

    data = json.loads(ok(await cli("ps", "--xds-address", address, "-o", "json")))
    assert [c["node"]["id"] for c in data] == sorted([synced.node.id, other.node.id])
    prod = next(c for c in data if c["node"]["id"] == other.node.id)
    statuses = {g["typeUrl"]: g.get("configStatus") for g in prod["genericXdsConfigs"]}
    assert statuses[CLUSTER] == "ERROR" and statuses[LISTENER] == "STALE"
    cds = next(g for g in prod["genericXdsConfigs"] if g["typeUrl"] == CLUSTER)
    assert cds["errorState"]["details"].startswith("Proto constraint validation failed")

    assert yaml.safe_load(ok(await cli("ps", "--xds-address", address, "-o", "yaml"))) == data
    assert listeners.nonce
    await synced.close()
    await other.close()


async def test_proxy_status_fails_clearly_without_a_server() -> None:
    result = await cli("ps", "--xds-address", "127.0.0.1:1", "--timeout", "0.5")
    assert result.exit_code == 1
    assert "no answer from the discovery server at 127.0.0.1:1" in result.stderr


async def _dump_file(xds: Harness, tmp_path: Path, client: AdsClient) -> Path:
    """A saved dump in Envoy's shape: the server's view of this proxy."""
    proxy = find_connection(xds.server, client.node.id).proxy
    dump: dict[str, Any] = config_dump_json(xds.server, proxy)
    dump["configs"].append(
        {
            "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "dynamic_active_secrets": [
                {
                    "name": "default",
                    "secret": {
                        "name": "default",
                        "tls_certificate": {
                            "certificate_chain": {"inline_string": CERT},
                            "private_key": {"inline_string": "[redacted]"},
                        },
                    },
                }
            ],
        }
    )
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(dump))
    return path


async def test_proxy_config_from_a_saved_dump(xds: Harness, tmp_path: Path) -> None:
    mesh(xds)
    client = AdsClient(xds.port)
    await client.ack(await client.request(CLUSTER))
    path = await _dump_file(xds, tmp_path, client)
    f = ("--file", str(path))

    rows = table(ok(await cli("pc", "cluster", *f, "--fqdn", REVIEWS)))
    assert rows[0] == ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"]
    assert [r[:5] for r in rows[1:]] == [
        [REVIEWS, "9080", "-", "outbound", "EDS"],
        [REVIEWS, "9080", "v1", "outbound", "EDS"],
        [REVIEWS, "9080", "v2", "outbound", "EDS"],
    ]
    subset = table(ok(await cli("proxy-config", "cluster", *f, "--subset", "v2")))
    assert [r[2] for r in subset[1:]] == ["v2"]
    assert table(ok(await cli("pc", "cluster", *f, "--direction", "inbound")))[1:] == []

    listeners = table(ok(await cli("pc", "listener", *f, "--port", "9080")))
    assert listeners[0] == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    assert listeners[1:] == [["127.0.0.2", "9080", "ALL", "Route: 9080"]]
    assert table(ok(await cli("pc", "listener", *f, "--type", "TCP")))[1:] == []
    assert len(table(ok(await cli("pc", "listener", *f, "--type", "http")))) >= 2

    routes = table(ok(await cli("pc", "route", *f, "--name", "9080")))
    assert routes[0] == ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]
    reviews_rows = [r for r in routes[1:] if r[1] == f"{REVIEWS}:9080"]
    assert [r[3] for r in reviews_rows] == ["/* (+end-user)", "/*"]
    assert reviews_rows[0][2].startswith("reviews + ")

    endpoints = table(
        ok(await cli("pc", "endpoint", *f, "--cluster", f"outbound|9080|v1|{REVIEWS}"))
    )
    assert endpoints == [
        ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"],
        ["127.0.1.1:9080", "HEALTHY", "OK", f"outbound|9080|v1|{REVIEWS}"],
    ]

    secrets = table(ok(await cli("pc", "secret", *f)))
    assert secrets == [
        [
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        [
            "default",
            "Cert Chain",
            "ACTIVE",
            "true",
            "1234abcd",
            "2036-11-23T02:36:11Z",
            "2026-11-26T02:36:11Z",
        ],
    ]
    # JSON is Envoy's secrets section itself, as istioctl prints it.
    secrets_json = json.loads(ok(await cli("pc", "secret", *f, "-o", "json")))
    assert [s["name"] for s in secrets_json["dynamic_active_secrets"]] == ["default"]
    assert "@type" not in secrets_json

    as_json = json.loads(ok(await cli("pc", "cluster", *f, "--fqdn", REVIEWS, "-o", "json")))
    assert [c["name"] for c in as_json] == [
        f"outbound|9080||{REVIEWS}",
        f"outbound|9080|v1|{REVIEWS}",
        f"outbound|9080|v2|{REVIEWS}",
    ]
    as_yaml = yaml.safe_load(ok(await cli("pc", "cluster", *f, "--fqdn", REVIEWS, "-o", "yaml")))
    assert as_yaml == as_json

    everything = ok(await cli("pc", "all", *f))
    for header in ("SERVICE FQDN", "ADDRESSES", "VHOST NAME", "OUTLIER CHECK", "RESOURCE NAME"):
        assert header in everything
    assert json.loads(ok(await cli("pc", "all", *f, "-o", "json"))) == json.loads(path.read_text())
    await client.close()


async def test_proxy_config_endpoint_from_clusters_json(tmp_path: Path) -> None:
    clusters = {
        "cluster_statuses": [
            {
                "name": f"outbound|9080||{REVIEWS}",
                "host_statuses": [
                    {
                        "address": {"socket_address": {"address": "10.0.0.2", "port_value": 9080}},
                        "health_status": {"eds_health_status": "HEALTHY"},
                    },
                    {
                        "address": {"socket_address": {"address": "10.0.0.1", "port_value": 9080}},
                        "health_status": {
                            "eds_health_status": "HEALTHY",
                            "failed_outlier_check": True,
                        },
                    },
                    {
                        "address": {"socket_address": {"address": "10.0.0.3", "port_value": 9080}},
                        "health_status": {"failed_active_health_check": True},
                    },
                ],
            }
        ]
    }
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps(clusters))
    rows = table(ok(await cli("pc", "endpoint", "--file", str(path))))
    assert rows[1:] == [
        ["10.0.0.1:9080", "HEALTHY", "FAILED", f"outbound|9080||{REVIEWS}"],
        ["10.0.0.2:9080", "HEALTHY", "OK", f"outbound|9080||{REVIEWS}"],
        ["10.0.0.3:9080", "UNHEALTHY", "OK", f"outbound|9080||{REVIEWS}"],
    ]
    unhealthy = table(ok(await cli("pc", "endpoint", "--file", str(path), "--status", "unhealthy")))
    assert [r[0] for r in unhealthy[1:]] == ["10.0.0.3:9080"]
    assert [
        r[0]
        for r in table(
            ok(
                await cli(
                    "pc", "endpoint", "--file", str(path), "--address", "10.0.0.2", "--port", "9080"
                )
            )
        )[1:]
    ] == ["10.0.0.2:9080"]


async def test_proxy_status_diff_against_a_saved_dump(xds: Harness, tmp_path: Path) -> None:
    mesh(xds)
    address = f"127.0.0.1:{xds.port}"
    client = AdsClient(xds.port)
    await client.ack(await client.request(CLUSTER))
    path = await _dump_file(xds, tmp_path, client)

    text = ok(await cli("ps", client.node.id, "--xds-address", address, "--file", str(path)))
    assert text.splitlines() == ["Clusters Match", "Listeners Match", "Routes Match"]

    # A change the saved Envoy never saw: a new service.
    xds.store.apply(service_entry("ratings", ["ratings.default.svc.cluster.local"]))
    await client.expect_response(CLUSTER)
    text = ok(await cli("ps", "client.default", "--xds-address", address, "--file", str(path)))
    lines = text.splitlines()
    assert lines[0] == "Clusters Don't Match"
    assert "--- Server Clusters" in lines and "+++ Envoy Clusters" in lines
    assert any(
        line.startswith("-") and "ratings.default.svc.cluster.local" in line for line in lines
    )
    data = json.loads(
        ok(
            await cli(
                "ps", client.node.id, "--xds-address", address, "--file", str(path), "-o", "json"
            )
        )
    )
    assert [(d["kind"], d["match"]) for d in data] == [
        ("Clusters", False),
        ("Listeners", True),
        ("Routes", False),
    ]

    missing = await cli("ps", "nobody", "--xds-address", address, "--file", str(path))
    assert missing.exit_code == 1 and "not connected" in missing.stderr
    await client.close()
