"""The agent's own workload certificate: its key made here, signed by the control plane's CA.

As istio-agent does: the private key is generated beside Envoy and never sent anywhere; the CA
gets a certificate request (CSR) for it over `IstioCertificateService/CreateCertificate`. The
first request is proven by a bootstrap token (on the CA port, TLS that checks the server against
the mesh root); every renewal by the current certificate (on the secure xDS port, mutual TLS).
Renewal is due at half the certificate's life, with a fresh key each time; until a renewal
succeeds the current certificate stays in use and the request is retried.

Files in the agent's directory (mode 0700): `key.pem` (0600), `cert-chain.pem`, `root-cert.pem`;
they are what the local SDS server (agent/sds_server.py) gives Envoy.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshpilot.security import csr_protos
from meshpilot.xds.secure_names import DISCOVERY_NAME

log = logging.getLogger("meshpilot.agent")

KEY_FILE = "key.pem"
CHAIN_FILE = "cert-chain.pem"
ROOT_FILE = "root-cert.pem"
RENEW_AT = 0.5
RETRY = 2.0
CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class WorkloadSecret:
    key: bytes
    """PEM PKCS#8; only ever in this process and `key.pem`."""
    chain: bytes
    """PEM: the workload certificate and intermediates (the root is served apart, as ROOTCA)."""
    root: bytes
    not_before: float
    not_after: float
    serial: int

    @property
    def renew_at(self) -> float:
        return self.not_before + (self.not_after - self.not_before) * RENEW_AT


class CertificateError(Exception):
    pass


def make_csr() -> tuple[bytes, bytes]:
    """(PEM private key, PEM CSR). The request names nothing: the CA decides the identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


class AgentCertificates:
    def __init__(
        self, directory: Path, root: bytes, token: str, ca_address: str, secure_address: str,
        ttl: float = 0.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.root = root
        self.token = token
        self.ca_address = ca_address
        self.secure_address = secure_address
        self.ttl = ttl
        self.clock = clock
        self.current: WorkloadSecret | None = None
        self.changed = asyncio.Event()

    async def request(self) -> WorkloadSecret:
        """A new key and its certificate: by the current certificate while it is valid, else
        by the bootstrap token."""
        key, csr = make_csr()
        current = self.current
        request = csr_protos.IstioCertificateRequest(csr=csr.decode(),
                                                     validity_duration=int(self.ttl))
        metadata: tuple[tuple[str, str], ...] = ()
        if current is not None and current.not_after > self.clock():
            credentials = grpc.ssl_channel_credentials(self.root, current.key, current.chain)
            address = self.secure_address
        else:
            credentials = grpc.ssl_channel_credentials(self.root)
            address, metadata = self.ca_address, (("authorization", f"Bearer {self.token}"),)
        options = (("grpc.ssl_target_name_override", DISCOVERY_NAME),)
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            call = channel.unary_unary(
                csr_protos.CREATE_CERTIFICATE,
                request_serializer=csr_protos.IstioCertificateRequest.SerializeToString,
                response_deserializer=csr_protos.IstioCertificateResponse.FromString,
            )
            try:
                response = await call(request, metadata=metadata, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                raise CertificateError(f"certificate request to {address} failed: "
                                       f"{error.code().name}: {error.details()}") from None
        pems = list(response.cert_chain)
        if not pems:
            raise CertificateError("the CA returned no certificate")
        leaf = x509.load_pem_x509_certificate(pems[0].encode())
        if leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != serialization.load_pem_private_key(key, None).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CertificateError("the CA signed another key than ours")
        # Istio's response ends with the root; Envoy gets the root as ROOTCA instead.
        chain = [p for p in pems if p.strip() not in self.root.decode()]
        secret = WorkloadSecret(
            key, "".join(p if p.endswith("\n") else p + "\n" for p in chain).encode(), self.root,
            leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp(),
            leaf.serial_number,
        )
        self._store(secret)
        return secret

    def _store(self, secret: WorkloadSecret) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write(self.directory / KEY_FILE, secret.key, 0o600)
        _write(self.directory / CHAIN_FILE, secret.chain, 0o644)
        _write(self.directory / ROOT_FILE, secret.root, 0o644)
        self.current = secret
        self.changed.set()
        log.info("workload certificate serial %x, valid until %s", secret.serial,
                 datetime.datetime.fromtimestamp(secret.not_after, datetime.UTC).isoformat())

    def load(self) -> WorkloadSecret | None:
        """The certificate a previous run left, while it is still valid: a restarted agent
        renews with it instead of needing its (maybe expired) bootstrap token again."""
        try:
            key = (self.directory / KEY_FILE).read_bytes()
            chain = (self.directory / CHAIN_FILE).read_bytes()
            leaf = x509.load_pem_x509_certificate(chain)
            private = serialization.load_pem_private_key(key, None)
        except (OSError, ValueError, TypeError):
            return None
        if leaf.not_valid_after_utc.timestamp() <= self.clock():
            return None
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            return None  # a run stopped between writing the new key and its certificate
        self.current = WorkloadSecret(
            key, chain, self.root, leaf.not_valid_before_utc.timestamp(),
            leaf.not_valid_after_utc.timestamp(), leaf.serial_number)
        return self.current

    async def first(self) -> WorkloadSecret:
        """A fresh certificate (renewing one left by a previous run when there is one),
        retried until the control plane answers."""
        self.load()
        while True:
            try:
                return await self.request()
            except CertificateError as error:
                if self.current is not None:
                    # E.g. a CA that changed since: start over with the token.
                    log.warning("%s; trying the bootstrap token", error)
                    self.current = None
                    continue
                log.warning("%s; retrying", error)
                await asyncio.sleep(RETRY)

    async def run(self, renewed: Callable[[WorkloadSecret], None]) -> None:
        """Renew at half-life until cancelled, calling `renewed` with each new secret."""
        while True:
            current = self.current
            assert current is not None
            await asyncio.sleep(max(0.0, current.renew_at - self.clock()))
            try:
                renewed(await self.request())
            except CertificateError as error:
                log.warning("renewal failed, keeping the current certificate: %s", error)
                await asyncio.sleep(RETRY)


def _write(path: Path, data: bytes, mode: int) -> None:
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    partial.replace(path)
