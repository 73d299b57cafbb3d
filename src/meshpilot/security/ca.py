"""The mesh certificate authority: a signing certificate and key, from disk or created there.

Two ways to provide it, as Istio's istiod has (`--ca-dir DIR`):

* **Plug-in CA**: `DIR/ca-cert.pem` and `DIR/ca-key.pem` hold the signing certificate (usually an
  intermediate under an organisation's root) and its key; `DIR/root-cert.pem` is the root the
  workloads trust and `DIR/cert-chain.pem` the chain from the signing certificate up to that
  root, as in Istio's `cacerts` secret. Without `root-cert.pem` the signing certificate is the
  root; without `cert-chain.pem` the chain is the signing certificate alone (or nothing, when it
  is the root itself).
* **Self-signed**: when the directory holds neither file, a root is created there on first start
  (ECDSA P-256, ten years) and reused on every later start, so restarting the server never
  invalidates the certificates workloads already have.

Workload certificates are X.509-SVIDs: an empty subject, one critical URI SAN with the SPIFFE id,
client and server authentication, backdated a minute for clock skew. `issue` creates the key
pair itself (the server-side delivery over SDS); `sign_csr` signs a workload's own key for the
identity the caller proved, whatever names the request asks for.
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshpilot.model.security import Identity, IssuedCertificate

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
ROOT_CERT = "root-cert.pem"
CERT_CHAIN = "cert-chain.pem"

ROOT_LIFETIME = datetime.timedelta(days=3650)
BACKDATE = datetime.timedelta(minutes=1)
"""Certificates start a minute early, so a peer whose clock is slightly behind accepts them."""

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class CaError(ValueError):
    """The CA directory holds something unusable; the message names the file."""


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: SigningKey
    chain: bytes
    """PEM certificates appended after a workload certificate: signing cert up to the root."""
    root: bytes
    """PEM trust bundle the workloads verify against."""
    self_signed: bool

    @classmethod
    def load_or_create(cls, directory: Path, trust_domain: str) -> CertificateAuthority:
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        if cert_path.exists() != key_path.exists():
            missing = key_path if cert_path.exists() else cert_path
            raise CaError(f"{missing} is missing: a plug-in CA needs both {CA_CERT} and {CA_KEY}")
        if not cert_path.exists():
            _create_root(directory, trust_domain)
        return cls.load(directory)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        cert_pem = _read(directory / CA_CERT)
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as error:
            raise CaError(f"{directory / CA_CERT}: not a PEM certificate ({error})") from None
        try:
            key = serialization.load_pem_private_key(_read(directory / CA_KEY), password=None)
        except (ValueError, TypeError) as error:
            raise CaError(f"{directory / CA_KEY}: not an unencrypted PEM key ({error})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                          | ed25519.Ed25519PrivateKey):
            raise CaError(f"{directory / CA_KEY}: unsupported key type {type(key).__name__}")
        if _public_bytes(key.public_key()) != _public_bytes(certificate.public_key()):
            raise CaError(f"{directory / CA_KEY} does not belong to {directory / CA_CERT}")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CaError(f"{directory / CA_CERT} is not a CA certificate (basicConstraints)")
        self_signed = certificate.issuer == certificate.subject
        root_path = directory / ROOT_CERT
        root = _read(root_path) if root_path.exists() else cert_pem
        chain_path = directory / CERT_CHAIN
        # Without a chain file, a self-signed signer is the root itself: peers have it already.
        chain = _read(chain_path) if chain_path.exists() else b"" if self_signed else cert_pem
        return cls(certificate, key, chain, root, self_signed)

    def sign(
        self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, identity: Identity,
        ttl: datetime.timedelta,
    ) -> tuple[bytes, int, float]:
        """A workload certificate for `public_key`: (PEM chain, serial, expiry timestamp)."""
        now = datetime.datetime.now(datetime.UTC)
        not_after = min(now + ttl, self.certificate.not_valid_after_utc)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity.spiffe_id)]
                ),
                # An X.509-SVID with an empty subject must mark its SAN critical (RFC 5280).
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=True, content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.certificate.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
        )
        algorithm = None if isinstance(self.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        leaf = builder.sign(self.key, algorithm)
        pem = leaf.public_bytes(serialization.Encoding.PEM) + self.chain
        return pem, serial, not_after.timestamp()

    def issue(self, identity: Identity, ttl: datetime.timedelta) -> IssuedCertificate:
        """A new key pair and its certificate (server-side key generation)."""
        key = ec.generate_private_key(ec.SECP256R1())
        chain, serial, not_after = self.sign(key.public_key(), identity, ttl)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedCertificate(identity, chain, private, serial, not_after)

    def sign_csr(
        self, csr_pem: bytes, identity: Identity, ttl: datetime.timedelta
    ) -> tuple[bytes, int, float]:
        """Sign a workload's certificate request for the identity it proved. The names in the
        request are ignored: the identity comes from authentication, never from the CSR."""
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise CaError("the certificate request's signature is invalid")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CaError(f"unsupported key type {type(public_key).__name__} in the request")
        return self.sign(public_key, identity, ttl)


def _create_root(directory: Path, trust_domain: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
        x509.NameAttribute(NameOID.COMMON_NAME, f"meshpilot root CA {secrets.token_hex(4)}"),
    ])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        _ca_builder(name, name, key.public_key(), now - BACKDATE, now + ROOT_LIFETIME, None)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(directory / CA_KEY, key_pem, 0o600)
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    _write(directory / ROOT_CERT, cert_pem, 0o644)
    # The certificate last: its presence is what marks the directory as initialised.
    _write(directory / CA_CERT, cert_pem, 0o644)


def _ca_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime, not_after: datetime.datetime, path_length: int | None,
) -> x509.CertificateBuilder:
    """A CA certificate's common part: may sign certificates and CRLs, nothing else."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    partial = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    partial.replace(path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CaError(f"{path}: {error.strerror}") from None


def _public_bytes(key: object) -> bytes:
    encoded: bytes = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return encoded


INTERMEDIATE_LIFETIME = datetime.timedelta(days=365)


def create_intermediate(
    root_dir: Path, out_dir: Path, name: str, lifetime: datetime.timedelta = INTERMEDIATE_LIFETIME
) -> CertificateAuthority:
    """A signing CA for one control plane under a shared root, as Istio's per-cluster `cacerts`.

    `root_dir` is a CA directory whose signing certificate is a root (a self-signed `--ca-dir`
    works); `out_dir` receives ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem, to be
    given to that control plane as its `--ca-dir`. Control planes with intermediates of one root
    trust each other's workloads: one mesh, several control planes.
    """
    root = CertificateAuthority.load(root_dir)
    if not root.self_signed:
        raise CaError(f"{root_dir / CA_CERT} is not a root (it is signed by "
                      f"{root.certificate.issuer.rfc4514_string()})")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    organisation = root.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name([
        *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(a.value)) for a in organisation[:1]),
        x509.NameAttribute(NameOID.COMMON_NAME, f"meshpilot intermediate CA {name}"),
    ])
    certificate = (
        _ca_builder(subject, root.certificate.subject, key.public_key(), now - BACKDATE,
                    min(now + lifetime, root.certificate.not_valid_after_utc), 0)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root.certificate.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    cert_pem = certificate.public_bytes(pem)
    _write(out_dir / CA_KEY, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    _write(out_dir / ROOT_CERT, root.root, 0o644)
    _write(out_dir / CERT_CHAIN, cert_pem + root.root, 0o644)
    _write(out_dir / CA_CERT, cert_pem, 0o644)
    return CertificateAuthority.load(out_dir)
