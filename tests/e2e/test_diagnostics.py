"""End to end: the diagnostic commands against `meshpilot discovery` and real Envoy sidecars.

The mesh is the example one, built as in test_mesh.py but with its own module-scoped processes
(and ControlZ on a free port). Statuses are produced by real Envoys: an Envoy frozen with
SIGSTOP leaves a push unacknowledged (STALE), a regex that Python accepts but Envoy's RE2
rejects is NACKed (ERROR, with Envoy's text). Every command runs through the CLI itself.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from typer.testing import CliRunner, Result

from meshpilot.cli.main import app
from meshpilot.demo.mesh import (
    EXAMPLE_CONFIG,
    Mesh,
    example_workloads,
    free_port,
    get_json,
    http_request,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROUTING = (EXAMPLE_CONFIG / "routing.yaml").read_text()
# `\Z` compiles in Python (so meshpilot accepts it) but not in RE2, which Envoy uses.
REJECTED_BY_ENVOY = ROUTING.replace("exact: jason", 'regex: "jason\\\\Z"')
runner = CliRunner()


@pytest.fixture(scope="module")
def controlz() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, controlz: str) -> Iterator[Mesh]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("diag-mesh"), prefix=prefix)
    mesh.write_example_config()
    mesh.start_discovery(["--debounce-after", "0.05", "--controlz-address", controlz])
    try:
        mesh.wait_ready()
        for workload in example_workloads(mesh):
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh
    finally:
        mesh.stop()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def table(text: str) -> list[list[str]]:
    block = text.strip().split("\n\n")[0]
    return [re.split(r" {3,}", line.strip()) for line in block.splitlines()]


def node_id(mesh: Mesh, workload: str) -> str:
    ip = mesh.workloads[workload].ip
    return f"sidecar~{ip}~{workload}.default~default.svc.cluster.local"


def status_rows(mesh: Mesh) -> dict[str, dict[str, str]]:
    rows = table(ok(cli("proxy-status", "--xds-address", mesh.xds_address)))
    header = rows[0]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows[1:]}


def word(cell: str) -> str:
    """`SYNCED (2m5s)` → `SYNCED`."""
    return cell.split(" (")[0]


def envoy_pid(mesh: Mesh, workload: str) -> int:
    agent = mesh.processes[f"sidecar-{workload}"].pid
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    (pid,) = children
    return int(pid)


def write_routing(mesh: Mesh, text: str) -> None:
    mesh.write_config("routing.yaml", text)


def all_synced(mesh: Mesh) -> bool:
    rows = status_rows(mesh)
    return len(rows) == 4 and all(
        word(row[t]) in ("SYNCED", "IGNORED")
        for row in rows.values()
        for t in ("CDS", "LDS", "EDS", "RDS")
    )


def test_every_proxy_synced(mesh: Mesh) -> None:
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED")
    rows = status_rows(mesh)
    assert set(rows) == {node_id(mesh, w) for w in mesh.workloads}
    client = rows[node_id(mesh, "client")]
    assert all(word(client[t]) == "SYNCED" for t in ("CDS", "LDS", "EDS", "RDS"))
    assert re.fullmatch(r"SYNCED \(\d+[smhd].*\)", client["CDS"])
    assert client["ECDS"] == "IGNORED" and client["CLUSTER"] == "Kubernetes"

    as_json = json.loads(ok(cli("ps", "--xds-address", mesh.xds_address, "-o", "json")))
    assert {c["node"]["id"] for c in as_json} == set(rows)
    as_yaml = yaml.safe_load(ok(cli("ps", "--xds-address", mesh.xds_address, "-o", "yaml")))
    assert {c["node"]["id"] for c in as_yaml} == set(rows)

    text = ok(cli("ps", "client.default", "--xds-address", mesh.xds_address))
    assert text.splitlines()[:2] == ["Clusters Match", "Listeners Match"]
    assert text.splitlines()[2].startswith("Routes Match (RDS last loaded at ")


def test_change_followed_through(mesh: Mesh) -> None:
    before = get_json(f"{mesh.debug_url}/debug/syncz")
    versions = {p["proxy"]: p["RDS"]["version_acked"] for p in before}
    write_routing(
        mesh, ROUTING.replace("weight: 80", "weight: 70").replace("weight: 20", "weight: 30")
    )

    def acked_new_version() -> bool:
        after = get_json(f"{mesh.debug_url}/debug/syncz")
        client = next(p for p in after if p["proxy"] == node_id(mesh, "client"))
        return bool(
            client["RDS"]["status"] == "SYNCED"
            and client["RDS"]["version_acked"] != versions[client["proxy"]]
        )

    wait_until(acked_new_version, 15, "the client to acknowledge the new routes")
    text = ok(cli("ps", node_id(mesh, "client"), "--xds-address", mesh.xds_address))
    assert "Routes Match" in text
    write_routing(mesh, ROUTING)
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED again")


def test_frozen_envoy_is_stale_after_a_push(mesh: Mesh) -> None:
    pid = envoy_pid(mesh, "client")
    os.kill(pid, signal.SIGSTOP)
    try:
        write_routing(
            mesh, ROUTING.replace("weight: 80", "weight: 60").replace("weight: 20", "weight: 40")
        )
        wait_until(
            lambda: word(status_rows(mesh)[node_id(mesh, "client")]["RDS"]) == "STALE",
            15,
            "the frozen client's RDS to show STALE",
        )
        # The other proxies took the push.
        ratings = status_rows(mesh)[node_id(mesh, "ratings-db")]
        wait_until(
            lambda: word(status_rows(mesh)[node_id(mesh, "ratings-db")]["RDS"]) == "SYNCED",
            15,
            f"ratings-db SYNCED (was {ratings['RDS']})",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(
        lambda: word(status_rows(mesh)[node_id(mesh, "client")]["RDS"]) == "SYNCED",
        15,
        "the thawed client to catch up",
    )
    write_routing(mesh, ROUTING)
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED again")


def test_rejected_config_is_error_with_envoys_reason_and_a_diff(mesh: Mesh) -> None:
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED")
    client = node_id(mesh, "client")
    write_routing(mesh, REJECTED_BY_ENVOY)
    assert get_json(f"{mesh.debug_url}/debug/config_errors") == []  # meshpilot accepted it
    wait_until(
        lambda: word(status_rows(mesh)[client]["RDS"]) == "ERROR", 15, "RDS ERROR for the client"
    )
    text = ok(cli("ps", "--xds-address", mesh.xds_address))
    reason = next(line for line in text.splitlines() if line.strip().startswith(f"{client} RDS:"))
    assert "\\Z" in reason or "escape" in reason, reason  # RE2's own words

    diff = ok(cli("ps", client, "--xds-address", mesh.xds_address)).splitlines()
    assert diff[:2] == ["Clusters Match", "Listeners Match"]
    assert diff[2].startswith("Routes Don't Match")
    assert any(line.startswith("-") and "jason\\\\Z" in line for line in diff)
    assert any(line.startswith("+") and '"exact": "jason"' in line for line in diff)

    write_routing(mesh, ROUTING)
    wait_until(lambda: word(status_rows(mesh)[client]["RDS"]) == "SYNCED", 15, "RDS SYNCED")
    diff = ok(cli("ps", client, "--xds-address", mesh.xds_address)).splitlines()
    assert [line.split(" (")[0] for line in diff] == [
        "Clusters Match",
        "Listeners Match",
        "Routes Match",
    ]


def test_saved_dump_mismatch_then_live_match(mesh: Mesh, tmp_path: Path) -> None:
    saved = tmp_path / "client.json"
    saved.write_text(json.dumps(mesh.envoy_config_dump("client")))
    client = node_id(mesh, "client")
    write_routing(
        mesh, ROUTING.replace("weight: 80", "weight: 50").replace("weight: 20", "weight: 50")
    )
    wait_until(
        lambda: (
            "Routes Don't Match"
            in ok(cli("ps", client, "--xds-address", mesh.xds_address, "--file", str(saved)))
        ),
        15,
        "the saved dump to be behind",
    )
    wait_until(
        lambda: "Routes Match" in ok(cli("ps", client, "--xds-address", mesh.xds_address)),
        15,
        "the live Envoy to match",
    )
    write_routing(mesh, ROUTING)
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED again")


REVIEWS = "reviews.default.svc.cluster.local"


def test_proxy_config_live_and_from_a_saved_dump(mesh: Mesh, tmp_path: Path) -> None:
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED")
    saved = tmp_path / "client.json"
    admin = mesh.workloads["client"].admin_address
    status, _, body = http_request(admin, "x", "/config_dump?include_eds")
    assert status == 200
    saved.write_text(body.decode())
    client = mesh.workloads["client"]
    live = ("client.default", "--xds-address", mesh.xds_address)
    for source in (live, ("--file", str(saved))):
        clusters = table(ok(cli("pc", "cluster", *source, "--fqdn", REVIEWS)))
        assert [r[:5] for r in clusters[1:]] == [
            [REVIEWS, "9080", "-", "outbound", "EDS"],
            [REVIEWS, "9080", "v1", "outbound", "EDS"],
            [REVIEWS, "9080", "v2", "outbound", "EDS"],
        ]
        listeners = table(ok(cli("pc", "listener", *source, "--port", "27017")))
        assert listeners[1:] == [
            [
                client.outbound_bind,
                "27017",
                "ALL",
                "Cluster: outbound|27017||ratings-db.default.svc.cluster.local",
            ]
        ]
        routes = table(ok(cli("pc", "route", *source, "--name", "9080")))
        reviews = [r for r in routes[1:] if r[1] == f"{REVIEWS}:9080"]
        assert [r[3] for r in reviews] == ["/* (+end-user)", "/*"]
        endpoints = table(
            ok(cli("pc", "endpoint", *source, "--cluster", f"outbound|9080|v2|{REVIEWS}"))
        )
        assert endpoints[1:] == [
            [f"{mesh.address(12)}:9080", "HEALTHY", "OK", f"outbound|9080|v2|{REVIEWS}"]
        ]
        bootstrap = json.loads(ok(cli("pc", "bootstrap", *source)))
        assert bootstrap["node"]["id"] == node_id(mesh, "client")
        assert ok(cli("pc", "secret", *source)).split() == [
            "RESOURCE",
            "NAME",
            "TYPE",
            "STATUS",
            "VALID",
            "CERT",
            "SERIAL",
            "NUMBER",
            "NOT",
            "AFTER",
            "NOT",
            "BEFORE",
        ]

    # The reviews-v1 sidecar's inbound side, reached by its admin address alone.
    admin = mesh.workloads["reviews-v1"].admin_address
    inbound = json.loads(
        ok(cli("pc", "cluster", "--admin", admin, "--direction", "inbound", "-o", "json"))
    )
    assert [c["name"] for c in inbound] == ["inbound|9080||"]


def test_proxy_config_log_levels(mesh: Mesh) -> None:
    args = ("reviews-v1.default", "--xds-address", mesh.xds_address)
    text = ok(cli("pc", "log", *args, "--level", "upstream:debug,router:trace"))
    assert "  upstream: debug" in text and "  router: trace" in text
    levels = json.loads(ok(cli("pc", "log", *args, "-o", "json")))
    assert levels["upstream"] == "debug"
    reset = json.loads(ok(cli("pc", "log", *args, "--reset", "-o", "json")))
    assert set(reset.values()) == {"warning"}
    ok(cli("pc", "log", *args, "--level", "info"))


def test_verify_install_with_real_envoys(mesh: Mesh) -> None:
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED")
    result = cli("verify-install", "--xds-address", mesh.xds_address, "--min-proxies", "4")
    assert result.exit_code == 0, result.output
    assert "✔ proxies SYNCED: 4 of 4" in result.stdout


def test_describe_a_real_sidecar(mesh: Mesh) -> None:
    text = ok(cli("describe", "proxy", "reviews-v2.default", "--xds-address", mesh.xds_address))
    lines = text.splitlines()
    assert lines[0] == f"Proxy: {node_id(mesh, 'reviews-v2')}"
    assert "   Matching subsets: v2" in lines and "      (Non-matching subsets v1)" in lines
    assert "   Route \"jason\": subset v2 100% when header end-user exact 'jason'" in lines
    assert '   Route "split": subset v2 20%' in lines
    assert not [line for line in lines if line.startswith("WARNING")]


# ControlZ in headless Chromium ------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium with its DevTools endpoint; yields the page's websocket URL."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (scripts/setup)")
    profile = tmp_path / "profile"
    with open(tmp_path / "chromium.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        # Chromium writes the port it picked into the profile.
        active = profile / "DevToolsActivePort"
        port = wait_until(
            lambda: active.exists() and active.read_text().split("\n")[0],
            30,
            "Chromium's DevTools port",
        )
        pages = wait_until(
            lambda: [
                t for t in get_json(f"http://127.0.0.1:{port}/json/list") if t["type"] == "page"
            ],
            30,
            "a Chromium page",
        )
        yield str(pages[0]["webSocketDebuggerUrl"])
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Page:
    """Just enough of the Chrome DevTools Protocol: navigate, evaluate, poll."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> Any:
        number = next(self.ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == number:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def poll(self, expression: str, what: str, within: float = 15) -> Any:
        try:
            async with asyncio.timeout(within):
                while True:
                    value = await self.evaluate(expression)
                    if value:
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None
        return value

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.poll(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            f"{url} loaded",
        )


async def browse(ws_url: str, scenario: Callable[[Page], Awaitable[None]]) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        page = Page(ws)
        await page.send("Page.enable")
        await scenario(page)


def test_controlz_pages_render_in_chromium(
    mesh: Mesh, controlz: str, chromium: str, tmp_path: Path
) -> None:
    async def scenario(page: Page) -> None:
        for topic, title in [
            ("scopez", "Logging Scopes"),
            ("memz", "Memory Usage"),
            ("envz", "Environment Variables"),
            ("procz", "Process Info"),
            ("argz", "Command-Line Arguments"),
            ("versionz", "Version Info"),
            ("metricz", "Metrics"),
        ]:
            await page.open(f"http://{controlz}/{topic}/")
            assert await page.evaluate("document.querySelector('h1').textContent") == (
                "Environment" if topic == "envz" else title
            )
            rows = await page.evaluate("document.querySelectorAll('main tr, main li').length")
            assert rows > 1, topic
        await page.open(f"http://{controlz}/argz/")
        args = await page.evaluate(
            "Array.from(document.querySelectorAll('#argz li')).map(li => li.textContent)"
        )
        assert "--controlz-address" in args and controlz in args
        shot = await page.send("Page.captureScreenshot", format="png")
        (tmp_path / "argz.png").write_bytes(base64.b64decode(shot["data"]))
        await page.open(f"http://{controlz}/memz/")
        await page.evaluate("document.getElementById('collect').click()")
        status = await page.poll("document.getElementById('status').textContent", "collected")
        assert status.startswith("collected ")

    asyncio.run(browse(chromium, scenario))
    assert (tmp_path / "argz.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_controlz_log_level_change_takes_effect(mesh: Mesh, controlz: str, chromium: str) -> None:
    async def scenario(page: Page) -> None:
        await page.open(f"http://{controlz}/scopez/")
        assert await page.evaluate("document.getElementById('level-xds').value") == "info"
        await page.evaluate(
            "const s = document.getElementById('level-xds'); s.value = 'debug';"
            "s.dispatchEvent(new Event('change')); true"
        )
        text = await page.poll("document.getElementById('status').textContent", "the answer")
        assert text == "scope xds is now at level debug"
        await page.open(f"http://{controlz}/scopez/")
        assert await page.evaluate("document.getElementById('level-xds').value") == "debug"

    asyncio.run(browse(chromium, scenario))
    assert get_json(f"http://{controlz}/scopej/xds")["output_level"] == "debug"
    # The server now logs its pushes at debug level.
    write_routing(
        mesh, ROUTING.replace("weight: 80", "weight: 75").replace("weight: 20", "weight: 25")
    )
    wait_until(
        lambda: re.search(r"DEBUG\s+meshpilot\.xds: push ", mesh.log("discovery")),
        15,
        "a debug line from the xds scope",
    )
    levels = json.loads(
        ok(cli("admin", "log", "--controlz-address", controlz, "--reset", "-o", "json"))
    )
    assert {s["output_level"] for s in levels} == {"info"}
    write_routing(mesh, ROUTING)
    wait_until(lambda: all_synced(mesh), 15, "every proxy SYNCED again")


def test_admin_log_and_dashboard_against_the_server(mesh: Mesh, controlz: str) -> None:
    rows = table(ok(cli("admin", "log", "--controlz-address", controlz)))
    assert rows[0] == ["ACTIVE SCOPE", "DESCRIPTION", "LOG LEVEL"]
    assert ["xds", "ADS streams, pushes, ACKs and NACKs.", "info"] in rows
    assert ok(cli("dashboard", "controlz", "--address", controlz, "--no-browser")) == (
        f"http://{controlz}/\n"
    )
