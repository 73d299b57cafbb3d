"""The mesh CA, workload certificates and the translation of security policies.

CA and certificates are checked with `cryptography`; PeerAuthentication, AuthorizationPolicy and
RequestAuthentication are checked on the generated protos (which chain, which RBAC policy,
which matcher), and by a small evaluator of RBAC rules (`Rbac.decide`) that applies Envoy's
documented semantics to the generated filters for a request's identity, method, path and port.
Every config shape is also loaded by a real Envoy (`envoy --mode validate`).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as network_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from meshpilot.config.kinds import SECURITY_GROUP
from meshpilot.config.support import unsupported_fields
from meshpilot.config.validation import validate_config
from meshpilot.envoy import names
from meshpilot.envoy.generators import GENERATORS
from meshpilot.model import Config, Kind, NodeType, Proxy
from meshpilot.model.meshconfig import MeshConfig
from meshpilot.model.security import Identity
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.ca import CaError, CertificateAuthority, create_intermediate
from meshpilot.security.certificates import WorkloadCertificates
from meshpilot.security.jwks import UNMATCHABLE_JWKS
from meshpilot.security.runtime import SecurityRuntime
from tests.envoy_check import envoy_rejects
from tests.simulation import sidecar, snapshot_of

HOUR = datetime.timedelta(hours=1)

# --- CA and certificates -----------------------------------------------------------------------


def test_self_signed_root_is_created_once_and_kept(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca", "example.org")
    again = CertificateAuthority.load_or_create(tmp_path / "ca", "example.org")
    assert first.self_signed and first.root == again.root
    assert first.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0]\
        .value == "example.org"
    assert oct((tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o777) == "0o600"


def test_workload_certificate_is_an_x509_svid_chaining_to_the_root(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    issued = ca.issue(Identity("cluster.local", "shop", "cart"), HOUR)
    leaf = x509.load_pem_x509_certificate(issued.certificate_chain)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/cart"
    ]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.root))
    key = serialization.load_pem_private_key(issued.private_key, None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore
    assert issued.serial == leaf.serial_number
    assert abs(issued.not_after - (leaf.not_valid_after_utc.timestamp())) < 1


def _intermediate(tmp_path: Path) -> tuple[x509.Certificate, Path]:
    """An organisation's root and an intermediate signed by it, laid out as Istio's cacerts."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "org root")])
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(root_key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    inter = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh ca")]))
             .issuer_name(name).public_key(key.public_key()).serial_number(2)
             .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=10))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    directory = tmp_path / "cacerts"
    directory.mkdir()
    (directory / "ca-cert.pem").write_bytes(inter.public_bytes(pem))
    (directory / "ca-key.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "root-cert.pem").write_bytes(root.public_bytes(pem))
    (directory / "cert-chain.pem").write_bytes(inter.public_bytes(pem) + root.public_bytes(pem))
    return root, directory


def test_plug_in_intermediate_ca(tmp_path: Path) -> None:
    root, directory = _intermediate(tmp_path)
    ca = CertificateAuthority.load_or_create(directory, "cluster.local")
    assert not ca.self_signed
    assert x509.load_pem_x509_certificate(ca.root) == root
    issued = ca.issue(Identity("cluster.local", "a", "b"), HOUR)
    chain = x509.load_pem_x509_certificates(issued.certificate_chain)
    assert [c.subject.rfc4514_string() for c in chain[1:]] == ["CN=mesh ca", "CN=org root"]
    chain[0].verify_directly_issued_by(chain[1])
    chain[1].verify_directly_issued_by(root)
    # Never outlives the CA that signed it.
    long = ca.issue(Identity("cluster.local", "a", "b"), datetime.timedelta(days=365))
    assert x509.load_pem_x509_certificate(long.certificate_chain).not_valid_after_utc \
        <= chain[1].not_valid_after_utc


def test_plug_in_ca_problems_are_named(tmp_path: Path) -> None:
    _, directory = _intermediate(tmp_path)
    (directory / "ca-key.pem").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    with pytest.raises(CaError, match="does not belong"):
        CertificateAuthority.load(directory)
    (directory / "ca-key.pem").unlink()
    with pytest.raises(CaError, match=r"ca-key\.pem is missing"):
        CertificateAuthority.load_or_create(directory, "cluster.local")


def test_csr_is_signed_for_the_proven_identity_only(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin")]
           ), critical=True)
           .sign(key, hashes.SHA256()))
    chain, _, _ = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM),
                              Identity("cluster.local", "shop", "cart"), HOUR)
    leaf = x509.load_pem_x509_certificate(chain)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value\
        .get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://cluster.local/ns/shop/sa/cart"]


def test_certificates_rotate_at_half_their_life(tmp_path: Path) -> None:
    now = [1_000.0]
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    certificates = WorkloadCertificates(ca, datetime.timedelta(seconds=100), clock=lambda: now[0])
    identity = Identity("cluster.local", "a", "b")
    first = certificates.certificate(identity)
    assert certificates.certificate(identity) is first  # shared until rotated
    real_expiry = first.not_after  # issued by the wall clock; the rotation uses the fake one
    assert certificates.rotate_due() == []
    now[0] = certificates.next_rotation() or 0.0
    assert certificates.rotate_due() == [identity]
    assert certificates.certificate(identity).serial != first.serial
    assert real_expiry > 0


# --- Translation fixtures ----------------------------------------------------------------------

REVIEWS = "reviews.default.svc.cluster.local"
DB = "db.default.svc.cluster.local"


class _NoPushes:
    def config_update(self, request: object) -> None:
        pass


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> SecurityRuntime:
    return SecurityRuntime.create(_NoPushes(), "cluster.local",
                                  tmp_path_factory.mktemp("ca"), HOUR)


def _security(kind: str, name: str, spec: dict[str, Any], namespace: str = "default",
              **meta: Any) -> Config:
    return Config(kind, name, namespace, spec, group=SECURITY_GROUP, **meta)


def peer(name: str, spec: dict[str, Any], namespace: str = "default") -> Config:
    return _security(Kind.PEER_AUTHENTICATION, name, spec, namespace)


def authz(name: str, spec: dict[str, Any], namespace: str = "default", **meta: Any) -> Config:
    return _security(Kind.AUTHORIZATION_POLICY, name, spec, namespace, **meta)


MESH = [
    Config(Kind.SERVICE_ENTRY, "reviews", "default", {
        "hosts": [REVIEWS], "location": "MESH_INTERNAL", "resolution": "STATIC",
        "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
        "workloadSelector": {"labels": {"app": "reviews"}},
    }),
    Config(Kind.SERVICE_ENTRY, "db", "default", {
        "hosts": [DB], "location": "MESH_INTERNAL", "resolution": "STATIC",
        "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}],
        "workloadSelector": {"labels": {"app": "reviews"}},
    }),
    Config(Kind.WORKLOAD_ENTRY, "reviews", "default", {
        "address": "127.0.0.5", "labels": {"app": "reviews"}, "serviceAccount": "reviews",
    }),
    # No service account and no tlsMode label: no sidecar, so no auto mTLS to it.
    Config(Kind.WORKLOAD_ENTRY, "legacy", "default", {
        "address": "127.0.0.6", "labels": {"app": "reviews"},
    }),
]


def snapshot(runtime: SecurityRuntime | None, *configs: Config) -> Snapshot:
    built = snapshot_of([*MESH, *configs])
    return dataclasses.replace(built, security=runtime.security if runtime else None)


def reviews_proxy() -> Proxy:
    return sidecar("reviews", ips=["127.0.0.5"], labels={"app": "reviews"})


def listener(snap: Snapshot, port: int, proxy: Proxy | None = None) -> listener_pb2.Listener:
    proxy = proxy or reviews_proxy()
    for resource in GENERATORS[names.LISTENER].generate(snap, proxy, None):
        if resource.name == f"127.0.0.5_{port}":
            found = listener_pb2.Listener()
            resource.body.Unpack(found)
            return found
    raise AssertionError(f"no inbound listener on {port}")


def cluster(snap: Snapshot, name: str) -> cluster_pb2.Cluster:
    (resource,) = GENERATORS[names.CLUSTER].generate(snap, sidecar("client"), [name])
    found = cluster_pb2.Cluster()
    resource.body.Unpack(found)
    return found


def manager(chain: Any) -> hcm_pb2.HttpConnectionManager:
    found = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(found)
    return found


# --- mTLS --------------------------------------------------------------------------------------


def test_without_a_ca_nothing_is_secured() -> None:
    snap = snapshot(None, peer("strict", {"mtls": {"mode": "STRICT"}}, "istio-system"))
    inbound = listener(snap, 9080)
    assert len(inbound.filter_chains) == 1 and not inbound.filter_chains[0].transport_socket.name
    assert not cluster(snap, f"outbound|9080||{REVIEWS}").transport_socket_matches
    assert GENERATORS[names.SECRET].generate(snap, reviews_proxy(), ["default"]) == []


def test_default_is_permissive(runtime: SecurityRuntime) -> None:
    inbound = listener(snapshot(runtime), 9080)
    assert [f.name for f in inbound.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {c.filter_chain_match.transport_protocol: c for c in inbound.filter_chains}
    assert set(chains) == {"tls", "raw_buffer"}
    context = tls_pb2.DownstreamTlsContext()
    chains["tls"].transport_socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name \
        == "ROOTCA"
    assert not chains["raw_buffer"].HasField("transport_socket")


@pytest.mark.parametrize(("policies", "modes"), [
    # mesh STRICT
    ([peer("m", {"mtls": {"mode": "STRICT"}}, "istio-system")], {9080: "STRICT", 5432: "STRICT"}),
    # namespace overrides mesh
    ([peer("m", {"mtls": {"mode": "STRICT"}}, "istio-system"),
      peer("ns", {"mtls": {"mode": "DISABLE"}})], {9080: "DISABLE", 5432: "DISABLE"}),
    # workload UNSET inherits the namespace's; its port level overrides one port
    ([peer("ns", {"mtls": {"mode": "STRICT"}}),
      peer("w", {"selector": {"matchLabels": {"app": "reviews"}},
                 "portLevelMtls": {"5432": {"mode": "DISABLE"}}})],
     {9080: "STRICT", 5432: "DISABLE"}),
    # a selector that does not match the workload changes nothing
    ([peer("w", {"selector": {"matchLabels": {"app": "other"}}, "mtls": {"mode": "STRICT"}})],
     {9080: "PERMISSIVE", 5432: "PERMISSIVE"}),
    # policies in other namespaces do not apply
    ([peer("x", {"mtls": {"mode": "STRICT"}}, "shop")], {9080: "PERMISSIVE", 5432: "PERMISSIVE"}),
])
def test_peer_authentication_precedence(
    runtime: SecurityRuntime, policies: list[Config], modes: dict[int, str]
) -> None:
    snap = snapshot(runtime, *policies)
    for port, mode in modes.items():
        inbound = listener(snap, port)
        protocols = [c.filter_chain_match.transport_protocol for c in inbound.filter_chains]
        secured = [c.HasField("transport_socket") for c in inbound.filter_chains]
        assert {"STRICT": [True], "DISABLE": [False], "PERMISSIVE": [True, False]}[mode] \
            == secured, (port, protocols)


def test_auto_mtls_uses_mtls_only_towards_sidecars(runtime: SecurityRuntime) -> None:
    snap = snapshot(runtime)
    built = cluster(snap, f"outbound|9080||{REVIEWS}")
    matches = {m.name: m for m in built.transport_socket_matches}
    assert dict(matches["tlsMode-istio"].match) == {"tlsMode": "istio"}
    context = tls_pb2.UpstreamTlsContext()
    matches["tlsMode-istio"].transport_socket.typed_config.Unpack(context)
    assert context.sni == f"outbound_.9080_._.{REVIEWS}"
    san = context.common_tls_context.combined_validation_context.default_validation_context
    assert san.match_typed_subject_alt_names[0].matcher.prefix == "spiffe://cluster.local/"
    assert matches["tlsMode-disabled"].transport_socket.name == "envoy.transport_sockets.raw_buffer"
    assert _marked_endpoints(snap, f"outbound|9080||{REVIEWS}") == {"127.0.0.5": True,
                                                                    "127.0.0.6": False}


def _marked_endpoints(snap: Snapshot, name: str) -> dict[str, bool]:
    (resource,) = GENERATORS[names.ENDPOINT].generate(snap, sidecar("client"), [name])
    cla = endpoint_pb2.ClusterLoadAssignment()
    resource.body.Unpack(cla)
    return {
        lb.endpoint.address.socket_address.address:
            "envoy.transport_socket_match" in lb.metadata.filter_metadata
        for group in cla.endpoints for lb in group.lb_endpoints
    }


def test_auto_mtls_follows_the_servers_peer_authentication(runtime: SecurityRuntime) -> None:
    snap = snapshot(runtime, peer("w", {"selector": {"matchLabels": {"app": "reviews"}},
                                        "mtls": {"mode": "DISABLE"}}))
    assert _marked_endpoints(snap, f"outbound|9080||{REVIEWS}") == {"127.0.0.5": False,
                                                                    "127.0.0.6": False}


def _dr(tls: dict[str, Any]) -> Config:
    return Config(Kind.DESTINATION_RULE, "reviews", "default",
                  {"host": REVIEWS, "trafficPolicy": {"tls": tls}})


def test_destination_rule_istio_mutual_and_explicit_tls(runtime: SecurityRuntime) -> None:
    snap = snapshot(runtime, _dr({"mode": "ISTIO_MUTUAL", "sni": "reviews.mesh",
                                  "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/r"]}))
    built = cluster(snap, f"outbound|9080||{REVIEWS}")
    assert not built.transport_socket_matches
    context = tls_pb2.UpstreamTlsContext()
    built.transport_socket.typed_config.Unpack(context)
    assert context.sni == "reviews.mesh"
    validation = context.common_tls_context.combined_validation_context
    assert [m.matcher.exact for m in
            validation.default_validation_context.match_typed_subject_alt_names] == [
        "spiffe://cluster.local/ns/default/sa/r"]
    # Any other explicit setting is the user's: no auto mTLS.
    snap = snapshot(runtime, _dr({"mode": "DISABLE"}))
    built = cluster(snap, f"outbound|9080||{REVIEWS}")
    assert not built.transport_socket_matches and not built.HasField("transport_socket")


def test_sds_serves_the_identity_and_the_root(runtime: SecurityRuntime) -> None:
    snap = snapshot(runtime)
    proxy = reviews_proxy()
    resources = GENERATORS[names.SECRET].generate(snap, proxy, ["default", "ROOTCA", "other"])
    assert [r.name for r in resources] == ["ROOTCA", "default"]
    secret = secret_pb2.Secret()
    resources[1].body.Unpack(secret)
    leaf = x509.load_pem_x509_certificate(secret.tls_certificate.certificate_chain.inline_bytes)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value\
        .get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://cluster.local/ns/default/sa/reviews"]
    # The node's SERVICE_ACCOUNT names the identity of a workload the registry does not know.
    client = dataclasses.replace(sidecar("client"), metadata={"SERVICE_ACCOUNT": "shopper"})
    (own,) = GENERATORS[names.SECRET].generate(snap, client, ["default"])
    own_secret = secret_pb2.Secret()
    own.body.Unpack(own_secret)
    assert b"sa/shopper" not in own_secret.tls_certificate.certificate_chain.inline_bytes  # DER
    leaf = x509.load_pem_x509_certificate(
        own_secret.tls_certificate.certificate_chain.inline_bytes)
    assert "sa/shopper" in str(leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value)
    # Cached per snapshot: the same resource object for every proxy of the identity.
    assert GENERATORS[names.SECRET].generate(snap, proxy, ["default"])[0] is resources[1]


# --- AuthorizationPolicy: an evaluator of the generated RBAC ----------------------------------


@dataclass
class Request:
    principal: str = ""
    """Peer certificate URI SAN; '' for plaintext."""
    method: str = "GET"
    path: str = "/"
    host: str = "reviews"
    port: int = 9080
    source_ip: str = "10.0.0.1"
    headers: Mapping[str, str] = field(default_factory=dict)
    claims: Mapping[str, Any] | None = None
    """The verified JWT payload, as jwt_authn leaves it in dynamic metadata."""


def _string(matcher: Any, value: str | None) -> bool:
    if value is None:
        return False
    kind = matcher.WhichOneof("match_pattern")
    if matcher.ignore_case and kind != "safe_regex":
        value, target = value.lower(), str(getattr(matcher, kind)).lower()
    else:
        target = getattr(matcher, kind)
    if kind == "exact":
        return bool(value == target)
    if kind == "prefix":
        return value.startswith(target)
    if kind == "suffix":
        return value.endswith(target)
    if kind == "safe_regex":
        return re.fullmatch(matcher.safe_regex.regex, value) is not None
    raise AssertionError(kind)


def _header_value(request: Request, name: str) -> str | None:
    pseudo = {":method": request.method, ":path": request.path, ":authority": request.host}
    return pseudo.get(name, request.headers.get(name))


def _metadata(request: Request, matcher: Any) -> bool:
    value: Any = {"payload": request.claims} if request.claims is not None else {}
    for segment in matcher.path:
        value = value.get(segment.key) if isinstance(value, dict) else None
    wanted = matcher.value
    kind = wanted.WhichOneof("match_pattern")
    if kind == "present_match":
        return value is not None
    if kind == "string_match":
        return isinstance(value, str) and _string(wanted.string_match, value)
    if kind == "list_match":
        return isinstance(value, list) and any(
            isinstance(v, str) and _string(wanted.list_match.one_of.string_match, v)
            for v in value)
    raise AssertionError(kind)


def _cidr(cidr: Any, ip: str) -> bool:
    network = ipaddress.ip_network(f"{cidr.address_prefix}/{cidr.prefix_len.value}")
    return ipaddress.ip_address(ip) in network


def _principal(p: Any, request: Request) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return True
    if kind == "and_ids":
        return all(_principal(i, request) for i in p.and_ids.ids)
    if kind == "or_ids":
        return any(_principal(i, request) for i in p.or_ids.ids)
    if kind == "not_id":
        return not _principal(p.not_id, request)
    if kind == "authenticated":
        return bool(request.principal) and _string(p.authenticated.principal_name,
                                                   request.principal)
    if kind in ("direct_remote_ip", "remote_ip"):
        return _cidr(getattr(p, kind), request.source_ip)
    if kind == "header":
        return _string(p.header.string_match, _header_value(request, p.header.name))
    if kind == "metadata":
        return _metadata(request, p.metadata)
    raise AssertionError(kind)


def _permission(p: Any, request: Request) -> bool:
    kind = p.WhichOneof("rule")
    if kind == "any":
        return True
    if kind == "and_rules":
        return all(_permission(r, request) for r in p.and_rules.rules)
    if kind == "or_rules":
        return any(_permission(r, request) for r in p.or_rules.rules)
    if kind == "not_rule":
        return not _permission(p.not_rule, request)
    if kind == "header":
        return _string(p.header.string_match, _header_value(request, p.header.name))
    if kind == "url_path":
        return _string(p.url_path.path, request.path.split("?")[0])
    if kind == "destination_port":
        return bool(p.destination_port == request.port)
    raise AssertionError(kind)


def _matches(rbac: rbac_pb2.RBAC, request: Request) -> bool:
    return any(
        any(_permission(x, request) for x in policy.permissions)
        and any(_principal(x, request) for x in policy.principals)
        for policy in rbac.policies.values()
    )


def decide(filters: list[Any], request: Request) -> int:
    """The status the RBAC filters give a request: 200 (passes on) or 403."""
    for config in filters:
        if not config.HasField("rules"):
            continue  # dry-run only
        matched = _matches(config.rules, request)
        action = config.rules.action
        if (action == rbac_pb2.RBAC.DENY and matched) or (
                action == rbac_pb2.RBAC.ALLOW and not matched):
            return 403
    return 200


def rbac_filters(snap: Snapshot, port: int = 9080) -> list[Any]:
    inbound = listener(snap, port)
    chain = inbound.filter_chains[0]
    out: list[Any] = []
    if port == 9080:
        for item in manager(chain).http_filters:
            if item.name == "envoy.filters.http.rbac":
                config = http_rbac_pb2.RBAC()
                item.typed_config.Unpack(config)
                out.append(config)
    else:
        for item in chain.filters:
            if item.name == "envoy.filters.network.rbac":
                config = network_rbac_pb2.RBAC()
                item.typed_config.Unpack(config)
                out.append(config)
    return out


CLIENT = "spiffe://cluster.local/ns/default/sa/client"
SHOP = "spiffe://cluster.local/ns/shop/sa/cart"


def test_no_policy_no_filter(runtime: SecurityRuntime) -> None:
    assert rbac_filters(snapshot(runtime)) == []


def test_allow_nothing_and_allow_all() -> None:
    nothing = snapshot(None, authz("nothing", {}))
    assert decide(rbac_filters(nothing), Request(principal=CLIENT)) == 403
    everything = snapshot(None, authz("all", {"rules": [{}]}))
    assert decide(rbac_filters(everything), Request()) == 200


ALLOW_POLICY = authz("allow", {
    "selector": {"matchLabels": {"app": "reviews"}},
    "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}],
         "to": [{"operation": {"methods": ["GET", "HEAD"], "paths": ["/api/*", "/health"]}}]},
        {"from": [{"source": {"namespaces": ["shop"], "notPrincipals": ["*/sa/blocked"]}}],
         "to": [{"operation": {"hosts": ["reviews", "*.example.com"], "notPaths": ["/admin*"]}}]},
        {"from": [{"source": {"ipBlocks": ["192.168.0.0/16"]}}],
         "when": [{"key": "request.headers[x-token]", "values": ["letmein"]}]},
    ],
})


@pytest.mark.parametrize(("request_", "status"), [
    (Request(principal=CLIENT, path="/api/items"), 200),
    (Request(principal=CLIENT, path="/api/items", method="POST"), 403),
    (Request(principal=CLIENT, path="/health?x=1"), 200),
    (Request(principal=CLIENT, path="/other"), 403),
    (Request(path="/api/items"), 403),  # plaintext: no principal
    (Request(principal=SHOP, path="/anything", method="DELETE"), 200),
    (Request(principal=SHOP, path="/anything", host="REVIEWS:9080"), 200),
    (Request(principal=SHOP, path="/x", host="api.example.com"), 200),
    (Request(principal=SHOP, path="/x", host="elsewhere"), 403),
    (Request(principal=SHOP, path="/admin/users"), 403),
    (Request(principal="spiffe://cluster.local/ns/shop/sa/blocked", path="/x"), 403),
    (Request(source_ip="192.168.3.4", headers={"x-token": "letmein"}), 200),
    (Request(source_ip="192.168.3.4", headers={"x-token": "nope"}), 403),
    (Request(source_ip="10.1.1.1", headers={"x-token": "letmein"}), 403),
])
def test_allow_rules(request_: Request, status: int) -> None:
    assert decide(rbac_filters(snapshot(None, ALLOW_POLICY)), request_) == status


def test_deny_wins_over_allow_and_audit_never_denies() -> None:
    snap = snapshot(None, ALLOW_POLICY,
                    authz("deny", {"action": "DENY",
                                   "rules": [{"to": [{"operation": {"paths": ["/api/secret"]}}]}]}),
                    authz("audit", {"action": "AUDIT",
                                    "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}))
    filters = rbac_filters(snap)
    assert [f.rules.action for f in filters] == [rbac_pb2.RBAC.LOG, rbac_pb2.RBAC.DENY,
                                                 rbac_pb2.RBAC.ALLOW]
    assert decide(filters, Request(principal=CLIENT, path="/api/items")) == 200
    assert decide(filters, Request(principal=CLIENT, path="/api/secret")) == 403
    assert list(filters[1].rules.policies) == ["ns[default]-policy[deny]-rule[0]"]


def test_dry_run_goes_to_shadow_rules() -> None:
    snap = snapshot(None, authz("dry", {"action": "DENY", "rules": [{}]},
                                annotations={"istio.io/dry-run": "true"}))
    (only,) = rbac_filters(snap)
    assert not only.HasField("rules") and only.shadow_rules.action == rbac_pb2.RBAC.DENY
    assert only.shadow_rules_stat_prefix == "istio_dry_run_deny_"
    assert decide([only], Request()) == 200


def test_custom_without_a_known_provider_denies_what_it_matches() -> None:
    snap = snapshot(None, authz("ext", {"action": "CUSTOM", "provider": {"name": "opa"},
                                        "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}))
    filters = rbac_filters(snap)
    assert decide(filters, Request(path="/x")) == 403
    assert decide(filters, Request(path="/y")) == 200


AUTHORIZERS = [
    Config(Kind.SERVICE_ENTRY, "authz", "default", {
        "hosts": ["authz.example"], "location": "MESH_EXTERNAL", "resolution": "STATIC",
        "ports": [{"number": 8000, "name": "http", "protocol": "HTTP"},
                  {"number": 9000, "name": "grpc", "protocol": "GRPC"}],
        "endpoints": [{"address": "127.0.0.9"}],
    }),
    # A Sidecar that hides every service: the authorizer's cluster must stay.
    Config(Kind.SIDECAR, "default", "default", {"egress": [{"hosts": ["istio-system/*"]}]}),
]
PROVIDERS = {"extensionProviders": [
    {"name": "http-authz", "envoyExtAuthzHttp": {
        "service": "authz.example", "port": 8000, "timeout": "2s", "pathPrefix": "/check",
        "failOpen": True, "statusOnError": "503",
        "includeRequestHeadersInCheck": ["x-ext-authz", "x-user-*"],
        "includeAdditionalHeadersInCheck": {"x-from": "mesh"},
        "headersToUpstreamOnAllow": ["x-verdict"], "headersToDownstreamOnDeny": ["x-reason"],
        "headersToDownstreamOnAllow": ["*-cookie"],
        "includeRequestBodyInCheck": {"maxRequestBytes": 1024, "allowPartialMessage": True}}},
    {"name": "grpc-authz", "envoyExtAuthzGrpc": {
        "service": "default/authz.example", "port": 9000}},
    {"name": "tracer", "zipkin": {"service": "authz.example", "port": 8000}},
    {"name": "lost", "envoyExtAuthzHttp": {"service": "nowhere.example", "port": 80}},
    {"name": "bare-http", "envoyExtAuthzHttp": {"service": "authz.example", "port": 8000}},
]}


def custom(name: str, provider: str, paths: list[str] | None = None) -> Config:
    rule = {"to": [{"operation": {"paths": paths}}]} if paths else {}
    return authz(name, {"action": "CUSTOM", "provider": {"name": provider}, "rules": [rule]})


def with_authorizers(*configs: Config) -> Snapshot:
    return dataclasses.replace(snapshot(None, *AUTHORIZERS, *configs),
                               mesh=MeshConfig.from_user(PROVIDERS))


def inbound_http_filters(snap: Snapshot) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for item in manager(listener(snap, 9080).filter_chains[0]).http_filters:
        config: Any = {"envoy.filters.http.rbac": http_rbac_pb2.RBAC,
                       "envoy.filters.http.ext_authz": http_ext_authz_pb2.ExtAuthz}.get(item.name)
        if config is not None:
            out.append((item.name, config()))
            item.typed_config.Unpack(out[-1][1])
    return out


def test_custom_http_provider_is_asked_about_matching_requests_only() -> None:
    snap = with_authorizers(custom("ext", "http-authz", ["/x", "/admin/*"]),
                            authz("deny", {"action": "DENY", "rules": [
                                {"to": [{"operation": {"paths": ["/secret"]}}]}]}))
    filters = inbound_http_filters(snap)
    assert [n for n, _ in filters] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz",
                                       "envoy.filters.http.rbac"]
    (_, marker), (_, ext), (_, deny) = filters
    # The marker never decides: its rules are shadow rules only, and name the policy Istio's way.
    assert not marker.HasField("rules") and marker.shadow_rules_stat_prefix == "istio_ext_authz_"
    assert list(marker.shadow_rules.policies) == ["istio-ext-authz-ns[default]-policy[ext]-rule[0]"]
    assert _matches(marker.shadow_rules, Request(path="/admin/users"))
    assert not _matches(marker.shadow_rules, Request(path="/y"))
    assert decide([marker, deny], Request(path="/x")) == 200
    assert decide([marker, deny], Request(path="/secret")) == 403
    enabled = ext.filter_enabled_metadata
    assert enabled.filter == "envoy.filters.http.rbac"
    assert [p.key for p in enabled.path] == ["istio_ext_authz_shadow_effective_policy_id"]
    assert enabled.value.string_match.prefix == "istio-ext-authz-"
    service = ext.http_service
    assert service.server_uri.cluster == "outbound|8000||authz.example"
    assert service.server_uri.uri == "http://authz.example"
    assert service.server_uri.timeout.seconds == 2 and service.path_prefix == "/check"
    assert ext.failure_mode_allow and ext.status_on_error.code == 503
    assert [(m.exact, m.prefix, m.ignore_case) for m in ext.allowed_headers.patterns] == [
        ("x-ext-authz", "", True), ("", "x-user-", True)]
    assert [(h.key, h.value) for h in service.authorization_request.headers_to_add] == [
        ("x-from", "mesh")]
    response = service.authorization_response
    assert [m.exact for m in response.allowed_upstream_headers.patterns] == ["x-verdict"]
    assert [m.exact for m in response.allowed_client_headers.patterns] == ["x-reason"]
    assert [m.suffix for m in response.allowed_client_headers_on_success.patterns] == ["-cookie"]
    assert ext.with_request_body.max_request_bytes == 1024
    assert ext.with_request_body.allow_partial_message


def test_custom_grpc_provider_defaults_and_tcp() -> None:
    snap = with_authorizers(custom("ext", "grpc-authz"))
    (_, (_, ext)) = inbound_http_filters(snap)
    assert ext.grpc_service.envoy_grpc.cluster_name == "outbound|9000||authz.example"
    assert ext.grpc_service.timeout.seconds == 600  # Istio's default: 10 minutes
    assert not ext.failure_mode_allow and ext.status_on_error.code == 403
    chain = listener(snap, 5432).filter_chains[0]
    assert [f.name for f in chain.filters] == [
        "envoy.filters.network.rbac", "envoy.filters.network.ext_authz",
        "envoy.filters.network.tcp_proxy"]
    tcp_marker, tcp_ext = network_rbac_pb2.RBAC(), network_ext_authz_pb2.ExtAuthz()
    chain.filters[0].typed_config.Unpack(tcp_marker)
    chain.filters[1].typed_config.Unpack(tcp_ext)
    assert not tcp_marker.HasField("rules") and tcp_marker.shadow_rules.policies
    assert tcp_ext.grpc_service.envoy_grpc.cluster_name == "outbound|9000||authz.example"
    assert tcp_ext.filter_enabled_metadata.filter == "envoy.filters.network.rbac"


def test_custom_falls_back_to_deny_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Unknown, not an authorizer, unknown service, a second provider on the workload.
    for provider in ("opa", "tracer", "lost"):
        caplog.clear()
        filters = rbac_filters(with_authorizers(custom(f"ext-{provider}", provider, ["/x"])))
        assert decide(filters, Request(path="/x")) == 403
        assert decide(filters, Request(path="/y")) == 200
        assert f"ext-{provider}" in caplog.text and repr(provider) in caplog.text
    caplog.clear()
    snap = with_authorizers(custom("a", "http-authz", ["/a"]), custom("b", "grpc-authz", ["/b"]))
    names_ = [n for n, _ in inbound_http_filters(snap)]
    assert names_ == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz",
                      "envoy.filters.http.rbac"]
    assert decide(rbac_filters(snap), Request(path="/b")) == 403
    assert "'grpc-authz'" in caplog.text and "one CUSTOM provider" in caplog.text
    # An HTTP provider cannot check a TCP connection: what the rules match is denied there.
    caplog.clear()
    tcp = rbac_filters(with_authorizers(custom("ext", "http-authz")), port=5432)
    assert decide(tcp, Request(port=5432)) == 403
    assert "HTTP provider" in caplog.text


def test_the_authorizers_cluster_survives_the_sidecar_scope() -> None:
    snap = with_authorizers()
    found = {r.name for r in GENERATORS[names.CLUSTER].generate(snap, sidecar("client"), None)}
    assert {"outbound|8000||authz.example", "outbound|9000||authz.example"} <= found
    assert f"outbound|9080||{REVIEWS}" not in found  # hidden by the Sidecar


@pytest.mark.parametrize("provider", ["http-authz", "bare-http", "grpc-authz"])
def test_envoy_accepts_custom_providers(provider: str) -> None:
    snap = with_authorizers(custom("ext", provider, ["/x"]),
                            authz("deny", {"action": "DENY", "rules": [{}]}))
    for proxy in (reviews_proxy(), sidecar("client")):
        assert envoy_rejects(snap, proxy) == "", provider


def test_selection_by_namespace_and_root_namespace() -> None:
    elsewhere = authz("deny-all", {"action": "DENY", "rules": [{}]}, namespace="shop")
    assert rbac_filters(snapshot(None, elsewhere)) == []
    mesh_wide = authz("deny-all", {"action": "DENY", "rules": [{}]}, namespace="istio-system")
    assert decide(rbac_filters(snapshot(None, mesh_wide)), Request()) == 403
    other_workload = authz("deny-all", {"action": "DENY", "rules": [{}],
                                        "selector": {"matchLabels": {"app": "ratings"}}})
    assert rbac_filters(snapshot(None, other_workload)) == []


def test_tcp_ports_drop_http_only_allow_rules_and_broaden_deny_rules() -> None:
    allow = authz("allow", {"rules": [
        {"to": [{"operation": {"methods": ["GET"]}}]},  # HTTP-only: never matches on TCP
        {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}],
         "to": [{"operation": {"ports": ["5432"]}}]},
    ]})
    filters = rbac_filters(snapshot(None, allow), port=5432)
    assert list(filters[0].rules.policies) == ["ns[default]-policy[allow]-rule[1]"]
    assert decide(filters, Request(principal=CLIENT, port=5432)) == 200
    assert decide(filters, Request(principal=SHOP, port=5432)) == 403
    deny = authz("deny", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]})
    assert decide(rbac_filters(snapshot(None, deny), port=5432), Request(port=5432)) == 403
    scoped = authz("deny", {"action": "DENY", "rules": [
        {"to": [{"operation": {"ports": ["9080"], "paths": ["/a"]}}]}]})
    assert decide(rbac_filters(snapshot(None, scoped), port=5432), Request(port=5432)) == 200


JWKS = UNMATCHABLE_JWKS.replace("meshpilot-unfetched", "test-key")
JWT_RULES = _security(Kind.REQUEST_AUTHENTICATION, "jwt", {
    "selector": {"matchLabels": {"app": "reviews"}},
    "jwtRules": [{"issuer": "https://issuer.example", "jwks": JWKS,
                  "audiences": ["mesh"], "forwardOriginalToken": True,
                  "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                  "fromParams": ["token"], "outputPayloadToHeader": "x-payload",
                  "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]},
                 {"issuer": "other", "jwksUri": "https://idp.example/jwks"}],
})


def test_request_authentication_becomes_jwt_authn() -> None:
    hcm = manager(listener(snapshot(None, JWT_RULES), 9080).filter_chains[0])
    assert hcm.http_filters[0].name == "envoy.filters.http.jwt_authn"
    config = jwt_pb2.JwtAuthentication()
    hcm.http_filters[0].typed_config.Unpack(config)
    first, second = config.providers["origins-0"], config.providers["origins-1"]
    assert (first.issuer, list(first.audiences), first.forward) == (
        "https://issuer.example", ["mesh"], True)
    assert first.local_jwks.inline_string == JWKS
    assert (first.from_headers[0].name, first.from_headers[0].value_prefix) == ("x-jwt",
                                                                                "Bearer ")
    assert list(first.from_params) == ["token"]
    assert first.forward_payload_header == "x-payload"
    assert first.claim_to_headers[0].header_name == "x-sub"
    assert first.payload_in_metadata == "payload"
    # No fetcher (no running server): the URI's key set is one no token matches.
    assert second.local_jwks.inline_string == UNMATCHABLE_JWKS
    requirements = config.rules[0].requires.requires_any.requirements
    assert [r.provider_name for r in requirements[:2]] == ["origins-0", "origins-1"]
    assert requirements[2].HasField("allow_missing")
    # A key set without keys would make Envoy reject the listener: tokens are refused instead.
    empty = _security(Kind.REQUEST_AUTHENTICATION, "jwt", {
        "jwtRules": [{"issuer": "i", "jwks": '{"keys": []}'}]})
    hcm = manager(listener(snapshot(None, empty), 9080).filter_chains[0])
    hcm.http_filters[0].typed_config.Unpack(config)
    assert config.providers["origins-0"].local_jwks.inline_string == UNMATCHABLE_JWKS
    # Workloads no RequestAuthentication selects get no jwt_authn.
    assert all(f.name != "envoy.filters.http.jwt_authn"
               for f in manager(listener(snapshot(None), 9080).filter_chains[0]).http_filters)


@pytest.mark.parametrize(("principals", "claims", "status"), [
    (["https://issuer.example/alice"], {"iss": "https://issuer.example", "sub": "alice"}, 200),
    (["https://issuer.example/alice"], {"iss": "https://issuer.example", "sub": "bob"}, 403),
    (["https://issuer.example/alice"], None, 403),
    (["*"], {"iss": "x", "sub": "y"}, 200),
    (["*"], None, 403),
    (["https://issuer.example/*"], {"iss": "https://issuer.example", "sub": "z"}, 200),
    (["https://issuer.example/*"], {"iss": "https://other.example", "sub": "z"}, 403),
    (["*/alice"], {"iss": "anyone", "sub": "alice"}, 200),
])
def test_request_principals(
    principals: list[str], claims: dict[str, Any] | None, status: int
) -> None:
    policy = authz("jwt", {"rules": [{"from": [{"source": {"requestPrincipals": principals}}]}]})
    assert decide(rbac_filters(snapshot(None, JWT_RULES, policy)),
                  Request(claims=claims)) == status


@pytest.mark.parametrize(("condition", "claims", "status"), [
    ({"key": "request.auth.claims[groups]", "values": ["admin"]},
     {"groups": ["dev", "admin"]}, 200),
    ({"key": "request.auth.claims[groups]", "values": ["admin"]}, {"groups": "admin"}, 200),
    ({"key": "request.auth.claims[groups]", "values": ["admin"]}, {"groups": ["dev"]}, 403),
    ({"key": "request.auth.claims[org][team]", "values": ["core"]},
     {"org": {"team": "core"}}, 200),
    ({"key": "request.auth.audiences", "values": ["mesh"]}, {"aud": ["mesh", "x"]}, 200),
    ({"key": "request.auth.presenter", "notValues": ["evil"]}, {"azp": "good"}, 200),
    ({"key": "request.auth.presenter", "notValues": ["evil"]}, {"azp": "evil"}, 403),
])
def test_claim_conditions(condition: dict[str, Any], claims: dict[str, Any], status: int) -> None:
    policy = authz("claims", {"rules": [{"when": [condition]}]})
    assert decide(rbac_filters(snapshot(None, JWT_RULES, policy)),
                  Request(claims=claims)) == status


# --- Config: admission, validation, applied fields ---------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    (peer("p", {"mtls": {"mode": "STRIKT"}}), "unknown value 'STRIKT'"),
    (peer("p", {"portLevelMtls": {"80": {"mode": "STRICT"}}}), "requires a selector"),
    (peer("p", {"selector": {"matchLabels": {"a": "b"}},
                "portLevelMtls": {"0": {"mode": "STRICT"}}}), "between 1 and 65535"),
    (authz("a", {"action": "CUSTOM"}), "requires provider.name"),
    (authz("a", {"provider": {"name": "x"}}), "only allowed with the CUSTOM action"),
    (authz("a", {"rules": [{"from": [{"source": {}}]}]}), "`from.source` must not be empty"),
    (authz("a", {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}), "not a port"),
    (authz("a", {"rules": [{"from": [{"source": {"ipBlocks": ["1.2.3"]}}]}]}),
     "not an IP address"),
    (authz("a", {"rules": [{"to": [{"operation": {"paths": ["/a*b*"]}}]}]}),
     "only allowed as a prefix or suffix"),
    (authz("a", {"rules": [{"when": [{"key": "request.time", "values": ["1"]}]}]}),
     "unknown attribute"),
    (authz("a", {"rules": [{"when": [{"key": "source.ip"}]}]}), "values or notValues"),
    (authz("a", {"rules": [{"when": [{"key": "request.headers", "values": ["1"]}]}]}),
     "needs a name in brackets"),
    (authz("a", {"selector": {"matchLabels": {"a": "b"}},
                 "targetRef": {"kind": "Gateway", "name": "g"}}), "only one of selector"),
    (_security(Kind.REQUEST_AUTHENTICATION, "r", {"jwtRules": [{"jwks": "{}"}]}),
     "issuer must be set"),
    (_security(Kind.REQUEST_AUTHENTICATION, "r",
               {"jwtRules": [{"issuer": "i", "jwksUri": "ftp://x/jwks"}]}), "http(s):// or file"),
    (_security(Kind.REQUEST_AUTHENTICATION, "r", {"jwtRules": [{"issuer": "i", "bogus": 1}]}),
     "unknown field 'bogus'"),
])
def test_validation_rejects(config: Config, message: str) -> None:
    errors = validate_config(config)
    assert any(message in e.message for e in errors), [e.message for e in errors]


@pytest.mark.parametrize("config", [ALLOW_POLICY, JWT_RULES, peer("p", {
    "selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"},
    "portLevelMtls": {"9080": {"mode": "PERMISSIVE"}}})])
def test_valid_policies_are_accepted_and_fully_applied(config: Config) -> None:
    assert validate_config(config) == []
    assert unsupported_fields(config) == []


def test_fields_not_applied_are_named() -> None:
    policy = authz("a", {"targetRefs": [{"kind": "Gateway", "name": "g"}],
                         "rules": [{"from": [{"source": {"serviceAccounts": ["ns/sa"]}}]}]})
    assert unsupported_fields(policy) == ["spec.targetRefs",
                                          "spec.rules[0].from[0].source.serviceAccounts"]


def test_security_kinds_are_admitted_in_v1_and_v1beta1() -> None:
    from meshpilot.config.kinds import lookup

    for kind in (Kind.PEER_AUTHENTICATION, Kind.AUTHORIZATION_POLICY,
                 Kind.REQUEST_AUTHENTICATION):
        spec = lookup("security.istio.io", kind)
        assert spec is not None and spec.versions == ("v1", "v1beta1")


# --- Real Envoy accepts every shape -----------------------------------------------------------

ACCEPTANCE: dict[str, list[Config]] = {
    "permissive": [],
    "strict with port-level disable": [
        peer("m", {"mtls": {"mode": "STRICT"}}, "istio-system"),
        peer("w", {"selector": {"matchLabels": {"app": "reviews"}},
                   "portLevelMtls": {"5432": {"mode": "DISABLE"}}})],
    "istio mutual destination rule": [_dr({"mode": "ISTIO_MUTUAL"})],
    "authorization, every field": [
        ALLOW_POLICY,
        authz("deny", {"action": "DENY", "rules": [{"to": [{"operation": {
            "notMethods": ["GET"], "ports": ["9080"], "notHosts": ["*.internal"]}}],
            "when": [{"key": "destination.ip", "values": ["127.0.0.0/8"]},
                     {"key": "connection.sni", "values": ["*.mesh"]},
                     {"key": "remote.ip", "notValues": ["10.0.0.0/8"]},
                     {"key": "source.namespace", "values": ["shop*"]},
                     {"key": "source.principal", "values": ["*"]}]}]}),
        authz("audit", {"action": "AUDIT", "rules": [{}]}),
        authz("custom", {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
        authz("dry", {"rules": [{}]}, annotations={"istio.io/dry-run": "true"}),
    ],
    "jwt with request principals and claims": [
        JWT_RULES,
        authz("jwt", {"rules": [{"from": [{"source": {
            "requestPrincipals": ["https://issuer.example/*", "*/alice", "a/b"],
            "notRequestPrincipals": ["*"]}}],
            "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]},
                     {"key": "request.auth.principal", "values": ["a/b"]}]}]}),
    ],
}


@pytest.mark.parametrize("case", sorted(ACCEPTANCE))
def test_envoy_accepts(runtime: SecurityRuntime, case: str) -> None:
    snap = snapshot(runtime, *ACCEPTANCE[case])
    for proxy in (reviews_proxy(), sidecar("client")):
        assert envoy_rejects(snap, proxy) == "", case


def test_envoy_accepts_the_secrets(runtime: SecurityRuntime, tmp_path: Path) -> None:
    """The SDS resources as static secrets of a bootstrap Envoy validates (it parses the
    certificate chain and key, and the root)."""
    import subprocess

    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from google.protobuf import json_format

    from meshpilot.agent.envoy_process import find_envoy_binary

    boot = bootstrap_pb2.Bootstrap()
    for resource in GENERATORS[names.SECRET].generate(snapshot(runtime), reviews_proxy(),
                                                      ["default", "ROOTCA"]):
        resource.body.Unpack(boot.static_resources.secrets.add())
    path = tmp_path / "secrets.json"
    path.write_text(json_format.MessageToJson(boot))
    result = subprocess.run([str(find_envoy_binary()), "--mode", "validate", "-c", str(path),
                             "--disable-hot-restart", "--log-level", "error"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_proxy_without_identity_in_registry_is_default(runtime: SecurityRuntime) -> None:
    snap = snapshot(runtime)
    proxy = Proxy(id="x", type=NodeType.SIDECAR, namespace="shop", workload_name="nobody")
    (resource,) = GENERATORS[names.SECRET].generate(snap, proxy, ["default"])
    secret = secret_pb2.Secret()
    resource.body.Unpack(secret)
    leaf = x509.load_pem_x509_certificate(secret.tls_certificate.certificate_chain.inline_bytes)
    assert "spiffe://cluster.local/ns/shop/sa/default" in str(
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_intermediates_of_one_root_for_several_control_planes(tmp_path: Path) -> None:
    root = CertificateAuthority.load_or_create(tmp_path / "root", "cluster.local")
    first = create_intermediate(tmp_path / "root", tmp_path / "c1", "cluster-1")
    second = create_intermediate(tmp_path / "root", tmp_path / "c2", "cluster-2")
    assert not first.self_signed and first.root == second.root == root.root
    for ca in (first, second):
        issued = ca.issue(Identity("cluster.local", "a", "b"), HOUR)
        chain = x509.load_pem_x509_certificates(issued.certificate_chain)
        chain[0].verify_directly_issued_by(chain[1])
        chain[1].verify_directly_issued_by(x509.load_pem_x509_certificate(root.root))
    with pytest.raises(CaError, match="is not a root"):
        create_intermediate(tmp_path / "c1", tmp_path / "c3", "nested")
