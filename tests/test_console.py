"""The console served in process, over real HTTP: login flows (missing secret, wrong password,
lockout, expiry, logout, CSRF), and the JSON API's numbers with connected xDS clients whose
"Envoy stats" are synthetic samples with known counts. The CLI commands of the console too."""

from __future__ import annotations

import asyncio
import json
import os
import re
import webbrowser
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner, Result
from yarl import URL

from meshpilot.analysis.server import ServerAnalysis
from meshpilot.cli.console import console_settings
from meshpilot.cli.main import app
from meshpilot.console.auth import (
    Credentials,
    LoginLimiter,
    Sessions,
    check_login,
    hash_password,
    load_credentials,
)
from meshpilot.console.server import Console, start_console
from meshpilot.console.settings import PASSWORD_ENV, ConsoleSettings
from meshpilot.console.stats import ClusterSample, ProxySample, StatsCollector, parse_stats
from tests.configs import destination_rule, service_entry, virtual_service, workload_entry
from tests.conftest import Harness
from tests.xds_client import CLUSTER, LISTENER, AdsClient, make_node

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings-db.default.svc.cluster.local"
PASSWORD = "p4ssword!"
runner = CliRunner()


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(within):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    harness: Harness
    console: Console
    clock: Clock
    url: str
    clients: dict[str, AdsClient] = field(default_factory=dict)

    @property
    def stats(self) -> StatsCollector:
        return self.console.stats


def mesh(harness: Harness) -> None:
    store = harness.store
    store.apply(service_entry("reviews", [REVIEWS], selector={"app": "reviews"}))
    store.apply(service_entry("ratings-db", [RATINGS], selector={"app": "ratings-db"},
                              ports=[{"number": 27017, "name": "tcp-db", "protocol": "TCP"}]))
    store.apply(workload_entry("reviews-v1", "127.0.1.11", {"app": "reviews", "version": "v1"}))
    store.apply(workload_entry("reviews-v2", "127.0.1.12", {"app": "reviews", "version": "v2"}))
    store.apply(workload_entry("ratings-db", "127.0.1.13", {"app": "ratings-db"}))
    store.apply(workload_entry("client", "127.0.1.10", {"app": "client"}))
    store.apply(destination_rule("reviews", "reviews", [
        {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}},
    ]))
    store.apply(virtual_service("reviews", ["reviews"], [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
        {"destination": {"host": "reviews", "subset": "v3"}, "weight": 20},
    ]}]))
    store.mark_synced()


async def start(
    harness: Harness,
    credentials: Credentials | None = None,
    clock: Clock | None = None,
    settings: ConsoleSettings | None = None,
) -> tuple[Console, Clock]:
    clock = clock or Clock()
    settings = settings or ConsoleSettings(
        address="127.0.0.1:0", session_ttl=60,
        dashboards={"grafana": "http://grafana.example:3000/"},
    )
    if credentials is None:
        credentials = Credentials({"ops": hash_password(PASSWORD)}, "test",
                                  hint="Log in as ops.")
    console = await start_console(
        harness.server, settings, credentials=credentials,
        sessions=Sessions(settings.session_ttl, clock=clock),
        limiter=LoginLimiter(max_failures=3, window=300, clock=clock),
        stats=StatsCollector(harness.server, settings), collect=False,
    )
    return console, clock


@pytest.fixture
async def env(xds: Harness) -> AsyncIterator[Env]:
    mesh(xds)
    async with asyncio.timeout(5):
        await xds.server.ready.wait()
    console, clock = await start(xds)
    environment = Env(xds, console, clock, f"http://127.0.0.1:{console.port}")
    try:
        yield environment
    finally:
        for client in environment.clients.values():
            await client.close()
        await console.stop()


class Browser:
    """An HTTP client with a cookie jar, like a browser (no redirects followed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        async with self.session.request(method, self.url + path, allow_redirects=False,
                                        **kwargs) as response:
            text = await response.text()
            body = json.loads(text) if "json" in response.content_type else text
            return response.status, body, response

    async def login_form(self, path: str = "/login") -> tuple[int, str, str]:
        status, page, _ = await self.request("GET", path)
        match = re.search(r'name="csrf" value="([^"]+)"', page)
        return status, page, match.group(1) if match else ""

    async def login(self, user: str, password: str, next_url: str = "/") -> tuple[int, Any, Any]:
        _, _, token = await self.login_form()
        return await self.request("POST", "/login", data={
            "user": user, "password": password, "csrf": token, "next": next_url})

    async def csrf(self) -> str:
        status, info, _ = await self.request("GET", "/api/session")
        assert status == 200, info
        return str(info["csrf"])


@pytest.fixture
async def browser(env: Env) -> AsyncIterator[Browser]:
    client = Browser(env.url)
    try:
        yield client
    finally:
        await client.close()


# Login -----------------------------------------------------------------------------------------


async def test_login_sets_a_strict_http_only_session(env: Env, browser: Browser) -> None:
    status, page, token = await browser.login_form()
    assert status == 200 and token and 'id="problem"' not in page
    assert "Log in as ops." in page
    status, _, response = await browser.request(
        "POST", "/login", data={"user": "ops", "password": PASSWORD, "csrf": token,
                                "next": "/#/services"})
    assert status == 303 and response.headers["Location"] == "/#/services"
    cookie = next(h for h in response.headers.getall("Set-Cookie")
                  if h.startswith("meshpilot_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=60" in cookie
    status, info, response = await browser.request("GET", "/api/session")
    assert status == 200 and info["user"] == "ops" and info["expires"] == env.clock.now + 60
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    status, page, _ = await browser.request("GET", "/")
    assert status == 200 and '<script src="/static/console.js">' in page
    assert f'content="{info["csrf"]}"' in page
    status, script, _ = await browser.request("GET", "/static/console.js")
    assert status == 200 and "function layout(" in script


async def test_everything_but_login_needs_a_session(env: Env, browser: Browser) -> None:
    for path in ("/api/graph", "/api/services", "/api/proxies", "/api/config",
                 "/api/services/default/" + REVIEWS):
        status, body, _ = await browser.request("GET", path)
        assert (status, body["reason"]) == (401, "none"), path
    status, _, response = await browser.request("GET", "/")
    assert status == 303 and response.headers["Location"] == "/login?next=/"


async def test_wrong_password_and_lockout(env: Env, browser: Browser) -> None:
    status, page, _ = await browser.login("ops", "wrong")
    assert status == 401 and "Wrong user name or password." in page
    status, page, _ = await browser.login("nobody", PASSWORD)
    assert status == 401 and "Wrong user name or password." in page
    assert (await browser.request("GET", "/api/session"))[0] == 401
    await browser.login("ops", "wrong")
    # Three failures from this address: even the right password waits now.
    status, page, _ = await browser.login("ops", PASSWORD)
    assert status == 429 and "Too many failed logins: try again in 301 s." in page
    env.clock.now += 301
    status, _, _ = await browser.login("ops", PASSWORD)
    assert status == 303


async def test_session_expires(env: Env, browser: Browser) -> None:
    assert (await browser.login("ops", PASSWORD))[0] == 303
    assert (await browser.request("GET", "/api/graph"))[0] == 200
    env.clock.now += 59
    assert (await browser.request("GET", "/api/graph"))[0] == 200
    env.clock.now += 1
    status, body, _ = await browser.request("GET", "/api/graph")
    assert status == 401 and body == {
        "error": "login required: your session expired", "login": "/login", "reason": "expired"}
    status, _, response = await browser.request("GET", "/")
    assert response.headers["Location"] == "/login?next=/&reason=expired"
    _, page, _ = await browser.request("GET", "/login?next=%2F&reason=expired")
    assert "Your session expired: log in again." in page


async def test_logout_needs_csrf_and_revokes_the_cookie(env: Env, browser: Browser) -> None:
    assert (await browser.login("ops", PASSWORD))[0] == 303
    token = await browser.csrf()
    cookie = browser.session.cookie_jar.filter_cookies(URL(env.url))["meshpilot_session"].value
    status, body, _ = await browser.request("POST", "/logout")
    assert status == 403 and "CSRF" in body["error"]
    status, body, _ = await browser.request("POST", "/logout", headers={"X-CSRF-Token": "forged"})
    assert status == 403
    status, body, _ = await browser.request(
        "POST", "/logout", headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert (status, body["error"]) == (403, "cross-origin request refused")
    assert (await browser.request("GET", "/api/session"))[0] == 200  # still logged in
    status, _, response = await browser.request(
        "POST", "/logout", data={"csrf": token}, headers={"Origin": env.url})
    assert status == 303 and response.headers["Location"] == "/login?reason=logged%20out"
    # Replaying the old cookie does not bring the session back.
    async with aiohttp.ClientSession() as replay, replay.get(
        env.url + "/api/session", headers={"Cookie": f"meshpilot_session={cookie}"}
    ) as response:
        assert response.status == 401 and (await response.json())["reason"] == "logged out"


async def test_login_form_csrf_and_open_redirects(env: Env, browser: Browser) -> None:
    # No login-form cookie (a form posted from another site): refused.
    async with aiohttp.ClientSession() as other, other.post(
        env.url + "/login", data={"user": "ops", "password": PASSWORD, "csrf": "guess"},
        allow_redirects=False,
    ) as response:
        assert response.status == 403
        assert "The login form expired or came from elsewhere" in await response.text()
    status, _, response = await browser.login("ops", PASSWORD, next_url="//evil.example/x")
    assert status == 303 and response.headers["Location"] == "/"
    status, _, _ = await browser.request(
        "POST", "/login", data={"user": "ops"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403


async def test_missing_secret_says_so_and_how_to_fix_it(xds: Harness, tmp_path: Path) -> None:
    mesh(xds)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    credentials = await asyncio.to_thread(
        load_credentials, ConsoleSettings(state_dir=blocked / "state"))
    console, _ = await start(xds, credentials=credentials)
    client = Browser(f"http://127.0.0.1:{console.port}")
    try:
        status, page, token = await client.login_form()
        assert status == 503 and token == ""
        assert 'id="problem"' in page and "Login is not possible yet" in page
        assert ("No console credential is configured, and none could be generated: "
                f"{blocked / 'state' / 'console-credentials'}: Not a directory.") in page
        assert "--console-credentials FILE" in page and PASSWORD_ENV in page
        status, page, _ = await client.request("POST", "/login", data={"user": "admin"})
        assert status == 503 and "Login is not possible yet" in page
        assert (await client.request("GET", "/api/graph"))[0] == 401
    finally:
        await client.close()
        await console.stop()


# The API's numbers ---------------------------------------------------------------------------


def node(workload: str, ip: str, admin: str, labels: dict[str, str]) -> Any:
    found = make_node(f"sidecar~{ip}~{workload}.default~default.svc.cluster.local",
                      workload=workload, labels=labels, ips=ip, outbound_bind=ip)
    extra = struct_pb2.Struct()
    extra.update({"ADMIN_ADDRESS": admin})
    found.metadata.MergeFrom(extra)
    return found


async def connect(env: Env) -> dict[str, str]:
    """Three proxies (client, reviews-v1, ratings-db) that fetch and ACK their clusters."""
    ids = {}
    for workload, ip, labels in [
        ("client", "127.0.1.10", {"app": "client"}),
        ("reviews-v1", "127.0.1.11", {"app": "reviews", "version": "v1"}),
        ("ratings-db", "127.0.1.13", {"app": "ratings-db"}),
    ]:
        client = AdsClient(env.harness.port, node=node(workload, ip, f"127.0.0.1:1{ip[-2:]}00",
                                                       labels))
        env.clients[workload] = client
        await client.ack(await client.request(CLUSTER))
        ids[workload] = client.node.id
    await eventually(lambda: len(env.harness.server.connections) >= 3)
    return ids


def sample(at: float, **clusters: ClusterSample) -> ProxySample:
    return ProxySample(at, {name.replace("__", "|"): c for name, c in clusters.items()})


def feed(env: Env, ids: dict[str, str]) -> None:
    """Ten seconds of traffic: client → reviews 100 requests (4 of them 503), → ratings-db 10
    connections; reviews-v1 received 80."""
    v1, v2 = f"outbound|9080|v1|{REVIEWS}", f"outbound|9080|v2|{REVIEWS}"
    db, inbound = f"outbound|27017||{RATINGS}", "inbound|9080||"
    stats = env.stats
    stats.add_sample(ids["client"], ProxySample(100.0, {
        v1: ClusterSample(100, {"200": 100}, 0, 0, ((5, 50), (10, 90), (25, 100))),
        db: ClusterSample(0, {}, 0, 5, ()),
    }))
    stats.add_sample(ids["client"], ProxySample(110.0, {
        v1: ClusterSample(180, {"200": 176, "503": 4}, 4, 0, ((5, 100), (10, 170), (25, 180))),
        v2: ClusterSample(20, {"200": 20}, 0, 0, ((5, 20), (10, 20), (25, 20))),
        db: ClusterSample(0, {}, 0, 15, ()),
    }))
    stats.add_sample(ids["reviews-v1"], ProxySample(100.0, {inbound: ClusterSample(0)}))
    stats.add_sample(ids["reviews-v1"], ProxySample(110.0, {
        inbound: ClusterSample(80, {"200": 80}, 0, 0, ())}))


async def login(env: Env) -> Browser:
    client = Browser(env.url)
    assert (await client.login("ops", PASSWORD))[0] == 303
    return client


def edges(graph: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["source"], e["target"]): e for e in graph["edges"]}


async def test_graph_numbers_at_every_aggregation(env: Env) -> None:
    ids = await connect(env)
    feed(env, ids)
    client = await login(env)
    try:
        _, graph, _ = await client.request("GET", "/api/graph?aggregate=workload")
        assert graph["aggregate"] == "workload" and not graph["truncated"]
        found = edges(graph)
        calls = found[("wl:default/client", f"svc:default/{REVIEWS}")]
        # v1 and v2 summed: 100 requests in 10 s, 4 answered 503.
        assert (calls["kind"], calls["protocol"], calls["rps"]) == ("traffic", "http", 10.0)
        assert (calls["requests"], calls["errors"], calls["errorRate"]) == (100, 4, 0.04)
        assert calls["codes"] == {"200": 96, "503": 4} and calls["total"] == 200
        # Summed histograms: ≤5 ms 70, ≤10 ms 100 → p50 at 50/70 of the first bucket.
        assert (calls["p50Ms"], calls["p99Ms"]) == (3.571, 9.833)
        tcp = found[("wl:default/client", f"svc:default/{RATINGS}")]
        assert (tcp["protocol"], tcp["cps"], tcp["rps"]) == ("tcp", 1.0, 0.0)
        served = found[(f"svc:default/{REVIEWS}", "wl:default/reviews-v1")]
        assert (served["kind"], served["rps"]) == ("traffic", 8.0)
        member = found[(f"svc:default/{REVIEWS}", "wl:default/reviews-v2")]
        assert (member["kind"], member["rps"]) == ("member", 0.0)
        nodes = {n["id"]: n for n in graph["nodes"]}
        assert nodes["wl:default/client"]["proxies"] == [ids["client"]]
        assert nodes[f"svc:default/{REVIEWS}"]["in"]["rps"] == 10.0

        _, graph, _ = await client.request("GET", "/api/graph?aggregate=service")
        assert {n["id"] for n in graph["nodes"]} == {
            "wl:default/client", f"svc:default/{REVIEWS}", f"svc:default/{RATINGS}"}
        assert edges(graph)[("wl:default/client", f"svc:default/{REVIEWS}")]["rps"] == 10.0

        _, graph, _ = await client.request("GET", "/api/graph?aggregate=namespace")
        assert [n["id"] for n in graph["nodes"]] == ["ns:default"] and graph["edges"] == []
        inside = graph["nodes"][0]["internal"]
        assert (inside["rps"], inside["cps"], graph["nodes"][0]["members"]) == (10.0, 1.0, 6)

        _, graph, _ = await client.request(
            "GET", "/api/graph?aggregate=workload&focus=" + quote("wl:default/reviews-v2"))
        assert {n["id"] for n in graph["nodes"]} == {"wl:default/reviews-v2",
                                                      f"svc:default/{REVIEWS}"}
        _, graph, _ = await client.request("GET", "/api/graph?aggregate=workload&q=ratings")
        matched = {n["id"] for n in graph["nodes"] if n["match"]}
        assert matched == {f"svc:default/{RATINGS}", "wl:default/ratings-db"}
        status, error, _ = await client.request("GET", "/api/graph?aggregate=pods")
        assert status == 400 and "aggregate must be" in error["error"]
    finally:
        await client.close()


async def test_grafana_metric_set(env: Env) -> None:
    ids = await connect(env)
    feed(env, ids)
    text = env.harness.server.metrics.exposition().decode()
    samples = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
               for s in family.samples]

    def value(name: str, **labels: str) -> float:
        found = [v for n, lbls, v in samples
                 if n == name and all(lbls.get(k) == x for k, x in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    source = {"reporter": "source", "source_workload": "client",
              "source_workload_namespace": "default", "destination_service": REVIEWS,
              "destination_service_name": "reviews", "destination_service_namespace": "default",
              "destination_workload": "unknown", "destination_version": "v1"}
    assert value("istio_requests_total", **source, response_code="503") == 4
    assert value("istio_requests_total", **source, response_code="200") == 176
    assert value("istio_request_duration_milliseconds_bucket", **source, le="10.0") == 170
    assert value("istio_requests_total", reporter="destination", destination_service=REVIEWS,
                 destination_workload="reviews-v1", destination_version="v1",
                 response_code="200") == 80
    assert value("istio_tcp_connections_opened_total", reporter="source",
                 destination_service=RATINGS) == 15


async def test_service_page_data(env: Env) -> None:
    analysis = ServerAnalysis(env.harness.server)
    env.harness.server.analysis = analysis
    await analysis.analyze_now()
    ids = await connect(env)
    feed(env, ids)
    client = await login(env)
    try:
        status, svc, _ = await client.request("GET", f"/api/services/default/{REVIEWS}")
        assert status == 200 and svc["traffic"]["rps"] == 10.0
        assert [(e["registry"], e["address"], e["served"]) for e in svc["endpoints"]] == [
            ("serviceentry", "127.0.1.11", True), ("serviceentry", "127.0.1.12", True)]
        configs = {(c["kind"], c["name"]): c for c in svc["configs"]}
        assert set(configs) == {("ServiceEntry", "reviews"), ("WorkloadEntry", "reviews-v1"),
                                ("WorkloadEntry", "reviews-v2"), ("VirtualService", "reviews"),
                                ("DestinationRule", "reviews")}
        assert all(c["applies"] for c in configs.values())
        vs = configs[("VirtualService", "reviews")]
        assert any("v3" in m["message"] for m in vs["analysis"]), vs["analysis"]
        assert [c["id"] for c in svc["callers"]] == ["wl:default/client"]
        assert {w["id"]: w["rps"] for w in svc["workloads"]} == {
            "wl:default/reviews-v1": 8.0, "wl:default/reviews-v2": 0.0}
        status, error, _ = await client.request("GET", "/api/services/other/" + REVIEWS)
        assert status == 404 and "no service" in error["error"]

        _, listed, _ = await client.request("GET", "/api/services")
        assert {s["host"]: s["traffic"]["rps"] for s in listed} == {RATINGS: 0.0, REVIEWS: 10.0}
        _, config, _ = await client.request("GET", "/api/config")
        assert len(config["configs"]) == 8 and config["analysis"]["analyzed"]
        _, links, _ = await client.request("GET", "/api/dashboards")
        assert links == {"grafana": "http://grafana.example:3000/"}
    finally:
        await client.close()


async def test_proxy_page_has_sync_status_and_push_history(env: Env) -> None:
    ids = await connect(env)
    ads = env.clients["client"]
    listeners = await ads.request(LISTENER)
    await ads.nack(listeners, "listener 127.0.1.1_9080: invalid regex")
    client = await login(env)
    try:
        async def history() -> list[dict[str, Any]]:
            _, proxy, _ = await client.request("GET", "/api/proxies/" + quote(ids["client"]))
            return list(proxy["history"])

        async def nacked() -> bool:
            return any(e["status"] == "NACK" for e in await history())

        await eventually(nacked)
        status, proxy, _ = await client.request("GET", "/api/proxies/" + quote(ids["client"]))
        assert status == 200 and proxy["workload"] == "client.default"
        assert proxy["adminAddress"] == "127.0.0.1:11000"
        assert proxy["sync"]["CDS"]["status"] == "SYNCED"
        assert proxy["sync"]["LDS"]["status"] == "ERROR"
        assert proxy["sync"]["LDS"]["error"] == "listener 127.0.1.1_9080: invalid regex"
        lds, cds = proxy["history"][0], proxy["history"][1]  # newest first
        assert (lds["type"], lds["status"], lds["error"]) == (
            "LDS", "NACK", "listener 127.0.1.1_9080: invalid regex")
        assert (cds["type"], cds["status"]) == ("CDS", "ACK")
        assert cds["resources"] == cds["changed"] > 0 and cds["removed"] == 0
        assert f"outbound|9080||{REVIEWS}" in cds["changedNames"]
        assert cds["applySeconds"] is not None and cds["applySeconds"] >= 0

        # A config change: the CDS push names what changed.
        env.harness.store.apply(service_entry("details", ["details.default.svc.cluster.local"]))
        pushed = await ads.expect_response(CLUSTER)
        await ads.ack(pushed)
        async def newest_acked() -> dict[str, Any] | None:
            newest = (await history())[0]
            return newest if newest["status"] == "ACK" else None

        latest = await eventually(newest_acked)
        assert latest["type"] == "CDS" and latest["version"] == pushed.version_info
        assert "outbound|9080||details.default.svc.cluster.local" in latest["changedNames"]

        _, listed, _ = await client.request("GET", "/api/proxies")
        by_id = {p["id"]: p for p in listed}
        assert by_id[ids["client"]]["sync"]["LDS"] == "ERROR"
        status, error, _ = await client.request("GET", "/api/proxies/nope")
        assert status == 404 and "not connected" in error["error"]
    finally:
        await client.close()


# Polling real-looking Envoy answers ----------------------------------------------------------


def envoy_json(clusters: dict[str, dict[str, Any]]) -> bytes:
    """An answer shaped like Envoy's /stats?format=json&histogram_buckets=cumulative."""
    stats: list[dict[str, Any]] = []
    histograms = []
    for name, c in clusters.items():
        stats.append({"name": f"cluster.{name}.upstream_rq_total", "value": c["total"]})
        for code, n in c.get("codes", {}).items():
            stats.append({"name": f"cluster.{name}.upstream_rq_{code}", "value": n})
            stats.append({"name": f"cluster.{name}.upstream_rq_{code[0]}xx", "value": n})
            # Envoy's duplicate view of the same requests, which must not count twice.
            stats.append({"name": f"cluster.{name}.external.upstream_rq_{code}", "value": n})
        histograms.append({"name": f"cluster.{name}.upstream_rq_time", "buckets": [
            {"upper_bound": b, "interval": 0, "cumulative": n} for b, n in c.get("buckets", ())]})
    return json.dumps({"stats": [*stats, {"histograms": histograms}]}).encode()


def test_parse_stats_ignores_duplicate_views() -> None:
    host = "api.corp.external"  # a real host that ends like Envoy's `.external` view
    parsed = parse_stats(envoy_json({
        f"outbound|80||{host}": {"total": 7, "codes": {"200": 5, "503": 2},
                                 "buckets": [(1, 3), (5, 7)]},
    }))
    assert list(parsed) == [f"outbound|80||{host}"]
    found = parsed[f"outbound|80||{host}"]
    assert (found.requests, found.errors, found.codes) == (7, 2, {"200": 5, "503": 2})
    assert found.buckets == ((1.0, 3), (5.0, 7))


async def test_collector_polls_with_bounded_concurrency(env: Env) -> None:
    ids = await connect(env)
    answers: dict[str, Callable[[], bytes]] = {}
    asked: list[str] = []
    running, peak = 0, 0

    async def fetch(admin: str) -> bytes:
        nonlocal running, peak
        asked.append(admin)
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.01)
            return answers[admin]()
        finally:
            running -= 1

    settings = ConsoleSettings(stats_concurrency=2, stats_timeout=1.0)
    collector = StatsCollector(env.harness.server, settings, fetch=fetch)
    count = {"n": 0}

    def client_answer() -> bytes:
        count["n"] += 50
        return envoy_json({f"outbound|9080|v1|{REVIEWS}": {"total": count["n"],
                                                           "codes": {"200": count["n"]}}})

    answers["127.0.0.1:11000"] = client_answer
    answers["127.0.0.1:11100"] = lambda: b"not json"  # a broken answer: recorded, not fatal
    answers["127.0.0.1:11300"] = lambda: envoy_json({})
    await collector.poll_once()
    await collector.poll_once()
    assert sorted(set(asked)) == ["127.0.0.1:11000", "127.0.0.1:11100", "127.0.0.1:11300"]
    assert peak <= 2
    traffic = collector.proxy_traffic(ids["client"])[f"outbound|9080|v1|{REVIEWS}"]
    assert traffic.requests == 50 and traffic.rate_sum > 0
    assert list(collector.errors) == [ids["reviews-v1"]]
    assert "Expecting value" in collector.errors[ids["reviews-v1"]]
    assert collector.status()["rounds"] == 2
    await env.clients.pop("ratings-db").close()
    await eventually(lambda: len(env.harness.server.connections) == 2)
    await collector.poll_once()
    assert ids["ratings-db"] not in collector.samples  # gone with its proxy


# CLI -------------------------------------------------------------------------------------------


def cli(*args: str, stdin: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=stdin)


def test_console_passwd_writes_scrypt_hashes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    result = cli("console", "passwd", "--file", str(path), "--user", "ops", "--password-stdin",
                 stdin="p4ssword!\n")
    assert result.exit_code == 0, result.output
    assert f"set ops in {path}" in result.stdout
    result = cli("console", "passwd", "-f", str(path), "-u", "dev", stdin="another-1\nanother-1\n")
    assert result.exit_code == 0, result.output
    found = load_credentials(ConsoleSettings(credentials_file=path))
    assert set(found.users) == {"ops", "dev"}
    assert check_login(found, "ops", "p4ssword!") and check_login(found, "dev", "another-1")
    assert "p4ssword!" not in path.read_text()
    short = cli("console", "passwd", "-f", str(path), "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "at least 8 characters" in short.stderr
    bad = cli("console", "passwd", "-f", str(path), "-u", "a:b", "--password-stdin",
              stdin="long-enough\n")
    assert bad.exit_code == 1 and "without ':'" in bad.stderr
    removed = cli("console", "passwd", "-f", str(path), "-u", "dev", "--delete")
    assert removed.exit_code == 0
    assert set(load_credentials(ConsoleSettings(credentials_file=path)).users) == {"ops"}


def test_password_env_is_read_once_hashed_and_removed(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-the-env")
    settings = console_settings("127.0.0.1:15016", None, 60, tmp_path, 5.0,
                                ["grafana=http://g:3000/"])
    assert PASSWORD_ENV not in os.environ
    assert "from-the-env" not in repr(settings)
    assert check_login(load_credentials(settings), "admin", "from-the-env")
    assert settings.dashboards == {"grafana": "http://g:3000/"} and settings.state_dir == tmp_path
    with pytest.raises(Exception, match=r"expected prometheus\|grafana\|zipkin="):
        console_settings("127.0.0.1:15016", None, 60, None, 5.0, ["kibana=http://k/"])


async def test_dashboard_console_prints_the_url(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_browser(*_: Any) -> Any:
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", no_browser)
    address = env.url.removeprefix("http://")
    result = await asyncio.to_thread(cli, "dashboard", "console", "--address", address)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{env.url}/\n" and "no browser found" in result.stderr
    down = await asyncio.to_thread(cli, "dashboard", "console", "--address", "127.0.0.1:1",
                                   "--no-browser")
    assert down.exit_code == 1 and "cannot reach the console at 127.0.0.1:1" in down.stderr


def test_dashboard_prometheus_grafana_zipkin(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHPILOT_GRAFANA_URL", raising=False)
    monkeypatch.delenv("MESHPILOT_ZIPKIN_URL", raising=False)
    missing = cli("dashboard", "grafana", "--no-browser")
    assert missing.exit_code == 1
    assert "no Grafana URL configured: give --url URL or set MESHPILOT_GRAFANA_URL" in (
        missing.stderr)
    given = cli("dashboard", "prometheus", "--url", "http://prom:9090/", "--no-browser")
    assert (given.exit_code, given.stdout) == (0, "http://prom:9090/\n")
    monkeypatch.setenv("MESHPILOT_GRAFANA_URL", "http://grafana:3000/")
    assert cli("dashboard", "grafana", "--no-browser").stdout == "http://grafana:3000/\n"
    mesh_config = tmp_path / "mesh.yaml"
    mesh_config.write_text("extensionProviders:\n- name: zipkin\n  zipkin:\n"
                           "    service: zipkin.observability\n    port: 9411\n")
    found = cli("dashboard", "zipkin", "--mesh-config", str(mesh_config), "--no-browser")
    assert (found.exit_code, found.stdout) == (0, "http://zipkin.observability:9411/zipkin/\n")
    assert "--mesh-config with a zipkin" in cli("dashboard", "zipkin", "--no-browser").stderr


async def test_example_dashboard_queries_name_served_metrics(env: Env) -> None:
    """examples/observability/grafana-dashboard.json only asks for metrics the server serves."""
    env.harness.server.analysis = ServerAnalysis(env.harness.server)
    ids = await connect(env)
    feed(env, ids)
    families = list(text_string_to_metric_families(
        env.harness.server.metrics.exposition().decode()))
    # Families without samples yet (no rejects, no analysis messages) still count as served.
    served = {s.name for family in families for s in family.samples} | {
        f.name + ("_total" if f.type == "counter" else "") for f in families}
    dashboard = json.loads((Path(__file__).parents[1] / "examples" / "observability"
                            / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {name for expr in expressions
             for name in re.findall(r"\b((?:istio|pilot|meshpilot)_[a-z_]+)\b", expr)}
    assert asked and asked <= served, asked - served
