"""The CSR flow's parts: bootstrap tokens, Istio's certificate API, who may have which
certificate and config on the secure port, the agent's SDS server and bootstrap, and the TLS
contexts that name the agent's SDS. The whole flow with real Envoys is tests/e2e/test_csr_flow.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, struct_pb2

from meshpilot.agent.bootstrap import build_bootstrap
from meshpilot.agent.certificates import AgentCertificates, WorkloadSecret, make_csr
from meshpilot.agent.node import HostPort, NodeInfo
from meshpilot.agent.sds_server import SECRET_TYPE, SdsServer
from meshpilot.envoy import names, sds
from meshpilot.envoy.generators import GENERATORS
from meshpilot.model.security import Identity
from meshpilot.security import csr_protos
from meshpilot.security.ca import CertificateAuthority, create_intermediate
from meshpilot.security.csr_service import (
    AuthenticationError,
    CertificateService,
    certificate_identity,
    parse_spiffe,
)
from meshpilot.security.tokens import (
    TokenError,
    create_token,
    load_or_create_key,
    verify_token,
)
from meshpilot.xds.secure import Refused, check_node, check_secrets, start_secure_server
from tests.envoy_check import envoy_rejects
from tests.simulation import sidecar
from tests.test_security import REVIEWS, reviews_proxy, runtime, snapshot  # noqa: F401

A = Identity("cluster.local", "default", "client")
B = Identity("cluster.local", "default", "reviews")
HOUR = datetime.timedelta(hours=1)


def sans(pem: bytes | str) -> list[str]:
    leaf = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    return list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                .get_values_for_type(x509.UniformResourceIdentifier))


# --- tokens ------------------------------------------------------------------------------------


def test_token_proves_its_identity_until_it_expires(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert load_or_create_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / "token-key").stat().st_mode) == 0o600
    token = create_token(key, A, ttl=60, now=1000)
    assert verify_token(key, token, now=1059) == A
    with pytest.raises(TokenError, match="expired"):
        verify_token(key, token, now=1060)


def test_forged_and_malformed_tokens_are_refused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    token = create_token(key, A)
    payload, mac = token.split(".")
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=="))
    claims["sa"] = "reviews"
    forged = __import__("base64").urlsafe_b64encode(json.dumps(claims).encode()).decode()
    for bad in (f"{forged.rstrip('=')}.{mac}", create_token(b"another key" * 3, A)):
        with pytest.raises(TokenError, match="signature"):
            verify_token(key, bad)
    for bad in ("", "nodot", "!!.!!"):
        with pytest.raises(TokenError):
            verify_token(key, bad)


# --- the certificate API -----------------------------------------------------------------------


def test_istio_certificate_messages_have_istios_field_numbers() -> None:
    request = csr_protos.IstioCertificateRequest.DESCRIPTOR
    assert {f.name: f.number for f in request.fields} == {
        "csr": 1, "validity_duration": 3, "metadata": 4}
    assert request.fields_by_name["metadata"].message_type.full_name == "google.protobuf.Struct"
    response = csr_protos.IstioCertificateResponse.DESCRIPTOR
    assert {f.name: f.number for f in response.fields} == {"cert_chain": 1}
    assert response.full_name == "istio.v1.auth.IstioCertificateResponse"


@pytest.fixture
def service(tmp_path: Path) -> CertificateService:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    return CertificateService(ca, load_or_create_key(tmp_path / "ca"), "cluster.local", HOUR)


def _csr_asking_for(identity: Identity) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(identity.spiffe_id)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_identity_comes_from_the_proof_never_from_the_csr(service: CertificateService) -> None:
    token = create_token(service.token_key, A)
    identity = service.authenticate(None, {"authorization": f"Bearer {token}"})
    chain = service.sign(identity, _csr_asking_for(B), 0)
    assert sans(chain[0]) == [A.spiffe_id]
    assert chain[-1].strip() == service.ca.root.decode().strip()  # Istio's order: root last
    # A certificate identity is the proof when there is one, whatever token comes along.
    other = create_token(service.token_key, B)
    assert service.authenticate(A, {"authorization": f"Bearer {other}"}) == A


def test_certificate_requests_without_a_valid_proof_are_refused(
    service: CertificateService,
) -> None:
    for metadata in ({}, {"authorization": "Basic x"}, {"authorization": "Bearer a.b"},
                     {"authorization": "Bearer " + create_token(b"k" * 32, A)}):
        with pytest.raises(AuthenticationError):
            service.authenticate(None, metadata)
    foreign = Identity("evil.example", "default", "client")
    with pytest.raises(AuthenticationError, match="trust domain"):
        service.authenticate(foreign, {})


def test_requested_validity_is_capped_by_the_server(service: CertificateService) -> None:
    for asked, expected in ((60, 60), (10 * 3600, 3600), (0, 3600)):
        leaf = x509.load_pem_x509_certificate(service.sign(A, _csr_asking_for(A), asked)[0]
                                              .encode())
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        # Certificates are backdated a minute for clock skew.
        assert abs(lifetime.total_seconds() - 60 - expected) < 5


def test_spiffe_ids_parse_strictly(service: CertificateService) -> None:
    assert parse_spiffe(A.spiffe_id) == A
    for bad in ("spiffe://td/ns/a", "spiffe://td/ns//sa/b", "https://td/ns/a/sa/b",
                "spiffe://td/ns/a/sa/b/c"):
        assert parse_spiffe(bad) is None
    issued = service.ca.issue(B, HOUR)
    assert certificate_identity(issued.certificate_chain) == B


# --- who may have what on the secure port ------------------------------------------------------


def _node(namespace: str, account: str, workload: str = "client") -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"NAMESPACE": namespace, "WORKLOAD_NAME": workload,
                     **({"SERVICE_ACCOUNT": account} if account else {})})
    return base_pb2.Node(id=f"sidecar~127.0.0.9~{workload}.{namespace}~x", metadata=metadata)


def test_a_node_must_claim_its_certificates_identity(runtime: Any) -> None:  # noqa: F811
    snap = snapshot(runtime)
    check_node(_node("default", "client"), A, snap)
    for claim in (_node("default", "reviews"), _node("shop", "client"), _node("default", "")):
        with pytest.raises(Refused, match=A.spiffe_id):
            check_node(claim, A, snap)
    # The registry gives workload `reviews` (127.0.0.5) the account `reviews`: a node naming
    # that workload is B whatever account it claims.
    reviews = _node("default", "client", workload="reviews")
    reviews.metadata.update({"INSTANCE_IPS": "127.0.0.5", "LABELS": {"app": "reviews"}})
    with pytest.raises(Refused, match="in the registry"):
        check_node(reviews, A, snap)
    check_node(_node("default", "reviews", workload="reviews"), B, snap)


def test_only_the_root_is_served_as_a_secret_on_the_secure_port() -> None:
    check_secrets(["ROOTCA"], A)
    for name in ("default", B.spiffe_id, "kubernetes://credential"):
        with pytest.raises(Refused, match="secret"):
            check_secrets(["ROOTCA", name], A)


# --- generated TLS contexts and the agent's bootstrap --------------------------------------------


def _mtls_context(snap: Any, proxy: Any) -> tls_pb2.UpstreamTlsContext:
    (resource,) = GENERATORS[names.CLUSTER].generate(snap, proxy, [f"outbound|9080||{REVIEWS}"])
    found = cluster_pb2.Cluster()
    resource.body.Unpack(found)
    matches = {m.name: m for m in found.transport_socket_matches}
    context = tls_pb2.UpstreamTlsContext()
    matches["tlsMode-istio"].transport_socket.typed_config.Unpack(context)
    return context


def test_tls_contexts_name_the_agents_sds_for_agent_proxies(runtime: Any) -> None:  # noqa: F811
    snap = snapshot(runtime)
    plain = sidecar("client")
    agent = dataclasses.replace(plain, metadata={sds.AGENT_SDS: sds.AGENT_SDS_VALUE})
    served = _mtls_context(snap, plain).common_tls_context.tls_certificate_sds_secret_configs[0]
    assert served.sds_config.HasField("ads")
    # Shared caches keep the two apart, whichever proxy comes first.
    for _ in range(2):
        own = _mtls_context(snap, agent).common_tls_context
        source = own.tls_certificate_sds_secret_configs[0].sds_config.api_config_source
        assert source.grpc_services[0].envoy_grpc.cluster_name == sds.SDS_CLUSTER
        validation = own.combined_validation_context.validation_context_sds_secret_config
        assert validation.name == "ROOTCA"
        assert validation.sds_config.api_config_source.grpc_services[0].envoy_grpc\
            .cluster_name == sds.SDS_CLUSTER
        assert _mtls_context(snap, plain).common_tls_context\
            .tls_certificate_sds_secret_configs[0].sds_config.HasField("ads")
    # Inbound listeners too (built per proxy).
    reviews = dataclasses.replace(reviews_proxy(),
                                  metadata={sds.AGENT_SDS: sds.AGENT_SDS_VALUE})
    text = json_format.MessageToJson(_listener_dump(snap, reviews))
    assert sds.SDS_CLUSTER in text
    assert envoy_rejects(snap, reviews) == ""


def _listener_dump(snap: Any, proxy: Any) -> Any:
    from envoy.config.listener.v3 import listener_pb2

    for resource in GENERATORS[names.LISTENER].generate(snap, proxy, None):
        if resource.name == "127.0.0.5_9080":
            found = listener_pb2.Listener()
            resource.body.Unpack(found)
            return found
    raise AssertionError("no inbound listener")


def test_agent_bootstrap_reaches_the_secure_port_with_sds_from_the_socket(
    tmp_path: Path,
) -> None:
    boot = build_bootstrap(NodeInfo(workload_name="client"), HostPort("127.0.0.1", 15012),
                           tmp_path / "sds.sock")
    clusters = {c.name: c for c in boot.static_resources.clusters}
    assert clusters["sds-grpc"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address\
        .pipe.path == str(tmp_path / "sds.sock")
    context = tls_pb2.UpstreamTlsContext()
    clusters["xds-grpc"].transport_socket.typed_config.Unpack(context)
    assert context.sni == "istiod.istio-system.svc"
    common = context.common_tls_context
    assert common.tls_certificate_sds_secret_configs[0].sds_config.api_config_source\
        .grpc_services[0].envoy_grpc.cluster_name == "sds-grpc"
    assert common.combined_validation_context.default_validation_context\
        .match_typed_subject_alt_names[0].matcher.exact == "istiod.istio-system.svc"
    assert boot.node.metadata.fields[sds.AGENT_SDS].string_value == sds.AGENT_SDS_VALUE
    # Without a socket: the plaintext bootstrap, unchanged.
    plain = build_bootstrap(NodeInfo(workload_name="client"), HostPort("127.0.0.1", 15010))
    assert [c.name for c in plain.static_resources.clusters] == ["xds-grpc"]
    assert not plain.static_resources.clusters[0].HasField("transport_socket")


# --- the agent: its certificates and its SDS server --------------------------------------------


def test_agent_gets_its_first_certificate_by_token_and_renews_by_certificate(
    tmp_path: Path,
) -> None:
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.load_or_create(ca_dir, "cluster.local")
    service = CertificateService(ca, load_or_create_key(ca_dir), "cluster.local", HOUR)
    calls: list[Identity | None] = []
    authenticate = service.authenticate

    def recording(peer: Identity | None, metadata: dict[str, str]) -> Identity:
        calls.append(peer)
        return authenticate(peer, metadata)

    service.authenticate = recording  # type: ignore[method-assign]

    async def run() -> tuple[WorkloadSecret, WorkloadSecret]:
        secure = await start_secure_server(
            None, service, "127.0.0.1:0", "127.0.0.1:0")  # type: ignore[arg-type]
        try:
            agent = AgentCertificates(
                tmp_path / "agent", ca.root, create_token(service.token_key, A),
                f"127.0.0.1:{secure.ca_port}", f"127.0.0.1:{secure.secure_port}", ttl=600)
            first = await agent.request()
            second = await agent.request()
            # A restarted agent renews what the last run left, its token long gone.
            again = AgentCertificates(
                tmp_path / "agent", ca.root, "expired.token", f"127.0.0.1:{secure.ca_port}",
                f"127.0.0.1:{secure.secure_port}", ttl=600)
            third = await again.first()
            assert third.serial not in (first.serial, second.serial)
            assert sans(third.chain) == [A.spiffe_id]
            return first, second
        finally:
            await secure.server.stop(None)

    first, second = asyncio.run(run())
    # The token first, then the certificate on the mTLS port, also after a restart.
    assert calls == [None, A, A]
    assert first.key != second.key and first.serial != second.serial
    for secret in (first, second):
        assert sans(secret.chain) == [A.spiffe_id]
        assert 590 <= secret.not_after - secret.not_before - 60 <= 600
    key_file = tmp_path / "agent" / "key.pem"
    assert key_file.read_bytes() not in (first.key, second.key)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "agent").stat().st_mode) == 0o700
    # A run stopped between writing a new key and its certificate leaves a pair that does not
    # match: the next run must not present it (it falls back to the token instead).
    assert AgentCertificates(tmp_path / "agent", ca.root, "t", "a:1", "b:2").load() is not None
    key_file.write_bytes(make_csr()[0])
    assert AgentCertificates(tmp_path / "agent", ca.root, "t", "a:1", "b:2").load() is None


def _secret(serial: int) -> WorkloadSecret:
    key, _ = make_csr()
    return WorkloadSecret(key, b"CHAIN", b"ROOT", 0.0, 100.0, serial)


def test_sds_server_answers_acks_quietly_and_pushes_renewals(tmp_path: Path) -> None:
    async def run() -> list[Any]:
        server = SdsServer(_secret(1))
        socket = tmp_path / "sds.sock"
        await server.start(socket)
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        try:
            async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
                stream = channel.stream_stream(
                    "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
                    request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                    response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
                )
                call = stream()
                names = ["ROOTCA", "default", "unknown"]
                await call.write(discovery_pb2.DiscoveryRequest(
                    type_url=SECRET_TYPE, resource_names=names))
                first = await call.read()
                await call.write(discovery_pb2.DiscoveryRequest(  # the ACK
                    type_url=SECRET_TYPE, resource_names=names,
                    version_info=first.version_info, response_nonce=first.nonce))
                server.update(_secret(2))
                second = await call.read()  # the renewal, not an answer to the ACK
                call.cancel()
                return [first, second]
        finally:
            await server.stop()

    first, second = asyncio.run(run())
    assert (first.version_info, second.version_info) == ("1", "2")
    unpacked = []
    for response in (first, second):
        secrets = []
        for resource in response.resources:
            secret = secret_pb2.Secret()
            resource.Unpack(secret)
            secrets.append(secret)
        unpacked.append({s.name: s for s in secrets})
    assert set(unpacked[0]) == {"ROOTCA", "default"}
    assert unpacked[0]["ROOTCA"].validation_context.trusted_ca.inline_bytes == b"ROOT"
    assert unpacked[1]["default"].tls_certificate.private_key.inline_bytes != \
        unpacked[0]["default"].tls_certificate.private_key.inline_bytes


def test_a_busy_secure_port_is_an_error(tmp_path: Path) -> None:
    import socket

    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    service = CertificateService(ca, load_or_create_key(tmp_path / "ca"), "cluster.local", HOUR)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(OSError):
            asyncio.run(start_secure_server(None, service, address, ""))  # type: ignore[arg-type]


def test_token_command_writes_a_private_token_the_server_accepts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from meshpilot.cli.main import app

    out = tmp_path / "t.token"
    result = CliRunner().invoke(app, [
        "token", "create", "--ca-dir", str(tmp_path / "ca"), "--namespace", "shop",
        "--service-account", "cart", "--ttl", "60", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_or_create_key(tmp_path / "ca")
    assert verify_token(key, out.read_text()) == Identity("cluster.local", "shop", "cart")


def test_agent_mode_needs_the_mesh_root(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from meshpilot.cli.main import app

    token = tmp_path / "t.token"
    token.write_text("x.y")
    result = CliRunner().invoke(app, [
        "proxy", "sidecar", "--discovery-address", "127.0.0.1:15012", "--token-file", str(token),
        "--config-path", str(tmp_path / "proxy"), "--workload-name", "a"])
    assert result.exit_code == 2
    assert "--root-cert" in result.output


def test_certificate_requests_are_signed_by_the_ca_of_the_moment(tmp_path: Path) -> None:
    # Replicas rotating their signing intermediate swap the CA under a running service: a
    # request after the swap is signed by the new intermediate, under the same root.
    root = CertificateAuthority.load_or_create(tmp_path / "root", "cluster.local")
    intermediate = create_intermediate(tmp_path / "root", tmp_path / "mid", "replica-1")
    holder = [root]
    service = CertificateService(lambda: holder[0], load_or_create_key(tmp_path / "root"),
                                 "cluster.local", HOUR)

    def issuer(chain: list[str]) -> x509.Name:
        return x509.load_pem_x509_certificate(chain[0].encode()).issuer

    before = service.sign(A, _csr_asking_for(A), 0)
    assert issuer(before) == root.certificate.subject
    holder[0] = intermediate
    after = service.sign(A, _csr_asking_for(A), 0)
    assert issuer(after) == intermediate.certificate.subject != root.certificate.subject
    assert after[-1].strip() == before[-1].strip() == root.root.decode().strip()
    assert len(after) == 3  # workload, intermediate, root
