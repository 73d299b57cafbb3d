"""`precheck` and `verify-install` through the CLI: ✔/✘ lines and the exit code."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

from typer.testing import CliRunner, Result

from meshpilot.cli.main import app
from meshpilot.demo.mesh import EXAMPLE_CONFIG, free_port
from tests.configs import service_entry
from tests.conftest import Harness
from tests.xds_client import CLUSTER, LISTENER, AdsClient

runner = CliRunner()


def ports() -> list[str]:
    return [
        "--xds-address", f"127.0.0.1:{free_port()}",
        "--debug-address", f"127.0.0.1:{free_port()}",
        "--controlz-address", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip


def precheck(*args: str) -> Result:
    return runner.invoke(app, ["precheck", *args])


def test_precheck_passes_on_the_example_mesh() -> None:
    result = precheck("--config-dir", str(EXAMPLE_CONFIG), *ports())
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("✔ Envoy binary: Envoy 1.")
    assert all(line.startswith("✔ ") for line in lines)
    assert "✔ config valid: 8 resources" in lines
    assert "✔ registry serviceentry: 2 services" in lines


def test_precheck_reports_a_taken_port_and_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    routing = config / "routing.yaml"
    routing.write_text(routing.read_text().replace("weight: 20", "weight: -1"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ports()
        args[1] = f"127.0.0.1:{port}"
        result = precheck("--config-dir", str(config), *args)
    assert result.exit_code == 1
    assert f"✘ xDS port: 127.0.0.1:{port} is not free" in result.stdout
    assert "✘ config valid: 1 rejected document(s):" in result.stdout
    assert f"{routing}:" in result.stdout and "VirtualService default/reviews" in result.stdout


def test_precheck_missing_directory(tmp_path: Path) -> None:
    result = precheck("--config-dir", str(tmp_path / "nope"), *ports())
    assert result.exit_code == 1
    assert f"✘ config directory {tmp_path / 'nope'}: not a directory" in result.stdout


async def verify(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, ["verify-install", *args])


async def test_verify_install(xds: Harness) -> None:
    address = f"127.0.0.1:{xds.port}"
    xds.store.apply(service_entry("reviews", ["reviews.default.svc.cluster.local"]))
    xds.store.mark_synced()

    empty = await verify("--xds-address", address)
    assert empty.exit_code == 1
    assert "✘ proxies connected: 0 connected, expected at least 1" in empty.stdout

    client = AdsClient(xds.port)
    await client.ack(await client.request(CLUSTER))
    good = await verify("--xds-address", address)
    assert good.exit_code == 0, good.output
    assert good.stdout.splitlines()[1:] == [
        "✔ no config errors",
        "✔ proxies connected: 1 connected",
        "✔ proxies SYNCED: 1 of 1",
    ]
    assert good.stdout.startswith("✔ discovery server ready: ")

    await client.nack(await client.request(LISTENER), "listener rejected: bad address")
    await client.expect_no_response()
    bad = await verify("--xds-address", address)
    assert bad.exit_code == 1
    assert "✘ proxies SYNCED:" in bad.stdout
    assert f"{client.node.id} LDS: ERROR (listener rejected: bad address)" in bad.stdout
    await client.close()


async def test_verify_install_without_a_server() -> None:
    result = await verify("--xds-address", f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert result.exit_code == 1
    assert result.stdout.startswith("✘ discovery server ready: no answer from the discovery")
