"""End to end: the mesh CA, mTLS between real Envoy sidecars, AuthorizationPolicy and JWT.

One mesh for the module, run by `meshpilot discovery --ca-dir` with short-lived workload
certificates (20 s, so one rotates every 10 s while the tests run). Workloads, each with its own
service account (its WorkloadEntry's `serviceAccount`, which also marks it as having a sidecar
for auto mTLS):

    client     default/sa/client   calls everything through its sidecar
    intruder   other/sa/intruder   a second caller, in another namespace
    server     default/sa/server   `server.example`: mTLS modes, certificates, rotation
    guarded    default/sa/guarded  `guarded.example` (HTTP) and `vault.example` (TCP): authz
    tokens     default/sa/tokens   `tokens.example`: RequestAuthentication
    custom     default/sa/custom   `custom.example` (HTTP) and `custom-db.example` (TCP): CUSTOM
                                   policies and the ext-authz servers

The external authorizers are an HTTP and a gRPC server the test runs outside the mesh, registered
as Istio expects: MESH_EXTERNAL ServiceEntries (`ext-authz.example`, `ext-authz-grpc.example`)
the MeshConfig providers name. `ext-authz-down.example` has nothing listening, for failOpen and
statusOnError.

Each test writes the policy it needs and polls until the mesh behaves accordingly (there are no
sleeps sized to the debounce). TLS is checked with Python's `ssl` against the inbound listeners
directly, holding a certificate the test has the mesh CA issue.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2

from meshpilot.demo.mesh import Mesh, Workload, get_json, http_request, wait_until
from meshpilot.model.security import Identity
from meshpilot.security.ca import CertificateAuthority

pytestmark = pytest.mark.e2e

PORT = 9080
TCP_PORT = 5432
ISSUER = "https://issuer.example"

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: NAME, namespace: default}
spec:
  hosts: [NAME.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: NAME}}
"""

VAULT = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vault, namespace: default}
spec:
  hosts: [vault.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  workloadSelector: {labels: {app: guarded}}
"""


CUSTOM_DB_PORT = 5433  # not vault's: TCP services without addresses are told apart by port
CUSTOM_DB = (VAULT.replace("vault", "custom-db").replace("app: guarded", "app: custom")
             .replace("5432", str(CUSTOM_DB_PORT)))


class Authorizer:
    """An HTTP ext-authz server: allows requests carrying `x-ext-authz: allow`, denies others
    with 403 and an `x-ext-authz-reason` header; records the paths it was asked about."""

    def __init__(self, address: str) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's connection pool expects

            def do_GET(self) -> None:
                paths.append(self.path)
                allowed = self.headers.get("x-ext-authz") == "allow"
                body = b"" if allowed else b"denied by the test authorizer\n"
                self.send_response(200 if allowed else 403)
                if not allowed:
                    self.send_header("x-ext-authz-reason", "not-allowed-by-test")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcAuthorizer:
    """The same decisions as `Authorizer`, as Envoy's gRPC `envoy.service.auth.v3.Authorization`
    service (grpcio has no stubs for it: a generic handler over the xds-protos messages)."""

    def __init__(self, address: str) -> None:
        self.paths: list[str] = []
        self.principals: list[str] = []
        """Callers' principals from TCP checks (Envoy's network ext_authz filter), which
        carry no HTTP request: those are allowed for the mesh's `client` only."""

        def check(request: auth_pb2.CheckRequest, _: Any) -> auth_pb2.CheckResponse:
            http = request.attributes.request.http
            response = auth_pb2.CheckResponse()
            if not http.path:
                principal = request.attributes.source.principal
                self.principals.append(principal)
                response.status.code = 0 if principal.endswith("/ns/default/sa/client") else 7
                return response
            self.paths.append(http.path)
            if http.headers.get("x-ext-authz") == "allow":
                response.ok_response.SetInParent()  # status code 0: OK
                return response
            response.status.code = 7  # PERMISSION_DENIED
            denied = response.denied_response
            denied.status.code = 403
            added = denied.headers.add().header
            added.key, added.value = "x-ext-authz-reason", "not-allowed-by-grpc"
            return response

        handler = grpc.method_handlers_generic_handler("envoy.service.auth.v3.Authorization", {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=auth_pb2.CheckRequest.FromString,
                response_serializer=auth_pb2.CheckResponse.SerializeToString),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"{address}:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(None)


def _authorizer_config(
    authorizer: Authorizer, grpc_authorizer: GrpcAuthorizer, address: str, down: str
) -> tuple[str, str]:
    """(mesh config documents, MeshConfig) for the authorizers and a dead one at `down`."""
    entries = "\n---\n".join(f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: {protocol.lower()}, protocol: {protocol}}}]
  endpoints: [{{address: {ip}}}]
""" for name, ip, port, protocol in (
        ("ext-authz", address, authorizer.port, "HTTP"),
        ("ext-authz-down", down, authorizer.port, "HTTP"),
        ("ext-authz-grpc", address, grpc_authorizer.port, "GRPC"),
    ))
    mesh_config = f"""
extensionProviders:
- name: ext-authz
  envoyExtAuthzHttp:
    service: ext-authz.example
    port: {authorizer.port}
    pathPrefix: /check
    timeout: 5s
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToDownstreamOnDeny: [x-ext-authz-reason]
- name: ext-authz-open
  envoyExtAuthzHttp: {{service: ext-authz-down.example, port: {authorizer.port}, failOpen: true}}
- name: ext-authz-closed
  envoyExtAuthzHttp:
    service: ext-authz-down.example
    port: {authorizer.port}
    statusOnError: "503"
- name: ext-authz-grpc
  envoyExtAuthzGrpc: {{service: ext-authz-grpc.example, port: {grpc_authorizer.port}, timeout: 5s}}
"""
    return entries, mesh_config


@dataclass
class SecureMesh:
    mesh: Mesh
    ca_dir: Path
    cert_file: Path
    key_file: Path
    jwt_key: rsa.RSAPrivateKey
    authorizer: Authorizer
    grpc_authorizer: GrpcAuthorizer

    def send(self, host: str, path: str = "/", client: str = "client",
             headers: dict[str, str] | None = None,
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        address = f"{self.mesh.workloads[client].outbound_bind}:{PORT}"
        return http_request(address, host, path, headers=headers, method=method)

    def status(self, host: str, path: str = "/", client: str = "client",
               headers: dict[str, str] | None = None, method: str = "GET") -> int:
        return self.send(host, path, client, headers, method)[0]

    def inbound(self, name: str) -> str:
        return f"{self.mesh.workloads[name].ip}:{PORT}"

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_dir / "root-cert.pem"))
        context.check_hostname = False  # workload certificates name a SPIFFE id, not a host
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def peer_certificate(self, name: str) -> x509.Certificate:
        """The certificate the workload's inbound listener presents in an mTLS handshake."""
        host, _, port = self.inbound(name).rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                self.tls_context().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def policy(self, name: str, text: str) -> None:
        self.mesh.write_config(f"policy-{name}.yaml", text)

    def remove_policy(self, name: str) -> None:
        (self.mesh.config_dir / f"policy-{name}.yaml").unlink(missing_ok=True)

    def stat(self, workload: str, suffix: str) -> int:
        """Sum of the Envoy counters of `workload` whose name ends with `suffix`."""
        stats = get_json(f"http://{self.mesh.workloads[workload].admin_address}/stats?format=json")
        return sum(int(s.get("value") or 0) for s in stats["stats"]
                   if "name" in s and s["name"].endswith(suffix))

    def token(self, claims: dict[str, Any], key: rsa.RSAPrivateKey | None = None) -> str:
        return _jwt(key or self.jwt_key, {"iss": ISSUER, "exp": int(time.time()) + 3600,
                                          **claims})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = key.sign(f"{header}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{body}.{_b64(signature)}"


def _jwks(key: rsa.RSAPrivateKey) -> str:
    numbers = key.public_key().public_numbers()

    def b64int(value: int) -> str:
        return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return json.dumps({"keys": [{"kty": "RSA", "kid": "test", "alg": "RS256", "use": "sig",
                                 "n": b64int(numbers.n), "e": b64int(numbers.e)}]})


@contextlib.contextmanager
def _jwks_server(body: str) -> Iterator[str]:
    """A local identity provider serving its key set over HTTP (for `jwksUri`)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMesh]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("security")
    mesh = Mesh(workdir, prefix=prefix)
    ca_dir = workdir / "ca"
    workloads = [
        Workload("client", mesh.address(10), {"app": "client"}, mesh.address(1)),
        Workload("intruder", mesh.address(11), {"app": "intruder"}, mesh.address(2),
                 namespace="other"),
        Workload("server", mesh.address(20), {"app": "server"}, mesh.address(20)),
        Workload("guarded", mesh.address(21), {"app": "guarded"}, mesh.address(21)),
        Workload("tokens", mesh.address(22), {"app": "tokens"}, mesh.address(22)),
        Workload("custom", mesh.address(23), {"app": "custom"}, mesh.address(23)),
    ]
    documents = [SERVICES.replace("NAME", n) for n in ("server", "guarded", "tokens", "custom")]
    documents += [VAULT, CUSTOM_DB]
    authorizer = Authorizer(mesh.address(30))
    grpc_authorizer = GrpcAuthorizer(mesh.address(30))
    entries, mesh_config = _authorizer_config(authorizer, grpc_authorizer, mesh.address(30),
                                              mesh.address(31))
    documents.append(entries)
    (workdir / "meshconfig.yaml").write_text(mesh_config)
    for w in workloads:
        w.service_account = w.name  # the callers belong to no service: identity from the flag
        documents.append(f"""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {w.name}, namespace: {w.namespace}}}
spec:
  address: {w.ip}
  labels: {json.dumps(w.labels)}
  serviceAccount: {w.name}
""")
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    mesh.write_config("mesh.yaml", "\n---\n".join(documents))
    mesh.start_discovery(["--debounce-after", "0.05", "--ca-dir", str(ca_dir),
                          "--cert-ttl", "20", "--mesh-config", str(workdir / "meshconfig.yaml")])
    try:
        mesh.wait_ready()
        for workload in workloads:
            mesh.start_workload(workload)
        for workload in workloads:
            mesh.wait_envoy_ready(workload.name)
        # A certificate of the mesh for the test itself, to speak mTLS to inbound listeners.
        ca = CertificateAuthority.load(ca_dir)
        issued = ca.issue(Identity("cluster.local", "test", "prober"), datetime.timedelta(hours=1))
        cert_file, key_file = workdir / "prober.crt", workdir / "prober.key"
        cert_file.write_bytes(issued.certificate_chain)
        key_file.write_bytes(issued.private_key)
        jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        yield SecureMesh(mesh, ca_dir, cert_file, key_file, jwt_key, authorizer,
                         grpc_authorizer)
    finally:
        mesh.stop()
        authorizer.close()
        grpc_authorizer.close()


def settled(check: Any, what: str, timeout: float = 20) -> None:
    """Wait until `check()` holds for several requests in a row. After a listener changes,
    Envoy drains the connections opened under the old one (within `--drain-time-s`); until
    then a request may still meet the old policy."""
    wait_until(lambda: all(check() for _ in range(8)), timeout, what)


def _refused(call: Any) -> bool:
    """Whether a plaintext request is refused at the connection (no HTTP answer at all)."""
    try:
        call()
    except (ConnectionError, http.client.HTTPException, TimeoutError, OSError):
        return True
    return False


def test_sidecars_talk_mtls_with_spiffe_certificates(secure: SecureMesh) -> None:
    handshakes = secure.stat("server", "ssl.handshake")
    assert secure.status("server.example") == 200
    # The server's inbound listener completed a TLS handshake for the client's request.
    assert secure.stat("server", "ssl.handshake") > handshakes
    certificate = secure.peer_certificate("server")
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/server"
    ]
    root = x509.load_pem_x509_certificate((secure.ca_dir / "root-cert.pem").read_bytes())
    certificate.verify_directly_issued_by(root)  # raises unless it chains to the mesh root


def test_peer_authentication_modes(secure: SecureMesh) -> None:
    def plaintext() -> tuple[int, dict[str, str], bytes]:
        return http_request(secure.inbound("server"), "server.example")

    # No PeerAuthentication: PERMISSIVE, Istio's default, takes plaintext and mTLS alike.
    assert plaintext()[0] == 200
    secure.policy("peer", """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
""")
    try:
        wait_until(lambda: _refused(plaintext), 15, "STRICT refusing plaintext")
        assert secure.status("server.example") == 200  # the mesh client still gets through
        # A workload policy overrides the mesh-wide one, and its port level overrides itself.
        secure.policy("peer-workload", """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: server, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9080": {mode: DISABLE}}
""")
        wait_until(lambda: plaintext()[0] == 200, 15, "port-level DISABLE taking plaintext")
        # Auto mTLS: the client sees the server's DISABLE and switches to plaintext.
        wait_until(lambda: secure.status("server.example") == 200, 15, "client in plaintext")
    finally:
        secure.remove_policy("peer-workload")
        secure.remove_policy("peer")
    wait_until(lambda: plaintext()[0] == 200 and secure.peer_certificate("server"), 15,
               "PERMISSIVE again: plaintext and mTLS")


def test_certificates_rotate_without_failed_requests(secure: SecureMesh) -> None:
    first = secure.peer_certificate("server").serial_number
    statuses: list[int] = []

    def rotated() -> bool:
        statuses.append(secure.status("server.example"))
        return secure.peer_certificate("server").serial_number != first

    wait_until(rotated, 40, "the server's certificate to rotate", interval=0.05)
    statuses.extend(secure.status("server.example") for _ in range(20))
    assert set(statuses) == {200}, statuses


GUARD = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: guard, namespace: default}
spec:
  selector: {matchLabels: {app: guarded}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {methods: [GET], paths: [/public/*, /admin]}}]
  - from: [{source: {namespaces: [other]}}]
    to: [{operation: {paths: [/shared]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {ports: ["5432"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: guarded}}
  action: DENY
  rules:
  # On the TCP port the path cannot be seen, and Istio drops it from a DENY rule, which would
  # then deny every connection: the port keeps this rule to HTTP.
  - to: [{operation: {ports: ["9080"], paths: [/admin]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: trial
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: guarded}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/public/trial]}}]
"""


def test_authorization_by_identity_namespace_path_and_method(secure: SecureMesh) -> None:
    secure.policy("guard", GUARD)
    settled(lambda: secure.status("guarded.example", "/private") == 403,
            "the ALLOW policy in force")
    assert secure.status("guarded.example", "/public/page") == 200
    assert secure.status("guarded.example", "/public/page", method="POST") == 403
    # DENY wins over ALLOW.
    assert secure.status("guarded.example", "/admin") == 403
    # Another identity (namespace `other`) gets only what its own rule allows.
    guarded = "guarded.example"
    assert secure.status(guarded, "/public/page", client="intruder") == 403
    assert secure.status(guarded, "/shared", client="intruder") == 200
    # A plaintext request carries no identity: nothing allows it.
    assert http_request(secure.inbound("guarded"), guarded, "/public/page")[0] == 403


def test_dry_run_policy_counts_without_denying(secure: SecureMesh) -> None:
    secure.policy("guard", GUARD)
    settled(lambda: secure.status("guarded.example", "/private") == 403, "the policies in force")
    before = secure.stat("guarded", "istio_dry_run_deny_.shadow_denied")
    assert secure.status("guarded.example", "/public/trial") == 200
    wait_until(lambda: secure.stat("guarded", "istio_dry_run_deny_.shadow_denied") > before, 5,
               "the dry-run denial counted")


def test_tcp_authorization_by_identity(secure: SecureMesh) -> None:
    secure.policy("guard", GUARD)

    def over_tcp(client: str) -> int:
        address = f"{secure.mesh.workloads[client].outbound_bind}:{TCP_PORT}"
        return http_request(address, "vault.example")[0]

    settled(lambda: secure.status("guarded.example", "/private") == 403, "the policies in force")
    assert over_tcp("client") == 200
    assert _refused(lambda: over_tcp("intruder"))


def test_request_authentication_and_request_principals(secure: SecureMesh) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with _jwks_server(_jwks(secure.jwt_key)) as jwks_uri:
        secure.policy("jwt", f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: tokens, namespace: default}}
spec:
  selector: {{matchLabels: {{app: tokens}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {jwks_uri}
    audiences: [mesh]
    outputPayloadToHeader: x-jwt-payload
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: tokens, namespace: default}}
spec:
  selector: {{matchLabels: {{app: tokens}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice", "{ISSUER}/bob"]}}}}]
    to: [{{operation: {{paths: [/api/*]}}}}]
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: [/admin]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: [admins]}}]
  - to: [{{operation: {{paths: [/open]}}}}]
""")

        def call(path: str, token: str | None = None) -> int:
            headers = {"authorization": f"Bearer {token}"} if token else None
            return secure.status("tokens.example", path, headers=headers)

        alice = secure.token({"sub": "alice", "aud": "mesh"})
        settled(lambda: call("/api/x", alice) == 200 and call("/api/x") == 403,
                "the JWT policies in force")
        assert call("/api/x") == 403  # no token: authentication passes, authorization refuses
        assert call("/open") == 200
        forged = secure.token({"sub": "alice", "aud": "mesh"}, key=other_key)
        assert call("/api/x", forged) == 401  # a token no provider accepts
        assert call("/open", forged) == 401
        expired = secure.token({"sub": "alice", "aud": "mesh", "exp": int(time.time()) - 600})
        assert call("/api/x", expired) == 401
        stranger = _jwt(secure.jwt_key, {"iss": "https://unknown.example", "sub": "alice",
                                         "exp": int(time.time()) + 3600})
        assert call("/api/x", stranger) == 401
        # A token for another audience does not authenticate the request (Envoy's jwt_authn,
        # with Istio's `requires_any: [provider, allow_missing]`, then passes it on without a
        # principal), so it is the policy that refuses it.
        assert call("/api/x", secure.token({"sub": "alice", "aud": "elsewhere"})) == 403
        assert call("/api/x", secure.token({"sub": "carol", "aud": "mesh"})) == 403
        admin = secure.token({"sub": "carol", "aud": "mesh", "groups": ["staff", "admins"]})
        assert call("/admin", admin) == 200
        assert call("/admin", secure.token({"sub": "carol", "aud": "mesh",
                                            "groups": ["staff"]})) == 403
        # The verified payload reaches the application; the token itself does not.
        status, _, body = secure.send("tokens.example", "/api/x",
                                      headers={"authorization": f"Bearer {alice}"})
        seen = json.loads(body)["headers"]
        assert status == 200 and "authorization" not in seen
        assert json.loads(base64.urlsafe_b64decode(seen["x-jwt-payload"] + "=="))["sub"] == "alice"


CUSTOM = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: default}
spec:
  selector: {matchLabels: {app: custom}}
  action: CUSTOM
  provider: {name: PROVIDER}
  rules:
  - to: [{operation: {paths: [/guarded/*]}}]
"""


def test_custom_policy_asks_the_external_authorizer(secure: SecureMesh) -> None:
    paths = secure.authorizer.paths
    secure.policy("custom", CUSTOM.replace("PROVIDER", "ext-authz"))
    try:
        # The authorizer's header, not just a 403: another test's policy may still be draining.
        settled(lambda: secure.send("custom.example", "/guarded/a")[1].get(
            "x-ext-authz-reason") == "not-allowed-by-test", "the CUSTOM policy in force")
        # Denied by the authorizer, whose header reaches the client (headersToDownstreamOnDeny).
        paths.clear()
        status, headers, body = secure.send("custom.example", "/guarded/a")
        assert status == 403 and headers.get("x-ext-authz-reason") == "not-allowed-by-test"
        assert b"denied by the test authorizer" in body
        assert paths == ["/check/guarded/a"]  # pathPrefix, then the request's path
        allow = {"x-ext-authz": "allow"}  # includeRequestHeadersInCheck sends it along
        status, _, body = secure.send("custom.example", "/guarded/b", headers=allow)
        assert status == 200 and b"custom" in body  # the echo app answered
        assert paths[-1] == "/check/guarded/b"
        # What the rules do not match never reaches the authorizer.
        paths.clear()
        assert secure.status("custom.example", "/open") == 200
        assert secure.status("custom.example", "/guarded") == 200
        assert paths == []
    finally:
        secure.remove_policy("custom")


def test_custom_policy_when_the_authorizer_is_down(secure: SecureMesh) -> None:
    try:
        secure.policy("custom", CUSTOM.replace("PROVIDER", "ext-authz-closed"))
        settled(lambda: secure.status("custom.example", "/guarded/a") == 503,
                "statusOnError while the authorizer is unreachable")
        assert secure.status("custom.example", "/open") == 200
        secure.policy("custom", CUSTOM.replace("PROVIDER", "ext-authz-open"))
        settled(lambda: secure.status("custom.example", "/guarded/a") == 200,
                "failOpen while the authorizer is unreachable")
        # An unknown provider denies what the rules match, never lets it through unchecked.
        secure.policy("custom", CUSTOM.replace("PROVIDER", "nobody"))
        settled(lambda: secure.status("custom.example", "/guarded/a") == 403,
                "the unknown provider's rules denied")
        assert secure.status("custom.example", "/open") == 200
    finally:
        secure.remove_policy("custom")


def test_custom_policy_with_a_grpc_authorizer(secure: SecureMesh) -> None:
    paths = secure.grpc_authorizer.paths
    secure.policy("custom", CUSTOM.replace("PROVIDER", "ext-authz-grpc"))
    try:
        settled(lambda: secure.send("custom.example", "/guarded/a")[1].get(
            "x-ext-authz-reason") == "not-allowed-by-grpc", "the gRPC provider in force")
        paths.clear()
        status, headers, _ = secure.send("custom.example", "/guarded/a")
        assert status == 403 and headers.get("x-ext-authz-reason") == "not-allowed-by-grpc"
        allow = {"x-ext-authz": "allow"}
        assert secure.status("custom.example", "/guarded/b", headers=allow) == 200
        assert secure.status("custom.example", "/open") == 200
        assert paths == ["/guarded/a", "/guarded/b"]  # never `/open`
    finally:
        secure.remove_policy("custom")


CUSTOM_TCP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom-tcp, namespace: default}
spec:
  selector: {matchLabels: {app: custom}}
  action: CUSTOM
  provider: {name: ext-authz-grpc}
  rules:
  - to: [{operation: {ports: ["5433"]}}]
"""


def test_custom_policy_on_tcp_asks_the_grpc_authorizer_per_connection(
    secure: SecureMesh,
) -> None:
    # A TCP port: Envoy's network ext_authz filter asks once per connection, with the
    # caller's mTLS identity and no HTTP request; the authorizer lets only `client` through.
    principals = secure.grpc_authorizer.principals

    def over_tcp(client: str) -> int:
        address = f"{secure.mesh.workloads[client].outbound_bind}:{CUSTOM_DB_PORT}"
        return http_request(address, "custom-db.example")[0]

    secure.policy("custom-tcp", CUSTOM_TCP)
    try:
        settled(lambda: _refused(lambda: over_tcp("intruder")), "the TCP CUSTOM policy in force")
        principals.clear()
        assert over_tcp("client") == 200
        assert _refused(lambda: over_tcp("intruder"))
        assert "spiffe://cluster.local/ns/default/sa/client" in principals
        assert "spiffe://cluster.local/ns/other/sa/intruder" in principals
        # The rule names port 5433 only: HTTP to the same workload is not checked.
        before = len(principals)
        assert secure.status("custom.example", "/open", client="intruder") == 200
        assert len(principals) == before
    finally:
        secure.remove_policy("custom-tcp")
