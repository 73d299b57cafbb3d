"""Gateway TLS credentials read from a secrets directory (`meshpilot discovery --secrets-dir`).

A Gateway server's `tls.credentialName` names a credential the control plane holds, as a
Kubernetes Secret does for Istio. Here each credential is a directory:

    DIR/<credentialName>/tls.crt           server certificate chain (PEM)
    DIR/<credentialName>/tls.key           its private key (PEM)
    DIR/<credentialName>/ca.crt            optional: CA bundle that verifies client certificates
    DIR/<namespace>/<credentialName>/…     the same, visible only to routers in <namespace>

Istio's generic-secret file names `cert`, `key` and `cacert` are accepted too, and, as in Istio,
the CA for MUTUAL TLS may come from a separate credential named `<credentialName>-cacert`.

The whole directory is rescanned whenever the watcher reports a change, and at least every
`RESCAN_SECONDS` (which also catches atomic symlink swaps as Kubernetes does them for mounted
Secrets); a push follows only when some credential actually changed. A credential that cannot be
used (a certificate without key, text that is not PEM) is logged and left out, so Envoy never
receives a listener it would reject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import watchfiles

from meshpilot.model import Kind, PushRequest, TriggerReason
from meshpilot.model.credential import Credential

log = logging.getLogger("meshpilot.config")

SECRET_KIND = "Secret"
"""The config kind pushes caused by a credential change carry (as Istio's Kubernetes Secret)."""

CERT_FILES = ("tls.crt", "cert")
KEY_FILES = ("tls.key", "key")
CA_FILES = ("ca.crt", "cacert")

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY_END = b"PRIVATE KEY-----"


class Updater(Protocol):
    """Where pushes go: the discovery server's `config_update`."""

    def config_update(self, request: PushRequest) -> None: ...


def _read_first(directory: Path, names: tuple[str, ...]) -> bytes | None:
    for name in names:
        path = directory / name
        if path.is_file():
            return path.read_bytes()
    return None


def read_credential(directory: Path, key: str) -> Credential | None:
    """The credential in `directory`, or None when it holds none (or an unusable one)."""
    try:
        cert = _read_first(directory, CERT_FILES)
        private_key = _read_first(directory, KEY_FILES)
        ca = _read_first(directory, CA_FILES)
    except OSError as error:
        log.warning("secret %s: cannot read %s: %s", key, directory, error)
        return None
    if cert is None and private_key is None and ca is None:
        return None
    problem = ""
    if (cert is None) != (private_key is None):
        problem = "has a certificate without a key or a key without a certificate"
    elif cert is not None and _PEM_CERTIFICATE not in cert:
        problem = f"{CERT_FILES[0]} is not a PEM certificate"
    elif private_key is not None and _PEM_KEY_END not in private_key:
        problem = f"{KEY_FILES[0]} is not a PEM private key"
    elif ca is not None and _PEM_CERTIFICATE not in ca:
        problem = f"{CA_FILES[0]} is not a PEM certificate bundle"
    if problem:
        log.warning("secret %s (%s) %s; it is left out", key, directory, problem)
        return None
    return Credential(key, cert or b"", private_key or b"", ca or b"", str(directory))


def scan_secrets(root: Path) -> dict[str, Credential]:
    """Every credential under `root`, keyed `name` (top level) or `namespace/name`."""
    found: dict[str, Credential] = {}
    if not root.is_dir():
        return found
    for top in sorted(root.iterdir()):
        # Hidden entries are editors' files or Kubernetes' `..data` mount internals.
        if top.name.startswith(".") or not top.is_dir():
            continue
        if (credential := read_credential(top, top.name)) is not None:
            found[top.name] = credential
        for inner in sorted(top.iterdir()):
            if inner.name.startswith(".") or not inner.is_dir():
                continue
            key = f"{top.name}/{inner.name}"
            if (credential := read_credential(inner, key)) is not None:
                found[key] = credential
    return found


class SecretStore:
    """The credentials of one secrets directory, kept current, pushing on change."""

    RESCAN_SECONDS = 1.0
    DEBOUNCE_MS = 50
    RETRY_SECONDS = 1.0

    def __init__(self, root: Path, updater: Updater) -> None:
        self.root = root.absolute()
        self._updater = updater
        self._credentials: dict[str, Credential] = {}
        self._synced = asyncio.Event()

    @property
    def credentials(self) -> Mapping[str, Credential]:
        return self._credentials

    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def load(self) -> bool:
        """Rescan now; True when the credentials changed."""
        current = scan_secrets(self.root)
        if current == self._credentials:
            return False
        self._credentials = current
        return True

    async def run(self) -> None:
        """Load, then follow changes until cancelled."""
        await asyncio.to_thread(self.load)
        log.info("secrets: %d credentials in %s", len(self._credentials), self.root)
        self._synced.set()
        stop = asyncio.Event()
        try:
            await self._watch(stop)
        finally:
            stop.set()

    async def _rescan(self) -> None:
        if await asyncio.to_thread(self.load):
            log.info("secrets changed: %d credentials", len(self._credentials))
            self._updater.config_update(
                PushRequest(
                    full=True,
                    config_kinds=frozenset({SECRET_KIND, Kind.GATEWAY}),
                    reasons=frozenset({TriggerReason.CONFIG}),
                )
            )

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.root.is_dir():
                await self._rescan()
                await asyncio.sleep(self.RETRY_SECONDS)
                continue
            try:
                async for _ in watchfiles.awatch(
                    self.root,
                    watch_filter=None,
                    debounce=self.DEBOUNCE_MS,
                    step=20,
                    stop_event=stop,
                    rust_timeout=int(self.RESCAN_SECONDS * 1000),
                    yield_on_timeout=True,
                    recursive=True,
                ):
                    await self._rescan()
                    if not self.root.is_dir():
                        break
            except (OSError, RuntimeError) as error:
                log.warning("watching secrets in %s failed (%s); retrying", self.root, error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.RETRY_SECONDS)
