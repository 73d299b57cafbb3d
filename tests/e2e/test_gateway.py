"""End to end: an ingress gateway (`meshpilot proxy router`) in front of two echo backends with
sidecars, and a TLS backend, driven by `meshpilot discovery --secrets-dir`.

Real HTTP, HTTPS and TCP go into the router's listeners on its own loopback address. TLS is
checked with Python's `ssl`: the certificate the router presents (subject and SAN), a MUTUAL
server refusing a client without certificate, SNI passthrough reaching the backend's own
certificate, and a credential rotated in the secrets directory reaching Envoy.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from meshpilot.demo.mesh import Mesh, Workload, get_json, http_request, wait_until
from tests.gateway_certs import KeyPair, issue, make_ca

pytestmark = pytest.mark.e2e

HTTP_PORT = 18080
REDIRECT_PORT = 18081
HTTPS_PORT = 18443
PASSTHROUGH_PORT = 19443
TCP_PORT = 31400


@dataclass
class Gateway:
    mesh: Mesh
    bind: str
    ca: KeyPair
    client: KeyPair
    secrets: Path

    def address(self, port: int) -> str:
        return f"{self.bind}:{port}"


class _TlsBackend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        data = json.dumps({"workload": "tls-backend", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-workload", "tls-backend")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def tls_backend(address: str, pair: KeyPair, workdir: Path) -> Iterator[int]:
    """An HTTPS server with its own certificate, which only passthrough can show a client."""
    (workdir / "backend.crt").write_bytes(pair.cert_pem)
    (workdir / "backend.key").write_bytes(pair.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(workdir / "backend.crt", workdir / "backend.key")
    server = ThreadingHTTPServer((address, 0), _TlsBackend)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def config(mesh: Mesh, files: Path, tls_backend_port: int) -> str:
    a = mesh.address
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web-a, namespace: default}}
spec:
  hosts: [web-a.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: web-a}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web-b, namespace: default}}
spec:
  hosts: [web-b.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: web-b}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 27017, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: web-b}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-backend, namespace: default}}
spec:
  hosts: [tls-backend.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {a(50)}, ports: {{tls: {tls_backend_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-a, namespace: default}}
spec: {{address: {a(11)}, labels: {{app: web-a}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-b, namespace: default}}
spec: {{address: {a(12)}, labels: {{app: web-b}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
    hosts: [a.example.com, "default/b.example.com"]
  - port: {{number: {REDIRECT_PORT}, name: http-redirect, protocol: HTTP}}
    hosts: [secure.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: {HTTPS_PORT}, name: https, protocol: HTTPS}}
    hosts: [secure.example.com]
    tls:
      mode: SIMPLE
      serverCertificate: {files / "tls.crt"}
      privateKey: {files / "tls.key"}
  - port: {{number: {HTTPS_PORT}, name: https-mtls, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: {files / "tls.crt"}
      privateKey: {files / "tls.key"}
      caCertificates: {files / "ca.crt"}
  - port: {{number: {HTTPS_PORT}, name: https-credential, protocol: HTTPS}}
    hosts: [cred.example.com]
    tls: {{mode: SIMPLE, credentialName: cred-cert}}
  - port: {{number: {PASSTHROUGH_PORT}, name: tls, protocol: TLS}}
    hosts: ["*.passthrough.example.com"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.example.com, secure.example.com, mtls.example.com, cred.example.com]
  gateways: [istio-system/ingress]
  http:
  - route: [{{destination: {{host: web-a}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: b, namespace: default}}
spec:
  hosts: [b.example.com]
  gateways: [istio-system/ingress]
  http:
  - route: [{{destination: {{host: web-b}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: passthrough, namespace: default}}
spec:
  hosts: [backend.passthrough.example.com]
  gateways: [istio-system/ingress]
  tls:
  - match: [{{sniHosts: [backend.passthrough.example.com]}}]
    route: [{{destination: {{host: tls-backend}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/ingress]
  tcp:
  - match: [{{port: {TCP_PORT}}}]
    route: [{{destination: {{host: tcp-echo}}}}]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway")
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(workdir, prefix=prefix)
    ca = make_ca("meshpilot gateway test CA")
    files = workdir / "certs"
    issue(ca, "secure.example.com", ["secure.example.com", "mtls.example.com"]).write(files)
    (files / "ca.crt").write_bytes(ca.cert_pem)
    secrets = workdir / "secrets"
    issue(ca, "cred.example.com", ["cred.example.com"]).write(
        secrets / "istio-system" / "cred-cert"
    )
    backend_pair = issue(ca, "backend.passthrough.example.com",
                         ["backend.passthrough.example.com"])
    with tls_backend(mesh.address(50), backend_pair, workdir) as backend_port:
        mesh.config_dir.mkdir(parents=True, exist_ok=True)
        mesh.write_config("gateway.yaml", config(mesh, files, backend_port))
        mesh.start_discovery(["--debounce-after", "0.05", "--secrets-dir", str(secrets)])
        try:
            mesh.wait_ready()
            assert get_json(f"{mesh.debug_url}/debug/config_errors") == []
            for name, last in (("web-a", 11), ("web-b", 12)):
                address = mesh.address(last)
                mesh.start_workload(Workload(name, address, {"app": name}, address))
            router = Workload("ingress", mesh.address(2), {"istio": "ingressgateway"},
                              mesh.address(2), namespace="istio-system")
            mesh.start_router(router)
            for name in mesh.workloads:
                mesh.wait_envoy_ready(name)
            yield Gateway(mesh, router.outbound_bind, ca,
                          issue(ca, "client", ["client.example.com"], client=True), secrets)
        finally:
            mesh.stop()


def who(gw: Gateway, host: str, port: int = HTTP_PORT) -> tuple[int, str]:
    status, headers, _ = http_request(gw.address(port), host)
    return status, headers.get("x-workload", "")


def tls_client(gw: Gateway, client: KeyPair | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=gw.ca.cert_pem.decode())
    if client is not None:
        directory = gw.mesh.workdir / "client"
        client.write(directory)
        context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    return context


@dataclass
class TlsAnswer:
    subject_cn: str
    san: list[str]
    status: int
    workload: str


def https_get(
    gw: Gateway, port: int, server_name: str, client: KeyPair | None = None
) -> TlsAnswer:
    """A TLS handshake with SNI `server_name`, then GET / with the same Host."""
    context = tls_client(gw, client)
    with (
        socket.create_connection((gw.bind, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        conn = http.client.HTTPConnection(gw.bind, port, timeout=5)
        conn.sock = tls
        conn.request("GET", "/", headers={"Host": server_name})
        response = conn.getresponse()
        response.read()
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return TlsAnswer(
            str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
            san.get_values_for_type(x509.DNSName),
            response.status,
            response.getheader("x-workload") or "",
        )


def test_http_routes_by_host(gw: Gateway) -> None:
    wait_until(lambda: who(gw, "a.example.com") == (200, "web-a"), 20, "a.example.com → web-a")
    assert who(gw, "b.example.com") == (200, "web-b")
    assert who(gw, "a.example.com:18080") == (200, "web-a")


def test_unknown_host_gets_404(gw: Gateway) -> None:
    wait_until(lambda: who(gw, "a.example.com")[0] == 200, 20, "the HTTP listener")
    assert who(gw, "unknown.example.com")[0] == 404


def test_https_redirect_answers_301(gw: Gateway) -> None:
    def location() -> str | None:
        status, headers, _ = http_request(gw.address(REDIRECT_PORT), "secure.example.com", "/x")
        return headers.get("location") if status == 301 else None

    assert wait_until(location, 20, "a 301") == "https://secure.example.com/x"


def test_https_simple_presents_the_file_certificate(gw: Gateway) -> None:
    answer = wait_until(lambda: https_get(gw, HTTPS_PORT, "secure.example.com"), 20, "HTTPS")
    assert answer.subject_cn == "secure.example.com"
    assert "secure.example.com" in answer.san
    assert (answer.status, answer.workload) == (200, "web-a")


def test_mutual_tls_requires_a_client_certificate(gw: Gateway) -> None:
    answer = wait_until(lambda: https_get(gw, HTTPS_PORT, "mtls.example.com", gw.client), 20,
                        "mTLS with a client certificate")
    assert (answer.status, answer.workload) == (200, "web-a")
    # Without one the router ends the handshake (under TLS 1.3 the client sees it as an EOF or
    # a reset on its first read rather than as an alert).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(gw, HTTPS_PORT, "mtls.example.com")
    # A certificate from another CA is refused as well (an `unknown ca` alert, or again an EOF
    # when the close overtakes it).
    stranger = issue(make_ca("someone else"), "stranger", ["stranger.example.com"], client=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(gw, HTTPS_PORT, "mtls.example.com", stranger)


def test_credential_name_comes_from_the_secrets_dir(gw: Gateway) -> None:
    answer = wait_until(lambda: https_get(gw, HTTPS_PORT, "cred.example.com"), 20,
                        "the credentialName server")
    assert answer.subject_cn == "cred.example.com"
    assert answer.san == ["cred.example.com"]
    assert (answer.status, answer.workload) == (200, "web-a")


def test_passthrough_reaches_the_backend_certificate_by_sni(gw: Gateway) -> None:
    answer = wait_until(
        lambda: https_get(gw, PASSTHROUGH_PORT, "backend.passthrough.example.com"), 20,
        "passthrough to the TLS backend",
    )
    # The router never terminated: the certificate is the backend's own.
    assert answer.subject_cn == "backend.passthrough.example.com"
    assert (answer.status, answer.workload) == (200, "tls-backend")
    # An SNI no tls route names matches no filter chain: the router closes the connection.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(gw, PASSTHROUGH_PORT, "other.passthrough.example.com")


def test_tcp_server_proxies_to_the_tcp_route(gw: Gateway) -> None:
    # The echo backend speaks HTTP; through a TCP proxy any Host reaches it.
    wait_until(lambda: who(gw, "whatever", TCP_PORT) == (200, "web-b"), 20, "TCP to web-b")


def test_rotated_credential_reaches_envoy(gw: Gateway) -> None:
    wait_until(lambda: https_get(gw, HTTPS_PORT, "cred.example.com"), 20, "the credential")
    directory = gw.secrets / "istio-system" / "cred-cert"
    original = {name: (directory / name).read_bytes() for name in ("tls.crt", "tls.key")}
    issue(gw.ca, "cred.example.com rotated", ["cred.example.com"]).write(directory)

    def presented() -> str:
        return https_get(gw, HTTPS_PORT, "cred.example.com").subject_cn

    wait_until(lambda: presented() == "cred.example.com rotated", 20, "the rotated certificate")
    for name, data in original.items():
        (directory / name).write_bytes(data)
    wait_until(lambda: presented() == "cred.example.com", 20, "the original certificate back")


def test_router_config_is_synced(gw: Gateway) -> None:
    def router_synced() -> bool:
        for proxy in get_json(f"{gw.mesh.debug_url}/debug/syncz"):
            if proxy["proxy_type"] == "router":
                return all(proxy[t]["status"] == "SYNCED" for t in ("CDS", "LDS", "RDS"))
        return False

    wait_until(router_synced, 20, "the router SYNCED (no NACK)")
    dump = gw.mesh.envoy_config_dump("ingress")
    names = {
        item["name"]
        for config in dump["configs"]
        if config["@type"].endswith("ListenersConfigDump")
        for item in config.get("dynamic_listeners", [])
    }
    assert names == {f"0.0.0.0_{p}" for p in (HTTP_PORT, REDIRECT_PORT, HTTPS_PORT,
                                              PASSTHROUGH_PORT, TCP_PORT)}


def test_missing_certificate_file_rejects_only_that_listener(gw: Gateway) -> None:
    """Envoy NACKs the listener whose certificate file is missing and keeps applying the rest
    of the same update; once the Gateway is fixed the router is SYNCED again."""
    path = gw.mesh.write_config("broken.yaml", f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: broken, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 18444, name: https, protocol: HTTPS}}
    hosts: [a.example.com]
    tls:
      mode: SIMPLE
      serverCertificate: {gw.mesh.workdir / "no-such.crt"}
      privateKey: {gw.mesh.workdir / "no-such.key"}
  - port: {{number: 18082, name: http, protocol: HTTP}}
    hosts: [a.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: broken, namespace: default}}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/broken]
  http:
  - route: [{{destination: {{host: web-b}}}}]
""")

    def router_lds() -> dict[str, Any]:
        (status,) = [p["LDS"] for p in get_json(f"{gw.mesh.debug_url}/debug/syncz")
                     if p["proxy_type"] == "router"]
        return dict(status)

    error = wait_until(lambda: router_lds()["status"] == "ERROR" and router_lds()["error"], 20,
                       "the router's NACK")
    assert "0.0.0.0_18444" in error and "no-such" in error
    wait_until(lambda: who(gw, "a.example.com", 18082) == (200, "web-b"), 20,
               "the good listener of the same update")
    assert who(gw, "a.example.com") == (200, "web-a")
    path.unlink()
    wait_until(lambda: router_lds()["status"] == "SYNCED", 20, "the router SYNCED again")
