"""The mesh console in headless Chromium, driven over the DevTools protocol.

1. Against a real mesh (`meshpilot discovery` with the console, the example workloads and
   their Envoy sidecars, real requests through the client's sidecar): log in through the form,
   see the graph with the edge client → reviews carrying a non-zero request rate measured by
   the Envoys, save a screenshot and check it is not blank, open the service page and a proxy
   page, log out.
2. Against 1,000 synthetic services injected into an in-process server: the page loads the
   aggregated graph, expands a namespace and searches.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshpilot.console.auth import hash_password, write_credentials
from meshpilot.demo.mesh import (
    Mesh,
    example_workloads,
    free_port,
    get_json,
    http_request,
    wait_until,
)
from tests.test_console_graph import Large, large  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

USER, PASSWORD = "ops", "console-e2e-pw"
REVIEWS = "reviews.default.svc.cluster.local"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
]


@pytest.fixture(scope="module")
def console_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, str]]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("console-mesh")
    credentials = workdir / "console-users"
    write_credentials(credentials, {USER: hash_password(PASSWORD)})
    console = f"127.0.0.1:{free_port()}"
    mesh = Mesh(workdir, prefix=prefix)
    mesh.write_example_config()
    mesh.start_discovery([
        "--debounce-after", "0.05", "--controlz-address", f"127.0.0.1:{free_port()}",
        "--console-address", console, "--console-credentials", str(credentials),
        "--console-stats-interval", "1", "--state-dir", str(workdir / "state"),
        "--dashboard", "grafana=http://127.0.0.1:3000/",
    ])
    try:
        mesh.wait_ready()
        for workload in example_workloads(mesh):
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh, console
    finally:
        mesh.stop()


# Chromium over the DevTools protocol -------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium with a fresh profile; yields its page's DevTools websocket URL."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (scripts/setup)")
    profile = tmp_path / "profile"
    with open(tmp_path / "chromium.log", "wb") as log:
        process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        active = profile / "DevToolsActivePort"
        port = wait_until(lambda: active.exists() and active.read_text().split("\n")[0], 30,
                          "Chromium's DevTools port")
        pages = wait_until(
            lambda: [t for t in get_json(f"http://127.0.0.1:{port}/json/list")
                     if t["type"] == "page"],
            30, "a Chromium page")
        yield str(pages[0]["webSocketDebuggerUrl"])
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Page:
    """Just enough of the DevTools protocol: navigate, evaluate, poll, screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        """Uncaught exceptions of the page's scripts (Runtime.exceptionThrown)."""

    async def send(self, method: str, **params: Any) -> Any:
        number = next(self.ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description")
                                   or details.get("text", ""))
            if message.get("id") == number:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def poll(self, expression: str, what: str, within: float = 30) -> Any:
        try:
            async with asyncio.timeout(within):
                while True:
                    # During a navigation the document may not be there yet: not an error.
                    result = await self.send("Runtime.evaluate", expression=expression,
                                             returnByValue=True, awaitPromise=True)
                    value = result["result"].get("value")
                    if "exceptionDetails" not in result and value:
                        return value
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what} (script errors: "
                                 f"{self.errors})") from None

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.poll("document.readyState === 'complete' && location.href !== 'about:blank'",
                        f"{url} loaded")

    async def screenshot(self, path: Path) -> bytes:
        shot = await self.send("Page.captureScreenshot", format="png")
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data


async def browse(ws_url: str, scenario: Callable[[Page], Awaitable[None]]) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await scenario(page)
        assert not page.errors, page.errors


async def log_in(page: Page, base: str, user: str, password: str) -> None:
    await page.open(base + "/")
    assert "/login?next=" in await page.evaluate("location.href")
    await page.evaluate(
        f"document.getElementById('user').value = {json.dumps(user)};"
        f"document.getElementById('password').value = {json.dumps(password)};"
        "document.getElementById('login').submit(); true")
    try:
        await page.poll("document.body.dataset.view === 'graph'", "the console after logging in")
    except AssertionError as error:
        where = await page.evaluate("location.href + ': ' + document.body.innerText")
        raise AssertionError(f"{error}; the page is {where[:500]}") from None


# PNG ---------------------------------------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA PNG (what Chromium writes) into rows of pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat = 8, b""
    width = height = channels = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, channels, rows


def colours_in(data: bytes, box: tuple[int, int, int, int]) -> dict[bytes, int]:
    """Pixel colour → count inside box (x, y, width, height)."""
    width, channels, rows = png_pixels(data)
    x, y, w, h = box
    counts: dict[bytes, int] = {}
    for row in rows[y:y + h]:
        for i in range(x, min(x + w, width)):
            pixel = row[i * channels:i * channels + 3]
            counts[pixel] = counts.get(pixel, 0) + 1
    return counts


# Tests -----------------------------------------------------------------------------------------


def keep_calling(mesh: Mesh, stop: threading.Event) -> None:
    client = mesh.workloads["client"]
    while not stop.is_set():
        http_request(f"{client.outbound_bind}:9080", "reviews")
        stop.wait(0.05)


def test_console_shows_the_live_mesh(
    console_mesh: tuple[Mesh, str], chromium: str, tmp_path: Path
) -> None:
    mesh, console = console_mesh
    base = f"http://{console}"
    client_id = next(c["proxy"] for c in get_json(f"{mesh.debug_url}/debug/adsz")["clients"]
                     if c["workload"] == "client")
    stop = threading.Event()
    traffic = threading.Thread(target=keep_calling, args=(mesh, stop), daemon=True)
    traffic.start()
    edge = (f"g.edge[data-source='wl:default/client'][data-target='svc:default/{REVIEWS}']")

    async def scenario(page: Page) -> None:
        await log_in(page, base, USER, PASSWORD)
        await page.open(base + "/#/graph?aggregate=workload")
        rps = await page.poll(
            f"(() => {{ const e = document.querySelector(\"{edge}\");"
            " return e && parseFloat(e.dataset.rps) > 0 && parseFloat(e.dataset.rps); })()",
            "a request rate on client → reviews, measured by the Envoys", within=60)
        assert rps > 0
        # The same number from the API, with the page's own session.
        graph = await page.evaluate(
            "fetch('/api/graph?aggregate=workload').then(r => r.json())")
        api_edge = next(e for e in graph["edges"] if e["source"] == "wl:default/client"
                        and e["target"] == f"svc:default/{REVIEWS}")
        assert api_edge["kind"] == "traffic" and api_edge["rps"] > 0 and api_edge["total"] > 0
        served = [e for e in graph["edges"] if e["source"] == f"svc:default/{REVIEWS}"]
        assert {e["target"] for e in served} == {"wl:default/reviews-v1", "wl:default/reviews-v2"}
        label = await page.evaluate(f"document.querySelector(\"{edge} text\").textContent")
        assert label.endswith("rps") or " rps" in label
        nodes = await page.evaluate("document.querySelectorAll('#graph-svg g.node').length")
        assert nodes == len(graph["nodes"]) >= 6

        box = await page.evaluate(
            "(() => { const r = document.getElementById('graph').getBoundingClientRect();"
            " return [Math.round(r.x), Math.round(r.y), Math.round(r.width),"
            " Math.round(r.height)]; })()")
        shot = await page.screenshot(tmp_path / "graph.png")
        colours = colours_in(shot, tuple(box))
        total = sum(colours.values())
        background = max(colours.values())
        # Not blank: nodes, edges and labels cover part of the graph in many colours.
        assert len(colours) > 20 and total - background > total // 100, (len(colours), total)

        await page.evaluate(
            f"document.querySelector(\"g.node[data-id='svc:default/{REVIEWS}']\")"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true})); true")
        await page.poll("!!document.getElementById('open-service')", "the node's details")
        await page.evaluate("document.getElementById('open-service').click(); true")
        await page.poll("!!document.getElementById('service-title')", "the service page")
        assert await page.evaluate(
            "document.getElementById('service-title').textContent") == REVIEWS
        assert await page.evaluate("document.querySelectorAll('#endpoints tbody tr').length") == 2
        callers = await page.evaluate(
            "Array.from(document.querySelectorAll('#callers tbody tr td:first-child'))"
            ".map(td => td.textContent)")
        assert callers == ["wl:default/client"]
        kinds = await page.evaluate(
            "Array.from(document.querySelectorAll('#service-config tr.config'))"
            ".map(tr => tr.dataset.kind)")
        assert {"ServiceEntry", "VirtualService", "DestinationRule"} <= set(kinds)

        await page.open(base + "/#/proxy/" + client_id.replace("~", "%7E"))
        await page.poll("!!document.getElementById('proxy-title')", "the proxy page")
        assert await page.evaluate(
            "document.getElementById('proxy-title').textContent") == "client.default"
        sync = await page.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('#sync tbody tr'))"
            ".map(tr => [tr.dataset.type, tr.querySelector('.badge').textContent]))")
        assert sync["CDS"] == sync["LDS"] == "SYNCED"
        verdicts = await page.evaluate(
            "Array.from(document.querySelectorAll('#history tr.push'))"
            ".map(tr => tr.dataset.status)")
        assert "ACK" in verdicts
        assert await page.evaluate("document.querySelectorAll('#history-chart rect').length") > 0
        await page.screenshot(tmp_path / "proxy.png")

        await page.open(base + "/#/config")
        await page.poll("document.querySelectorAll('#configs tr.config').length >= 6",
                        "the config browser")
        assert await page.evaluate(
            "document.getElementById('dashboard-grafana').href") == "http://127.0.0.1:3000/"

        await page.evaluate("document.getElementById('logout').submit(); true")
        await page.poll("location.pathname === '/login'", "the login page after logging out")
        assert "You are logged out." in await page.evaluate("document.body.textContent")
        await page.open(base + "/#/services")
        assert "/login?next=" in await page.evaluate("location.href")

    try:
        asyncio.run(browse(chromium, scenario))
    finally:
        stop.set()
        traffic.join(10)
    assert (tmp_path / "graph.png").stat().st_size > 0


def test_wrong_password_in_the_browser(console_mesh: tuple[Mesh, str], chromium: str) -> None:
    _, console = console_mesh

    async def scenario(page: Page) -> None:
        await page.open(f"http://{console}/login")
        await page.evaluate(
            "document.getElementById('user').value = 'ops';"
            "document.getElementById('password').value = 'not-it';"
            "document.getElementById('login').submit(); true")
        await page.poll("!!document.getElementById('message')", "the error message")
        assert await page.evaluate("document.getElementById('message').textContent") == (
            "Wrong user name or password.")

    asyncio.run(browse(chromium, scenario))


async def test_a_thousand_services_in_the_browser(
    large: Large, chromium: str, tmp_path: Path  # noqa: F811 (fixture)
) -> None:
    async def scenario(page: Page) -> None:
        await log_in(page, large.url, "ops", "p4ssword!")
        count = await page.poll(
            "document.getElementById('graph-svg') && document.getElementById('graph-svg')"
            ".dataset.nodes", "the aggregated graph")
        assert int(count) == 10  # auto: by namespace
        info = await page.evaluate("document.getElementById('graph-info').textContent")
        assert info.startswith("10 nodes") and "by namespace" in info
        await page.screenshot(tmp_path / "namespaces.png")
        await page.evaluate(
            "document.querySelector(\"g.node[data-id='ns:ns-3']\")"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true})); true")
        await page.poll("!!document.getElementById('expand-namespace')", "the namespace's details")
        await page.evaluate("document.getElementById('expand-namespace').click(); true")
        nodes = await page.poll(
            "location.hash.includes('namespace=ns-3') && document.getElementById('graph-svg')"
            " && parseInt(document.getElementById('graph-svg').dataset.nodes)",
            "the namespace expanded")
        assert 100 < nodes <= 300
        await page.evaluate(
            "const s = document.getElementById('search'); s.value = 'svc-0043';"
            "s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); true")
        matched = await page.poll(
            "Array.from(document.querySelectorAll('g.node.match')).map(g => g.dataset.id)"
            ".join(',')", "the search result")
        assert matched == "svc:ns-3/svc-0043.ns-3.svc.cluster.local"

    await browse(chromium, scenario)
