"""`precheck` (before starting) and `verify-install` (after): ✔/✘ checklists.

precheck builds the server's inputs exactly as `meshpilot discovery` would (`build_discovery`),
loads the config directories once and asks each registry for its services, so "valid" means
what the server itself would accept. verify-install asks a running server over xDS: it answers
only once synced, so an answer means ready; then config errors and every proxy's sync status.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshpilot.agent.envoy_process import find_envoy_binary
from meshpilot.agent.node import parse_host_port
from meshpilot.app import build_discovery
from meshpilot.config.filestore import FileConfigStore, format_error
from meshpilot.diagnostics import status, xdsclient
from meshpilot.settings import DiscoverySettings
from meshpilot.xds.discovery import DiscoveryServer

OK_MARK = "✔"
FAIL_MARK = "✘"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def render(self) -> str:
        mark = OK_MARK if self.ok else FAIL_MARK
        return f"{mark} {self.name}" + (f": {self.detail}" if self.detail else "")


def render(checks: Iterable[Check]) -> str:
    return "".join(c.render() + "\n" for c in checks)


# Before --------------------------------------------------------------------------------------


def envoy_check() -> Check:
    try:
        binary = find_envoy_binary()
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (FileNotFoundError, OSError, subprocess.TimeoutExpired) as error:
        return Check("Envoy binary", False, str(error))
    # `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`
    found = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)", result.stdout + result.stderr)
    if result.returncode != 0 or found is None:
        return Check("Envoy binary", False, f"{binary} --version failed: {result.stderr.strip()}")
    return Check("Envoy binary", True, f"Envoy {found.group(1)} at {binary}")


def port_check(role: str, address: str) -> Check:
    try:
        host, port = parse_host_port(address)
    except ValueError as error:
        return Check(f"{role} port", False, str(error))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as error:
            return Check(f"{role} port", False, f"{address} is not free ({error.strerror})")
    return Check(f"{role} port", True, f"{address} is free")


def config_checks(config_dirs: list[Path]) -> list[Check]:
    checks = []
    for directory in config_dirs:
        if not directory.is_dir():
            checks.append(Check(f"config directory {directory}", False, "not a directory"))
            return checks
        try:
            next(directory.iterdir(), None)
        except OSError as error:
            checks.append(Check(f"config directory {directory}", False, str(error)))
            return checks
        checks.append(Check(f"config directory {directory}", True, "readable"))
    discovery = asyncio.run(_load(config_dirs))
    store = discovery.store
    errors = store.errors()
    checks.append(
        Check(
            "config valid",
            not errors,
            f"{len(store.all())} resources"
            if not errors
            else f"{len(errors)} rejected document(s):\n"
            + "\n".join(f"    {format_error(e)}" for e in errors),
        )
    )
    for registry in getattr(discovery.registry, "registries", [discovery.registry]):
        synced = registry.has_synced()
        checks.append(
            Check(
                f"registry {registry.provider}",
                synced,
                f"{len(registry.services())} services" if synced else "not reachable",
            )
        )
    return checks


async def _load(config_dirs: list[Path]) -> DiscoveryServer:
    # Loading fires the server's handlers, which queue pushes on the running loop.
    discovery = build_discovery(DiscoverySettings(config_dirs=tuple(config_dirs)))
    # The files sit under the layers the server adds (translation of SMI and Gateway API).
    store: object = discovery.store
    while not isinstance(store, FileConfigStore):
        inner = getattr(store, "inner", None)
        if inner is None:
            raise TypeError(f"no file store under {type(discovery.store).__name__}")
        store = inner
    store.load()
    return discovery


def precheck(config_dirs: list[Path], addresses: dict[str, str]) -> list[Check]:
    return [
        envoy_check(),
        *(port_check(role, address) for role, address in addresses.items()),
        *config_checks(config_dirs),
    ]


# After ---------------------------------------------------------------------------------------


def verify_install(xds_address: str, timeout: float, min_proxies: int = 1) -> list[Check]:
    try:
        report = xdsclient.sync_report(xds_address, timeout=timeout)
    except xdsclient.ServerError as error:
        return [Check("discovery server ready", False, str(error))]
    plane = report.control_plane
    checks = [Check("discovery server ready", True, f"{plane.id} {plane.version} at {xds_address}")]
    try:
        errors = xdsclient.topic(xds_address, "config_errors", timeout)
    except xdsclient.ServerError as error:
        errors = [{"text": str(error)}]
    checks.append(
        Check(
            "no config errors",
            not errors,
            "\n".join(f"    {e['text']}" for e in errors) if errors else "",
        )
    )
    configs = status.select(report)
    checks.append(
        Check(
            "proxies connected",
            len(configs) >= min_proxies,
            f"{len(configs)} connected"
            + ("" if len(configs) >= min_proxies else f", expected at least {min_proxies}"),
        )
    )
    behind = [
        f"    {c.node.id} {short}: {cell.status}" + (f" ({cell.error})" if cell.error else "")
        for c in configs
        for short, cell in status.type_cells(c).items()
        if cell.status not in ("SYNCED", "IGNORED")
    ]
    checks.append(
        Check(
            "proxies SYNCED",
            not behind,
            f"{len(configs)} of {len(configs)}" if not behind else "\n" + "\n".join(behind),
        )
    )
    return checks
