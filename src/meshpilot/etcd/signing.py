"""The workload-signing intermediate published in etcd, for the rotation in `meshpilot.signing`.

    meshpilot discovery --ca-dir ROOT_DIR \
        --replicas-lease 'etcd://…?key=/meshpilot/leader&signingRotation=86400'

The leader publishes the intermediate at `signingKey=` (default `/meshpilot/ca/signing`) as
JSON: certificate, private key, chain, root, who made it and when; every replica watches the key.
The leader's write is one transaction conditioned on the key's revision *and* on the leader key
still holding this replica's identity, so a former leader that has not yet noticed its loss
cannot publish, and two rotations never overwrite each other.

Requirements and limits: `--ca-dir` must hold a self-signed root with its key (a plug-in
intermediate cannot sign further CAs) on every replica that may lead — shared disk, or the same
root copied to each machine; the intermediate's private key is stored in etcd, so that etcd must
be reachable only by the control plane (client TLS and authentication, as for Istio's `cacerts`
Secret).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aetcd import rpc

from meshpilot.etcd.client import ERRORS, describe
from meshpilot.etcd.leader import EtcdLeaderElector
from meshpilot.security.certificates import WorkloadCertificates
from meshpilot.signing import (
    SigningMaterial,
    SigningRotation,
    Unreadable,
    check_rotation,
    make_material,
)

__all__ = [
    "DEFAULT_SIGNING_KEY",
    "EtcdSigningRotation",
    "EtcdSigningStore",
    "SigningMaterial",
    "make_material",
    "signing_rotation",
]

DEFAULT_SIGNING_KEY = "/meshpilot/ca/signing"


class _Described(Exception):
    """An etcd failure with its readable description (gRPC errors print poorly)."""


def _decode(value: bytes, version: str = "") -> SigningMaterial:
    try:
        return SigningMaterial.from_json(value)
    except (ValueError, KeyError, TypeError) as error:
        raise Unreadable(str(error), version) from error


class EtcdSigningStore:
    def __init__(self, elector: EtcdLeaderElector, key: str = DEFAULT_SIGNING_KEY) -> None:
        self.elector = elector
        self.address = elector.address
        self.key = key
        self.where = key
        self.errors: tuple[type[BaseException], ...] = (*ERRORS, _Described)
        self._attempt = 0

    async def read(self) -> tuple[str, SigningMaterial | None]:
        client = self.address.client()
        try:
            await client.connect()
            response = await client.kvstub.Range(rpc.RangeRequest(key=self.key.encode()),
                                                 metadata=client.metadata)
            if not response.kvs:
                return "0", None
            revision = str(int(response.kvs[0].mod_revision))
            return revision, _decode(response.kvs[0].value, revision)
        except ERRORS as error:
            raise _Described(describe(error)) from error
        finally:
            await client.close()

    async def watch(self) -> AsyncGenerator[SigningMaterial | Unreadable, None]:
        # Round-robin over the endpoints from one connection attempt to the next.
        client = self.address.client(self._attempt)
        self._attempt += 1
        stop = asyncio.Event()
        call: Any = None
        try:
            await client.connect()
            response = await client.kvstub.Range(rpc.RangeRequest(key=self.key.encode()),
                                                 metadata=client.metadata)
            for kv in response.kvs:
                yield _material_or_error(kv.value)
            start = int(response.header.revision) + 1

            async def requests() -> AsyncIterator[Any]:
                yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=self.key.encode(), start_revision=start))
                await stop.wait()

            call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
            async for change in call:
                if change.compact_revision or change.canceled:
                    return  # read the key again
                for event in change.events:
                    if event.type == rpc.Event.PUT:
                        yield _material_or_error(event.kv.value)
        except ERRORS as error:
            raise _Described(describe(error)) from error
        finally:
            stop.set()
            if call is not None:
                call.cancel()
            await client.close()

    async def write(self, material: SigningMaterial, version: str) -> bool:
        client = self.address.client()
        try:
            await client.connect()
            committed = await client.kvstub.Txn(rpc.TxnRequest(
                compare=[
                    rpc.Compare(key=self.key.encode(), target=rpc.Compare.MOD,
                                result=rpc.Compare.EQUAL, mod_revision=int(version or 0)),
                    # Fencing: only while the leader key still names this replica.
                    rpc.Compare(key=self.elector.key.encode(), target=rpc.Compare.VALUE,
                                result=rpc.Compare.EQUAL,
                                value=self.elector.identity.encode()),
                ],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(
                    key=self.key.encode(), value=material.to_json()))],
            ), metadata=client.metadata)
            return bool(committed.succeeded)
        except ERRORS as error:
            raise _Described(describe(error)) from error
        finally:
            await client.close()


def _material_or_error(value: bytes) -> SigningMaterial | Unreadable:
    try:
        return _decode(value)
    except Unreadable as error:
        return error


class EtcdSigningRotation(SigningRotation):
    """The rotation with its intermediate at an etcd key."""

    def __init__(
        self,
        elector: EtcdLeaderElector,
        certificates: WorkloadCertificates,
        root_dir: Path,
        *,
        period: float,
        cert_ttl: float,
        changed: Callable[[], None],
        key: str = DEFAULT_SIGNING_KEY,
    ) -> None:
        super().__init__(elector, EtcdSigningStore(elector, key), certificates, root_dir,
                         period=period, cert_ttl=cert_ttl, changed=changed)
        self.key = key


def signing_rotation(
    elector: EtcdLeaderElector,
    certificates: WorkloadCertificates | None,
    ca_dir: Path | None,
    cert_ttl: float,
    changed: Callable[[], None],
) -> EtcdSigningRotation:
    """The rotation the lease address asks for (`signingRotation=`, `signingKey=`), checked."""
    period = elector.address.seconds("signingRotation", 0.0)
    certificates, ca_dir = check_rotation(period, certificates, ca_dir)
    return EtcdSigningRotation(elector, certificates, ca_dir, period=period, cert_ttl=cert_ttl,
                               changed=changed,
                               key=elector.address.param("signingKey") or DEFAULT_SIGNING_KEY)
