"""The workload-signing intermediate published in a Kubernetes Secret, for the rotation in
`meshpilot.signing`.

    meshpilot discovery --ca-dir ROOT_DIR \
        --replicas-lease 'kube://?namespace=istio-system&name=LEASE&signingRotation=86400'

The leader keeps the intermediate in the Secret `signingSecret=` (default
`meshpilot-signing-ca`) in the Lease's namespace, laid out as Istio's `cacerts`: `ca-cert.pem`,
`ca-key.pem`, `cert-chain.pem`, `root-cert.pem`, with who made it and when in annotations
(`meshpilot.io/signing-by`, `meshpilot.io/signing-created`, RFC 3339). Every replica lists and
watches that one Secret (field selector on its name) and signs with what it holds.

The leader creates the Secret (409 AlreadyExists: another one was faster) or replaces it with the
`resourceVersion` it read (409 Conflict: someone wrote since), so two rotations never overwrite
each other. Kubernetes has no transaction across objects, so the fencing is weaker than etcd's:
right before writing, the leader checks that it still leads and that the Lease still names it;
a replica that lost the Lease in the short gap between that read and the write could still
publish once — harmless, as it is a valid intermediate under the same root, and the new leader
rotates from it on the period.

RBAC: `get`, `list`, `watch`, `create`, `update` on secrets in the Lease's namespace
(`meshpilot install manifests --signing-rotation`). Whoever can read that Secret can sign
workload certificates for the mesh: keep that namespace to the control plane.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from meshpilot.kube.client import (
    LEASES,
    SECRETS,
    KubeApiError,
    KubeClient,
    KubeOptions,
    Object,
)
from meshpilot.kube.leader import LeaderElector, micro_time
from meshpilot.security.ca import CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT
from meshpilot.security.certificates import WorkloadCertificates
from meshpilot.signing import SigningMaterial, SigningRotation, Unreadable, check_rotation

DEFAULT_SIGNING_SECRET = "meshpilot-signing-ca"
CREATED = "meshpilot.io/signing-created"
BY = "meshpilot.io/signing-by"
_FIELDS = {CA_CERT: "certificate", CA_KEY: "key", CERT_CHAIN: "chain", ROOT_CERT: "root"}


def secret_data(material: SigningMaterial) -> dict[str, str]:
    return {file: base64.b64encode(getattr(material, attribute).encode()).decode()
            for file, attribute in _FIELDS.items()}


def material_of(secret: Object) -> SigningMaterial:
    """The signing material a Secret holds; `Unreadable` (with its resourceVersion) if none."""
    meta = secret.get("metadata") or {}
    version = str(meta.get("resourceVersion") or "")
    annotations = meta.get("annotations") or {}
    data = secret.get("data") or {}
    try:
        values = {attribute: base64.b64decode(data[file], validate=True).decode()
                  for file, attribute in _FIELDS.items()}
        created = datetime.datetime.strptime(annotations[CREATED], "%Y-%m-%dT%H:%M:%S.%fZ")
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise Unreadable(f"{type(error).__name__}: {error}", version) from error
    return SigningMaterial(**values, created=created.replace(tzinfo=datetime.UTC).timestamp(),
                           by=str(annotations.get(BY, "")))


def _material_or_error(secret: Object) -> SigningMaterial | Unreadable:
    try:
        return material_of(secret)
    except Unreadable as error:
        return error


class KubeSigningStore:
    def __init__(
        self,
        elector: LeaderElector,
        name: str = DEFAULT_SIGNING_SECRET,
        *,
        connect: Callable[[KubeOptions, str], Awaitable[KubeClient]] = KubeClient.connect,
    ) -> None:
        self.elector = elector
        self.name = name
        self.namespace = elector.namespace
        self.where = f"secret {self.namespace}/{name}"
        self.errors: tuple[type[BaseException], ...] = (OSError, KubeApiError)
        self._connect = connect

    async def _client(self) -> KubeClient:
        return await self._connect(self.elector.options, self.elector.identity)

    async def read(self) -> tuple[str, SigningMaterial | None]:
        async with await self._client() as client:
            secret = await client.get(SECRETS, self.namespace, self.name)
        if secret is None:
            return "", None
        return str(secret["metadata"].get("resourceVersion") or ""), material_of(secret)

    async def watch(self) -> AsyncGenerator[SigningMaterial | Unreadable, None]:
        selector = f"metadata.name={self.name}"
        async with await self._client() as client:
            listed = await client.list(SECRETS, self.namespace, field_selector=selector)
            for secret in listed.items:
                yield _material_or_error(secret)
            try:
                async for event in client.watch(SECRETS, listed.resource_version,
                                                self.namespace, field_selector=selector):
                    # DELETED: keep signing with the last one; the leader publishes anew.
                    if event.type in ("ADDED", "MODIFIED"):
                        yield _material_or_error(event.object)
            except KubeApiError as error:
                if error.status != 410:
                    raise
                # Expired: list again.

    async def write(self, material: SigningMaterial, version: str) -> bool:
        async with await self._client() as client:
            if not await self._still_leading(client):
                return False
            secret: Object = {
                "apiVersion": SECRETS.api_version, "kind": SECRETS.kind, "type": "Opaque",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "meshpilot"},
                             "annotations": {CREATED: micro_time(material.created),
                                             BY: material.by}},
                "data": secret_data(material),
            }
            try:
                if version:
                    secret["metadata"]["resourceVersion"] = version
                    await client.replace(SECRETS, secret)
                else:
                    await client.create(SECRETS, secret)
            except KubeApiError as error:
                if error.status == 409:  # written since it was read (or created meanwhile)
                    return False
                raise
            return True

    async def _still_leading(self, client: KubeClient) -> bool:
        """Fencing, as far as Kubernetes allows: this replica leads and the Lease names it."""
        if not self.elector.is_leader:
            return False
        lease = await client.get(LEASES, self.elector.namespace, self.elector.name)
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
        return bool(holder == self.elector.identity and self.elector.is_leader)


class KubeSigningRotation(SigningRotation):
    """The rotation with its intermediate in a Secret in the Lease's namespace."""

    def __init__(
        self,
        elector: LeaderElector,
        certificates: WorkloadCertificates,
        root_dir: Path,
        *,
        period: float,
        cert_ttl: float,
        changed: Callable[[], None],
        secret: str = DEFAULT_SIGNING_SECRET,
        connect: Callable[[KubeOptions, str], Awaitable[KubeClient]] = KubeClient.connect,
    ) -> None:
        self.kube_store = KubeSigningStore(elector, secret, connect=connect)
        super().__init__(elector, self.kube_store, certificates, root_dir, period=period,
                         cert_ttl=cert_ttl, changed=changed)


def kube_signing_rotation(
    elector: LeaderElector,
    certificates: WorkloadCertificates | None,
    ca_dir: Path | None,
    cert_ttl: float,
    changed: Callable[[], None],
) -> KubeSigningRotation:
    """The rotation the lease address asks for (`signingRotation=`, `signingSecret=`), checked."""
    period = elector.options.seconds("signingRotation", 0.0)
    certificates, ca_dir = check_rotation(period, certificates, ca_dir)
    return KubeSigningRotation(
        elector, certificates, ca_dir, period=period, cert_ttl=cert_ttl, changed=changed,
        secret=elector.options.param("signingSecret") or DEFAULT_SIGNING_SECRET)
