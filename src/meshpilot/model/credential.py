"""A TLS credential a Gateway server names by `credentialName`, as read from the secrets dir."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CA_SUFFIX = "-cacert"
"""Istio's convention for a separate CA credential of a MUTUAL server."""


@dataclass(frozen=True, slots=True)
class Credential:
    name: str
    """The key it is found under: `name` or `namespace/name`."""
    certificate_chain: bytes = b""
    """PEM server certificate chain (`tls.crt`); empty for a CA-only credential."""
    private_key: bytes = b""
    """PEM private key (`tls.key`)."""
    ca_certificates: bytes = b""
    """PEM CA bundle that verifies client certificates (`ca.crt`); empty when absent."""
    source: str = ""
    """The directory it was read from, for messages."""

    @property
    def has_key_pair(self) -> bool:
        return bool(self.certificate_chain and self.private_key)


def find_credential(
    secrets: Mapping[str, Credential], name: str, namespace: str
) -> Credential | None:
    """`credentialName` as a router in `namespace` sees it: its namespace's first, then global.

    Istio looks credentials up in the gateway workload's namespace; the top-level directory
    stands for secrets every router may use.
    """
    return secrets.get(f"{namespace}/{name}") or secrets.get(name)
