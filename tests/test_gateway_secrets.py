"""The secrets directory behind `credentialName`: layout, what is left out, and live changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from meshpilot.config.secrets import SECRET_KIND, SecretStore, scan_secrets
from meshpilot.model import PushRequest
from meshpilot.model.credential import find_credential
from tests.gateway_certs import KeyPair, issue, make_ca


@pytest.fixture(scope="module")
def pair() -> KeyPair:
    return issue(make_ca("secrets ca"), "gw", ["gw.example.com"])


def test_layout_flat_and_per_namespace(tmp_path: Path, pair: KeyPair) -> None:
    pair.write(tmp_path / "flat")
    pair.write(tmp_path / "edge" / "scoped")
    (tmp_path / "edge" / "scoped" / "ca.crt").write_bytes(pair.cert_pem)
    # Istio's generic-secret names work too.
    pair.write(tmp_path / "generic", cert_name="cert", key_name="key")
    found = scan_secrets(tmp_path)
    assert sorted(found) == ["edge/scoped", "flat", "generic"]
    assert found["flat"].certificate_chain == pair.cert_pem
    assert found["flat"].private_key == pair.key_pem
    assert found["flat"].ca_certificates == b""
    assert found["edge/scoped"].ca_certificates == pair.cert_pem
    assert found["generic"].has_key_pair


def test_lookup_prefers_the_router_namespace(tmp_path: Path, pair: KeyPair) -> None:
    pair.write(tmp_path / "cred")
    pair.write(tmp_path / "edge" / "cred")
    found = scan_secrets(tmp_path)
    assert find_credential(found, "cred", "edge") is found["edge/cred"]
    assert find_credential(found, "cred", "other") is found["cred"]
    assert find_credential(found, "missing", "edge") is None


def test_unusable_credentials_are_left_out(
    tmp_path: Path, pair: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "no-key").mkdir()
    (tmp_path / "no-key" / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "not-pem").mkdir()
    (tmp_path / "not-pem" / "tls.crt").write_text("hello")
    (tmp_path / "not-pem" / "tls.key").write_bytes(pair.key_pem)
    pair.write(tmp_path / ".hidden")
    (tmp_path / "empty").mkdir()
    assert scan_secrets(tmp_path) == {}
    assert "secret no-key" in caplog.text and "without a key" in caplog.text
    assert "secret not-pem" in caplog.text and "not a PEM certificate" in caplog.text


def test_ca_only_credential_is_kept(tmp_path: Path, pair: KeyPair) -> None:
    (tmp_path / "cred-cacert").mkdir()
    (tmp_path / "cred-cacert" / "ca.crt").write_bytes(pair.cert_pem)
    found = scan_secrets(tmp_path)
    assert not found["cred-cacert"].has_key_pair
    assert found["cred-cacert"].ca_certificates == pair.cert_pem


class _Pushes:
    def __init__(self) -> None:
        self.requests: list[PushRequest] = []

    def config_update(self, request: PushRequest) -> None:
        self.requests.append(request)


async def _until(check: Callable[[], object], what: str) -> None:
    """Poll `check` every 20 ms for up to 10 s."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


async def test_store_pushes_when_a_credential_changes(tmp_path: Path, pair: KeyPair) -> None:
    pair.write(tmp_path / "cred")
    pushes = _Pushes()
    store = SecretStore(tmp_path, pushes)
    task = asyncio.create_task(store.run())
    try:
        await asyncio.wait_for(store.wait_synced(), 10)
        assert sorted(store.credentials) == ["cred"]
        assert pushes.requests == []  # the initial load is part of the first snapshot
        other = issue(make_ca("other"), "gw", ["gw.example.com"])
        other.write(tmp_path / "cred")
        await _until(lambda: store.credentials["cred"].certificate_chain == other.cert_pem,
                     "the new certificate")
        await _until(lambda: pushes.requests, "a push")
        assert pushes.requests[0].full and SECRET_KIND in pushes.requests[0].config_kinds
        # A rescan that finds nothing new reports no change (and so pushes nothing).
        assert not store.load()
        (tmp_path / "cred" / "tls.key").unlink()
        await _until(lambda: "cred" not in store.credentials, "the credential gone")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
