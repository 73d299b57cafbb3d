"""EnvoyProcess against the real Envoy: start, readiness, restart on death, clean stop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from meshpilot.agent.bootstrap import build_bootstrap, write_bootstrap
from meshpilot.agent.envoy_process import (
    Backoff,
    EnvoyOptions,
    EnvoyProcess,
    RestartPolicy,
    find_envoy_binary,
)
from meshpilot.agent.node import HostPort, NodeInfo

pytestmark = pytest.mark.e2e

WAIT = 30.0
"""Upper bound for anything that should take well under a second; polls end early."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def eventually(check: Callable[[], Awaitable[bool]]) -> bool:
    """Poll `check` until true; TimeoutError after WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while True:
            if await check():
                return True
            await asyncio.sleep(0.05)


def ads_options(directory: Path, **overrides: Any) -> EnvoyOptions:
    """An Envoy whose xDS server never answers: admin comes up, it never gets LIVE."""
    admin = HostPort("127.0.0.1", free_port())
    node = NodeInfo(workload_name="test", admin_address=str(admin))
    bootstrap = build_bootstrap(node, HostPort("127.0.0.1", free_port()))
    config = write_bootstrap(bootstrap, directory / str(admin.port))
    return envoy_options(config, admin, **overrides)


def static_options(directory: Path, **overrides: Any) -> EnvoyOptions:
    """An Envoy with only an admin endpoint: nothing to fetch, so it is LIVE at once."""
    admin = HostPort("127.0.0.1", free_port())
    address = {"socket_address": {"address": admin.host, "port_value": admin.port}}
    config = directory / "static.json"
    config.write_text(json.dumps({"admin": {"address": address}}))
    return envoy_options(config, admin, **overrides)


def envoy_options(config: Path, admin: HostPort, **overrides: Any) -> EnvoyOptions:
    options = EnvoyOptions(
        binary=find_envoy_binary(),
        config_path=config,
        admin_address=admin,
        log_level="warning",
        concurrency=1,
    )
    return dataclasses.replace(options, **overrides)


@asynccontextmanager
async def running(options: EnvoyOptions) -> AsyncIterator[EnvoyProcess]:
    envoy = EnvoyProcess(options)
    await envoy.start()
    try:
        yield envoy
    finally:
        await envoy.stop()


def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_run() -> None:
    backoff = Backoff(RestartPolicy(initial_backoff=0.5, max_backoff=10.0, reset_after=30.0))

    delays = [backoff.next_delay(ran_for=1.0) for _ in range(7)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.next_delay(ran_for=30.0) == 0.5
    assert backoff.next_delay(ran_for=29.0) == 1.0


def test_command_line_disables_hot_restart_and_shortens_drain(tmp_path: Path) -> None:
    options = EnvoyOptions(
        binary=Path("/bin/envoy"),
        config_path=tmp_path / "b.json",
        admin_address=HostPort("127.0.0.1", 1),
        log_level="debug",
    )

    command = options.command()

    assert command[:3] == ["/bin/envoy", "-c", str(tmp_path / "b.json")]
    assert command[command.index("--log-level") + 1] == "debug"
    assert "--disable-hot-restart" in command
    assert command[command.index("--drain-time-s") + 1] == "1"
    assert command[command.index("--parent-shutdown-time-s") + 1] == "2"


def test_the_bundled_envoy_is_found() -> None:
    path = find_envoy_binary()

    assert path.is_file()
    assert os.access(path, os.X_OK)


async def test_admin_answers_before_xds_and_stop_leaves_no_process(tmp_path: Path) -> None:
    envoy = EnvoyProcess(ads_options(tmp_path))
    await envoy.start()
    pid = envoy.pid
    assert pid is not None
    try:
        assert await envoy.wait_admin(WAIT)
        # No xDS server: the initial CDS fetch is still pending, so Envoy is not LIVE.
        assert await envoy.ready_state() in {"PRE_INITIALIZING", "INITIALIZING"}
        assert not await envoy.wait_ready(0.2)
    finally:
        await envoy.stop()

    assert not process_exists(pid)
    assert envoy.pid is None
    assert not await envoy.admin_reachable()
    assert envoy.restart_count == 0
    assert envoy.exit_codes == ()


async def test_wait_ready_sees_live_and_envoy_output_goes_to_the_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "envoy.log"
    options = static_options(tmp_path, log_level="info", log_file=log_file)

    async with running(options) as envoy:
        assert await envoy.wait_ready(WAIT)
        assert await envoy.ready_state() == "LIVE"

    assert "starting main dispatch loop" in log_file.read_text()


async def test_killed_envoy_is_restarted(tmp_path: Path) -> None:
    options = ads_options(tmp_path, restart=RestartPolicy(initial_backoff=0.05))

    async with running(options) as envoy:
        assert await envoy.wait_admin(WAIT)
        first_pid = envoy.pid
        assert first_pid is not None

        os.kill(first_pid, signal.SIGKILL)

        async def restarted() -> bool:
            return envoy.restart_count == 1 and envoy.pid not in {None, first_pid}

        assert await eventually(restarted)
        assert await envoy.wait_admin(WAIT)
        assert envoy.exit_codes == (-signal.SIGKILL,)
        assert not process_exists(first_pid)


async def test_two_envoys_run_side_by_side(tmp_path: Path) -> None:
    async with (
        running(ads_options(tmp_path)) as first,
        running(ads_options(tmp_path)) as second,
    ):
        assert await first.wait_admin(WAIT)
        # With hot restart enabled the second Envoy would exit before opening its admin port
        # ("unable to bind domain socket with base_id=0").
        assert await second.wait_admin(WAIT)
        assert first.pid is not None
        assert second.pid is not None
        assert first.restart_count == second.restart_count == 0


async def test_stop_kills_an_envoy_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn"
    stubborn.write_text(
        f"#!{sys.executable}\n"
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn.chmod(0o755)
    log_file = tmp_path / "stubborn.log"
    options = envoy_options(
        tmp_path / "unused.json",
        HostPort("127.0.0.1", free_port()),
        binary=stubborn,
        log_file=log_file,
        stop_timeout=0.2,
    )
    envoy = EnvoyProcess(options)
    await envoy.start()
    pid = envoy.pid
    assert pid is not None

    async def ignoring_sigterm() -> bool:
        return log_file.exists() and "ready" in log_file.read_text()

    assert await eventually(ignoring_sigterm)
    await envoy.stop()

    assert not process_exists(pid)


async def test_start_fails_loudly_for_a_missing_binary(tmp_path: Path) -> None:
    options = envoy_options(
        tmp_path / "b.json", HostPort("127.0.0.1", 1), binary=tmp_path / "no-envoy"
    )

    with pytest.raises(FileNotFoundError):
        await EnvoyProcess(options).start()
