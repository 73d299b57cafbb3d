"""End to end: the CSR flow and the secure xDS port, with real Envoys.

One mesh for the module: `meshpilot discovery --ca-dir` with 20 s certificates, its secure xDS
port and its CA port on free ports, and two sidecars started as agents
(`meshpilot proxy sidecar --token-file … --root-cert …`) on the secure port:

    client   default/sa/client   calls server.example through its sidecar
    server   default/sa/server   server.example (over Delta xDS)
    ingress  default/sa/ingress  an ingress gateway (`meshpilot proxy router`) routing
                                 server.example on port 8080 to the server

Each agent makes its key, gets it signed with its bootstrap token, serves it to its Envoy over
SDS on a Unix socket, and renews it with its certificate. The test itself plays a proxy holding
the client's identity to check that it gets nothing of the server's.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from meshpilot.agent.certificates import make_csr
from meshpilot.demo.mesh import Mesh, Workload, free_port, get_json, http_request, wait_until
from meshpilot.model.security import Identity
from meshpilot.security import csr_protos
from meshpilot.security.ca import CertificateAuthority
from meshpilot.xds.secure_names import DISCOVERY_NAME

pytestmark = pytest.mark.e2e

PORT = 9080
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: server, namespace: default}
spec:
  hosts: [server.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: server}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: through-ingress, namespace: default}
spec:
  hosts: [server.example]
  gateways: [ingress]
  http:
  - route: [{destination: {host: server.example, port: {number: 9080}}}]
"""
GATEWAY_PORT = 8080


@dataclass
class CsrMesh:
    mesh: Mesh
    ca_dir: Path
    secure_address: str
    ca_address: str

    def security_dir(self, name: str) -> Path:
        return self.mesh.workdir / "proxies" / name / "security"

    def status(self) -> int:
        address = f"{self.mesh.workloads['client'].outbound_bind}:{PORT}"
        return http_request(address, "server.example")[0]

    def stat(self, workload: str, suffix: str) -> int:
        stats = get_json(f"http://{self.mesh.workloads[workload].admin_address}/stats?format=json")
        return sum(int(s.get("value") or 0) for s in stats["stats"]
                   if "name" in s and s["name"].endswith(suffix))

    def credentials(self, identity: Identity) -> grpc.ChannelCredentials:
        """Client credentials of a proxy holding a mesh certificate for `identity`."""
        ca = CertificateAuthority.load(self.ca_dir)
        issued = ca.issue(identity, datetime.timedelta(hours=1))
        return grpc.ssl_channel_credentials(ca.root, issued.private_key, issued.certificate_chain)

    def peer_serial(self, name: str) -> int:
        """The serial of the certificate the workload's inbound listener presents."""
        ca = CertificateAuthority.load(self.ca_dir)
        issued = ca.issue(Identity("cluster.local", "test", "prober"), datetime.timedelta(hours=1))
        cert, key = self.mesh.workdir / "prober.crt", self.mesh.workdir / "prober.key"
        cert.write_bytes(issued.certificate_chain)
        key.write_bytes(issued.private_key)
        context = ssl.create_default_context(cafile=str(self.ca_dir / "root-cert.pem"))
        context.check_hostname = False
        context.load_cert_chain(cert, key)
        with socket.create_connection((self.mesh.workloads[name].ip, PORT), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture(scope="module")
def csr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CsrMesh]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("csr")
    mesh = Mesh(workdir, prefix=prefix)
    ca_dir = workdir / "ca"
    secure_address = f"127.0.0.1:{free_port()}"
    ca_address = f"127.0.0.1:{free_port()}"
    workloads = [
        Workload("client", mesh.address(10), {"app": "client"}, mesh.address(1)),
        # Delta xDS on the secure port too.
        Workload("server", mesh.address(20), {"app": "server"}, mesh.address(20),
                 xds_variant="delta"),
    ]
    documents = [CONFIG]
    for w in workloads:
        documents.append(f"""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {w.name}, namespace: default}}
spec:
  address: {w.ip}
  labels: {json.dumps(w.labels)}
  serviceAccount: {w.name}
""")
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    mesh.write_config("mesh.yaml", "\n---\n".join(documents))
    mesh.start_discovery(["--debounce-after", "0.05", "--ca-dir", str(ca_dir), "--cert-ttl", "20",
                          "--secure-xds-address", secure_address, "--ca-address", ca_address])
    try:
        mesh.wait_ready()
        for w in workloads:
            token = workdir / f"{w.name}.token"
            subprocess.run(
                [sys.executable, "-m", "meshpilot.cli.main", "token", "create", "--ca-dir",
                 str(ca_dir), "--namespace", "default", "--service-account", w.name,
                 "--ttl", "600", "-o", str(token)],
                check=True,
            )
            w.service_account = w.name
            w.discovery_address = secure_address
            w.proxy_args = ("--token-file", str(token), "--root-cert",
                            str(ca_dir / "root-cert.pem"), "--ca-address", ca_address)
            mesh.start_workload(w)
        # An ingress gateway started as an agent as well: its key, its CSR, the secure port.
        router = Workload("ingress", mesh.address(30), {"istio": "ingressgateway"},
                          mesh.address(30))
        token = workdir / "ingress.token"
        subprocess.run(
            [sys.executable, "-m", "meshpilot.cli.main", "token", "create", "--ca-dir",
             str(ca_dir), "--namespace", "default", "--service-account", "ingress",
             "--ttl", "600", "-o", str(token)],
            check=True,
        )
        router.service_account = "ingress"
        router.discovery_address = secure_address
        router.proxy_args = ("--token-file", str(token), "--root-cert",
                             str(ca_dir / "root-cert.pem"), "--ca-address", ca_address)
        mesh.start_router(router)
        for w in [*workloads, router]:
            mesh.wait_envoy_ready(w.name)
        yield CsrMesh(mesh, ca_dir, secure_address, ca_address)
    finally:
        mesh.stop()


def matching_pair(directory: Path) -> tuple[bytes, list[x509.Certificate]] | None:
    """The agent's key and certificate chain, or None while a renewal has written the new key
    but not yet its certificate."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_pem = (directory / "key.pem").read_bytes()
    chain = x509.load_pem_x509_certificates((directory / "cert-chain.pem").read_bytes())
    key = serialization.load_pem_private_key(key_pem, None)
    same = chain[0].public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    return (key_pem, chain) if same else None


def test_agents_make_their_keys_and_get_them_signed(csr: CsrMesh) -> None:
    for name in ("client", "server"):
        directory = csr.security_dir(name)
        key_pem, chain = wait_until(partial(matching_pair, directory), 10,
                                    f"{name}'s key and certificate to match")
        assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
        sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://cluster.local/ns/default/sa/{name}"]
        # The private key exists in the agent's directory only: not in the server's CA
        # directory, logs or anywhere else of the mesh, and the server never logged a key.
        body = b"".join(key_pem.splitlines()[1:-1])
        for path in csr.mesh.workdir.rglob("*"):
            if path.is_file() and directory not in path.parents:
                assert body not in b"".join(path.read_bytes().splitlines()), path
    log = (csr.mesh.log_dir / "discovery.log").read_text()
    assert "PRIVATE KEY" not in log
    # The server signed their requests and never made a key pair of its own for them (its
    # server-side issuance logs "issued a certificate for …").
    for name in ("client", "server"):
        assert f"signed a certificate request for spiffe://cluster.local/ns/default/sa/{name}" \
            in log
        assert f"issued a certificate for spiffe://cluster.local/ns/default/sa/{name}" not in log
    assert not any("key" in p.name and p.name != "ca-key.pem" and p.name != "token-key"
                   for p in csr.ca_dir.iterdir())


def test_envoys_use_the_secure_port_and_local_sds(csr: CsrMesh) -> None:
    # The xDS connection is TLS (the handshake counted on the xds-grpc cluster) and the secrets
    # come from the agent's socket, the sds-grpc cluster.
    for name in ("client", "server"):
        assert csr.stat(name, "cluster.xds-grpc.ssl.handshake") >= 1
        dump = get_json(f"http://{csr.mesh.workloads[name].admin_address}/config_dump"
                        "?resource=dynamic_active_secrets")
        names = {c["name"] for c in dump["configs"]}
        assert names >= {"default", "ROOTCA"}


def test_mtls_between_csr_sidecars(csr: CsrMesh) -> None:
    handshakes = csr.stat("server", "ssl.handshake")
    wait_until(lambda: csr.status() == 200, 20, "client → server over mTLS")
    assert csr.stat("server", "ssl.handshake") > handshakes


def test_rotation_without_failed_requests(csr: CsrMesh) -> None:
    first = csr.peer_serial("server")
    statuses: list[int] = []

    def rotated() -> bool:
        statuses.append(csr.status())
        return csr.peer_serial("server") != first

    wait_until(rotated, 40, "the server's agent to renew its certificate", interval=0.05)
    statuses.extend(csr.status() for _ in range(20))
    assert set(statuses) == {200}, statuses
    # The new certificate is the one the agent wrote, made for a new key.
    chain = x509.load_pem_x509_certificates(
        (csr.security_dir("server") / "cert-chain.pem").read_bytes())
    wait_until(lambda: csr.peer_serial("server") == x509.load_pem_x509_certificates(
        (csr.security_dir("server") / "cert-chain.pem").read_bytes())[0].serial_number, 20,
        "Envoy serving the agent's current certificate")
    assert chain


def _node(name: str, namespace: str, account: str) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"NAMESPACE": namespace, "SERVICE_ACCOUNT": account, "WORKLOAD_NAME": name,
                     "LABELS": {"app": name}})
    return base_pb2.Node(id=f"sidecar~127.0.0.9~{name}.{namespace}~{namespace}.svc.cluster.local",
                         metadata=metadata)


async def _ads(address: str, credentials: grpc.ChannelCredentials,
               requests: list[Any]) -> Any:
    """The first response to `requests` on one ADS stream (or the error ending it)."""
    options = (("grpc.ssl_target_name_override", DISCOVERY_NAME),)
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        stream = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        call = stream(timeout=10)
        for request in requests:
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                break  # the server ended the stream already: its status is read below
        response = await call.read()
        if response is grpc.aio.EOF:
            await call.wait_for_connection()
            raise grpc.aio.AioRpcError(await call.code(), await call.initial_metadata(),
                                       await call.trailing_metadata(), await call.details())
        return response


def _refusal(address: str, credentials: grpc.ChannelCredentials, requests: list[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(_ads(address, credentials, requests))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value
    return str(error.value.details())


def test_identity_a_cannot_get_config_or_secrets_of_b(csr: CsrMesh) -> None:
    as_client = csr.credentials(Identity("cluster.local", "default", "client"))
    own = _node("client", "default", "client")
    # Positive control: A's own node gets its config.
    response = asyncio.run(_ads(csr.secure_address, as_client,
                                [discovery_pb2.DiscoveryRequest(node=own, type_url=CLUSTER)]))
    assert response.type_url == CLUSTER and response.resources
    # Node metadata claiming B's service account, B's namespace, or B's workload (whose
    # registry account is B's) over a connection authenticated as A: refused.
    for claim in (_node("client", "default", "server"), _node("client", "other", "client"),
                  _node("server", "default", "")):
        details = _refusal(csr.secure_address, as_client,
                           [discovery_pb2.DiscoveryRequest(node=claim, type_url=CLUSTER)])
        assert "spiffe://cluster.local/ns/default/sa/client" in details
    # Secrets: B's by its SPIFFE id, or a workload key at all — the server holds none.
    for name in ("spiffe://cluster.local/ns/default/sa/server", "default"):
        details = _refusal(csr.secure_address, as_client, [discovery_pb2.DiscoveryRequest(
            node=own, type_url=SECRET, resource_names=[name])])
        assert name in details
    # The root is public: A gets it.
    response = asyncio.run(_ads(csr.secure_address, as_client, [discovery_pb2.DiscoveryRequest(
        node=own, type_url=SECRET, resource_names=["ROOTCA"])]))
    assert response.type_url == SECRET and len(response.resources) == 1


def test_certificate_requests_are_for_the_proven_identity(csr: CsrMesh) -> None:
    _, request_pem = make_csr()

    async def create(address: str, credentials: grpc.ChannelCredentials,
                     metadata: tuple[tuple[str, str], ...] = ()) -> Any:
        options = (("grpc.ssl_target_name_override", DISCOVERY_NAME),)
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            call = channel.unary_unary(
                csr_protos.CREATE_CERTIFICATE,
                request_serializer=csr_protos.IstioCertificateRequest.SerializeToString,
                response_deserializer=csr_protos.IstioCertificateResponse.FromString,
            )
            return await call(csr_protos.IstioCertificateRequest(csr=request_pem.decode()),
                              metadata=metadata, timeout=10)

    # Renewal-style: authenticated by A's certificate, the certificate is A's.
    response = asyncio.run(create(
        csr.secure_address, csr.credentials(Identity("cluster.local", "default", "client"))))
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/client"]
    root = (csr.ca_dir / "root-cert.pem").read_bytes()
    assert response.cert_chain[-1].strip() == root.decode().strip()
    # Without a certificate or a valid token: refused.
    server_only = grpc.ssl_channel_credentials(root)
    for metadata in ((), (("authorization", "Bearer forged.token"),)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            asyncio.run(create(csr.ca_address, server_only, metadata))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # ADS on the CA port (no client certificate): refused.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        asyncio.run(_ads(csr.ca_address, server_only, [discovery_pb2.DiscoveryRequest(
            node=_node("client", "default", "client"), type_url=CLUSTER)]))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_ingress_gateway_as_agent_reaches_the_mesh_with_its_own_certificate(
    csr: CsrMesh,
) -> None:
    # The router made its key and had it signed with its token, gets config on the secure
    # port and its secrets over the agent's SDS, and calls the server over mTLS with it.
    directory = csr.security_dir("ingress")
    _, chain = wait_until(partial(matching_pair, directory), 10,
                          "the gateway's key and certificate to match")
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/ingress"]
    assert csr.stat("ingress", "cluster.xds-grpc.ssl.handshake") >= 1
    dump = get_json(f"http://{csr.mesh.workloads['ingress'].admin_address}/config_dump"
                    "?resource=dynamic_active_secrets")
    assert {c["name"] for c in dump["configs"]} >= {"default", "ROOTCA"}
    gateway = f"{csr.mesh.workloads['ingress'].outbound_bind}:{GATEWAY_PORT}"
    handshakes = csr.stat("server", "ssl.handshake")
    wait_until(lambda: http_request(gateway, "server.example")[0] == 200, 20,
               "ingress → server over mTLS")
    assert csr.stat("server", "ssl.handshake") > handshakes
    log = (csr.mesh.log_dir / "discovery.log").read_text()
    assert "signed a certificate request for spiffe://cluster.local/ns/default/sa/ingress" in log
