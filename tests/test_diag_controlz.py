"""ControlZ's JSON API and pages in process, and `admin log` / `dashboard controlz` through the
CLI. (The pages in a real browser are tested end to end in tests/e2e/test_diagnostics.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import webbrowser
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner, Result

from meshpilot.cli.main import app
from meshpilot.debug.controlz import start_controlz
from tests.conftest import Harness

runner = CliRunner()


@pytest.fixture
async def controlz(xds: Harness) -> AsyncIterator[str]:
    xds.store.mark_synced()
    server = await start_controlz(xds.server, "127.0.0.1", 0)
    host, port = server.addresses[0][:2]
    xds_logger = logging.getLogger("meshpilot.xds")
    level = xds_logger.level
    try:
        yield f"{host}:{port}"
    finally:
        xds_logger.setLevel(level)
        await server.cleanup()


async def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body) as response,
    ):
        text = await response.text()
        if "json" in response.content_type:
            return response.status, json.loads(text)
        return response.status, text


async def test_scopes_change_the_servers_loggers(controlz: str) -> None:
    status, scopes = await call("GET", f"http://{controlz}/scopej/")
    assert status == 200
    names = [s["name"] for s in scopes]
    assert names[0] == "default" and "xds" in names and "config" in names
    status, info = await call("PUT", f"http://{controlz}/scopej/xds", {"output_level": "debug"})
    assert status == 200 and info["output_level"] == "debug"
    assert logging.getLogger("meshpilot.xds").getEffectiveLevel() == logging.DEBUG
    status, info = await call("GET", f"http://{controlz}/scopej/xds")
    assert info == {
        "name": "xds",
        "description": "ADS streams, pushes, ACKs and NACKs.",
        "output_level": "debug",
        "stack_trace_level": "none",
        "log_callers": False,
    }
    status, error = await call("PUT", f"http://{controlz}/scopej/xds", {"output_level": "loud"})
    assert status == 400 and "unknown level" in error["error"]
    status, _ = await call("GET", f"http://{controlz}/scopej/nope")
    assert status == 404


async def test_topics_answer_json_and_html(controlz: str) -> None:
    _, memory = await call("GET", f"http://{controlz}/memj/")
    assert memory["rss_bytes"] > 0 and memory["python_allocated_blocks"] > 0
    assert len(memory["gc_generations"]) == 3
    _, collected = await call("PUT", f"http://{controlz}/memj/forcecollection")
    assert set(collected) == {"collected", "objects_before", "objects_after"}
    _, env = await call("GET", f"http://{controlz}/envj/")
    assert "PATH" in env
    _, proc = await call("GET", f"http://{controlz}/procj/")
    assert proc["pid"] > 0 and proc["threads"] >= 1
    _, args = await call("GET", f"http://{controlz}/argj/")
    assert args == sys.argv
    _, version = await call("GET", f"http://{controlz}/versionj/")
    assert version["meshpilot"] and version["python"]
    _, metrics = await call("GET", f"http://{controlz}/metricj/")
    assert "pilot_xds" in {m["name"] for m in metrics}
    for page, marker in [
        ("scopez", 'id="level-xds"'),
        ("memz", 'id="collect"'),
        ("envz", "PATH"),
        ("procz", "uptime_seconds"),
        ("argz", '<ol id="argz">'),
        ("versionz", "meshpilot"),
        ("metricz", "pilot_services"),
    ]:
        status, html = await call("GET", f"http://{controlz}/{page}/")
        assert status == 200 and marker in html, page
        assert html.startswith("<!DOCTYPE html>")


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def test_admin_log_lists_and_sets_levels(controlz: str) -> None:
    listed = await cli("admin", "log", "--controlz-address", controlz)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ACTIVE", "SCOPE", "DESCRIPTION", "LOG", "LEVEL"]
    assert any(line.startswith("xds ") for line in lines)

    changed = await cli(
        "admin", "log", "--controlz-address", controlz, "--level", "xds:debug", "-o", "json"
    )
    assert changed.exit_code == 0, changed.output
    levels = {s["name"]: s["output_level"] for s in json.loads(changed.stdout)}
    assert levels["xds"] == "debug"
    assert logging.getLogger("meshpilot.xds").getEffectiveLevel() == logging.DEBUG

    reset = await cli("admin", "log", "--controlz-address", controlz, "--reset", "-o", "yaml")
    assert reset.exit_code == 0, reset.output
    assert "output_level: debug" not in reset.stdout
    assert logging.getLogger("meshpilot.xds").getEffectiveLevel() == logging.INFO

    bad = await cli("admin", "log", "--controlz-address", controlz, "--level", "nope:debug")
    assert bad.exit_code == 1 and "no scope 'nope'" in bad.stderr


async def test_dashboard_prints_the_url_without_a_browser(
    controlz: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_browser(*_: Any) -> Any:
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", no_browser)
    result = await cli("dashboard", "controlz", "--address", controlz)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"http://{controlz}/\n"
    assert "no browser found" in result.stderr
    quiet = await cli("dashboard", "controlz", "--address", controlz, "--no-browser")
    assert quiet.stdout == f"http://{controlz}/\n" and quiet.stderr == ""


async def test_dashboard_fails_clearly_when_controlz_is_down() -> None:
    result = await cli("dashboard", "controlz", "--address", "127.0.0.1:1", "--no-browser")
    assert result.exit_code == 1 and "cannot reach ControlZ at 127.0.0.1:1" in result.stderr
