"""End to end: the traffic features test_traffic.py leaves out, carried out by real Envoys.

One mesh for the module, with its own config: two backends `be-v1`/`be-v2` (app `be`, echo apps
behind sidecars), a client, a second client with other labels (`client2`), a client in another
namespace (`other`), a workload whose inbound side comes from a Sidecar `ingress`, and a few
servers the test runs itself (a TLS server for origination, one with mutual TLS, one that only
answers 500). Every feature has a host of its own; each test sends real requests through a
client's sidecar and checks what came back, what a backend saw, or the sidecar's stats.
"""

from __future__ import annotations

import collections
import json
import random
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshpilot.demo.mesh import Mesh, Workload, free_port, http_request, wait_until
from tests.gateway_certs import KeyPair, issue, make_ca

pytestmark = pytest.mark.e2e

# Hosts served by both backends on port 9080, each with subsets v1 and v2.
PLAIN_HOSTS = ["retryon", "pertry", "mirrorpct", "perdest", "redir", "rx", "deleg", "vsexp"]


# --- servers the test runs itself ---------------------------------------------------------------


@dataclass
class Server:
    """A threaded HTTP(S) server in the test process that records what it saw."""

    address: str
    status: int = 200
    name: str = ""
    context: ssl.SSLContext | None = None
    snis: list[str] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    _httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                peer: dict[str, Any] = {}
                if isinstance(self.connection, ssl.SSLSocket):
                    peer = dict(self.connection.getpeercert() or {})
                    if peer:
                        server.peers.append(peer)
                server.paths.append(self.path)
                data = json.dumps({"path": self.path, "peer": bool(peer)}).encode()
                self.send_response(server.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-workload", server.name)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        class Httpd(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # failed handshakes are part of the tests

        host, _, port = self.address.rpartition(":")
        httpd = Httpd((host, int(port)), Handler)
        if self.context is not None:
            def remember_sni(sock: Any, name: str | None, ctx: ssl.SSLContext) -> None:
                self.snis.append(name or "")

            self.context.sni_callback = remember_sni
            # The handshake happens in the handler thread, on first read.
            httpd.socket = self.context.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def tls_server(address: str, leaf: KeyPair, directory: Path, client_ca: KeyPair | None) -> Server:
    directory.mkdir(parents=True, exist_ok=True)
    leaf.write(directory, "server.pem", "server-key.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server-key.pem")
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.cert_pem.decode())
    return Server(address, name="tls", context=context)


# --- config -----------------------------------------------------------------------------------


def config(mesh: Mesh, v1_port: int, tls: dict[str, Any]) -> str:
    a = mesh.address
    workload_entries = [
        f"""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: default}}
spec:
  address: {a(last)}
  labels: {{app: be, version: {version}}}
""" for name, last, version in (("be-v1", 11, "v1"), ("be-v2", 12, "v2"))]
    services = [
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: features, namespace: default}}
spec:
  hosts: [{", ".join(f"{h}.example" for h in PLAIN_HOSTS)}, pool.example, exp.example,
          subpol.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: be}}}}
""",
        """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: two-ports, namespace: default}
spec:
  hosts: [ports.example, match.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9081, name: http-alt, protocol: HTTP}
  workloadSelector: {labels: {app: be}}
""",
        # A VIP, answered as Host.
        """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vip, namespace: default}
spec:
  hosts: [vip.example]
  addresses: [240.240.0.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: be, version: v1}}
""",
        # DNS resolution: endpoint names resolved by Envoy (localhost → 127.0.0.1, be-v1's app).
        *(f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example]
  location: MESH_EXTERNAL
  resolution: {resolution}
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {v1_port}}}}}]
""" for name, resolution in (("dns", "DNS"), ("dnsrr", "DNS_ROUND_ROBIN"))),
        # Protocols chosen by the port name's prefix alone.
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-named, namespace: default}}
spec:
  hosts: [tcpname.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9555, name: tcp-raw}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-raw: {v1_port}}}}}]
""",
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: http-named, namespace: default}}
spec:
  hosts: [httpname.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9556, name: http-web}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http-web: {v1_port}}}}}]
""",
        # Servers the test runs: TLS (SIMPLE and MUTUAL) and one that answers 500.
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-servers, namespace: default}}
spec:
  hosts: [tls-simple.example, tls-wrongsan.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: {tls["simple_ip"]}, ports: {{http: {tls["simple_port"]}}}}}]
""",
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-mutual, namespace: default}}
spec:
  hosts: [tls-mutual.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: {tls["mutual_ip"]}, ports: {{http: {tls["mutual_port"]}}}}}]
""",
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: outlier, namespace: default}}
spec:
  hosts: [outlier.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1_port}}}}}
  - {{address: {tls["bad_ip"]}, ports: {{http: {tls["bad_port"]}}}}}
""",
    ]
    subsets = [f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {h}, namespace: default}}
spec:
  host: {h}.example
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
""" for h in PLAIN_HOSTS]
    rules = [
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: default}
spec:
  host: pool.example
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
""",
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier, namespace: default}
spec:
  host: outlier.example
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 5m,
                       maxEjectionPercent: 50}
""",
        f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tls-simple, namespace: default}}
spec:
  host: tls-simple.example
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {tls["ca"]}, sni: secure.example,
           subjectAltNames: [secure.example]}}
""",
        f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tls-wrongsan, namespace: default}}
spec:
  host: tls-wrongsan.example
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {tls["ca"]}, sni: secure.example,
           subjectAltNames: [someone-else.example]}}
""",
        f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tls-mutual, namespace: default}}
spec:
  host: tls-mutual.example
  trafficPolicy:
    tls: {{mode: MUTUAL, caCertificates: {tls["ca"]}, clientCertificate: {tls["client_cert"]},
           privateKey: {tls["client_key"]}, sni: mutual.example,
           subjectAltNames: [mutual.example]}}
""",
        # portLevelSettings: port 9081 hashes on x-user; 9080 keeps the top-level round robin.
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ports, namespace: default}
spec:
  host: ports.example
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
    - port: {number: 9081}
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
""",
        # A rule selecting client2 by workloadSelector wins over `ports` for client2 only.
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ports-for-client2, namespace: default}
spec:
  host: ports.example
  workloadSelector: {matchLabels: {app: client2}}
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
""",
        # A subset's own trafficPolicy: `sticky` hashes, `plain` inherits round robin.
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: subpol, namespace: default}
spec:
  host: subpol.example
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: sticky
    labels: {app: be}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  - {name: plain, labels: {app: be}}
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: subpol, namespace: default}
spec:
  hosts: [subpol.example]
  http:
  - match: [{headers: {x-sub: {exact: sticky}}}]
    route: [{destination: {host: subpol.example, subset: sticky}}]
  - route: [{destination: {host: subpol.example, subset: plain}}]
""",
        # exportTo ".": TLS toward plaintext backends, so clients that get the rule fail.
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: exp, namespace: default}
spec:
  host: exp.example
  exportTo: [.]
  trafficPolicy:
    tls: {mode: SIMPLE, insecureSkipVerify: true}
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vsexp, namespace: default}
spec:
  hosts: [vsexp.example]
  exportTo: [.]
  http:
  - directResponse: {status: 418, body: {string: default only}}
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpname, namespace: default}
spec:
  hosts: [httpname.example]
  http:
  - headers: {response: {set: {x-rule: http-named}}}
    route: [{destination: {host: httpname.example}}]
""",
        # Match types, each naming itself in a response header.
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: match, namespace: default}
spec:
  hosts: [match.example]
  http:
  - match: [{queryParams: {v: {exact: "2"}}}]
    headers: {response: {set: {x-rule: query}}}
    route: [{destination: {host: match.example}}]
  - match: [{method: {exact: PUT}}]
    headers: {response: {set: {x-rule: method}}}
    route: [{destination: {host: match.example}}]
  - match: [{authority: {exact: "match.example:9080"}}]
    headers: {response: {set: {x-rule: authority}}}
    route: [{destination: {host: match.example}}]
  - match: [{uri: {exact: /CaSe}, ignoreUriCase: true}]
    headers: {response: {set: {x-rule: nocase}}}
    route: [{destination: {host: match.example}}]
  - match: [{uri: {prefix: /without}, withoutHeaders: {x-skip: {exact: "1"}}}]
    headers: {response: {set: {x-rule: without}}}
    route: [{destination: {host: match.example}}]
  - match: [{uri: {prefix: /src}, sourceLabels: {app: client2}}]
    headers: {response: {set: {x-rule: source}}}
    route: [{destination: {host: match.example}}]
  - match: [{port: 9081}]
    headers: {response: {set: {x-rule: port}}}
    route: [{destination: {host: match.example}}]
  - headers: {response: {set: {x-rule: default}}}
    route: [{destination: {host: match.example}}]
""",
        # Delegation: /a goes to a host-less delegate with routes of its own.
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: deleg, namespace: default}
spec:
  hosts: [deleg.example]
  http:
  - match: [{uri: {prefix: /a}}]
    delegate: {name: deleg-child, namespace: default}
  - headers: {response: {set: {x-rule: root}}}
    route: [{destination: {host: deleg.example, subset: v1}}]
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: deleg-child, namespace: default}
spec:
  http:
  - match: [{uri: {prefix: /a/x}}]
    headers: {response: {set: {x-rule: child-x}}}
    route: [{destination: {host: deleg.example, subset: v2}}]
  - headers: {response: {set: {x-rule: child}}}
    route: [{destination: {host: deleg.example, subset: v1}}]
""",
        r"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rx, namespace: default}
spec:
  hosts: [rx.example]
  http:
  - match: [{uri: {prefix: /rx/}}]
    rewrite: {uriRegexRewrite: {match: '^/rx/([a-z]+)/([0-9]+)$', rewrite: '/items/\2/\1'}}
    route: [{destination: {host: rx.example, subset: v1}}]
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pertry, namespace: default}
spec:
  hosts: [pertry.example]
  http:
  - retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: 5xx}
    route: [{destination: {host: pertry.example, subset: v1}}]
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: retryon, namespace: default}
spec:
  hosts: [retryon.example]
  http:
  - retries: {attempts: 3, retryOn: gateway-error}
    route: [{destination: {host: retryon.example, subset: v1}}]
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mirrorpct, namespace: default}
spec:
  hosts: [mirrorpct.example]
  http:
  - match: [{uri: {prefix: /marker}}]
    mirror: {host: mirrorpct.example, subset: v2}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: mirrorpct.example, subset: v1}}]
  - mirror: {host: mirrorpct.example, subset: v2}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: mirrorpct.example, subset: v1}}]
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: perdest, namespace: default}
spec:
  hosts: [perdest.example]
  http:
  - route:
    - destination: {host: perdest.example, subset: v2}
      headers: {request: {set: {x-dest: two}}, response: {set: {x-dest-resp: two}}}
""",
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: redir, namespace: default}
spec:
  hosts: [redir.example]
  http:
  - redirect: {uri: /landing, scheme: https, port: 8443, redirectCode: 302}
""",
        # Sidecar ingress: the `ingressed` workload's inbound port 9191 goes to its app.
        f"""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: ingressed, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: ingressed}}}}
  ingress:
  - port: {{number: 9191, protocol: HTTP, name: http-in}}
    defaultEndpoint: 127.0.0.1:{tls["ingressed_port"]}
""",
    ]
    return "\n---\n".join([*workload_entries, *services, *subsets, *rules])


@dataclass
class World:
    mesh: Mesh
    simple: Server
    mutual: Server
    bad: Server
    client_ca: KeyPair


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("traffic-more")
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(workdir, prefix=prefix)
    a = mesh.address
    certs = workdir / "certs"
    ca, client_ca = make_ca("upstream test CA"), make_ca("client test CA")
    certs.mkdir()
    (certs / "ca.pem").write_bytes(ca.cert_pem)
    issue(client_ca, "sidecar-client", [], client=True).write(certs, "client.pem", "client-key.pem")
    simple = tls_server(f"{a(50)}:{free_port(a(50))}", issue(ca, "secure", ["secure.example"]),
                        certs / "simple", None)
    mutual = tls_server(f"{a(51)}:{free_port(a(51))}", issue(ca, "mutual", ["mutual.example"]),
                        certs / "mutual", client_ca)
    bad = Server(f"{a(52)}:{free_port(a(52))}", status=500, name="bad")
    workloads = [
        Workload("client", a(10), {"app": "client"}, a(1)),
        Workload("client2", a(20), {"app": "client2"}, a(2)),
        Workload("other", a(30), {"app": "other"}, a(3), namespace="other"),
        Workload("be-v1", a(11), {"app": "be", "version": "v1"}, a(11)),
        Workload("be-v2", a(12), {"app": "be", "version": "v2"}, a(12), xds_variant="delta"),
        Workload("ingressed", a(60), {"app": "ingressed"}, a(6)),
    ]
    by_name = {w.name: w for w in workloads}
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    mesh.write_config("features.yaml", config(mesh, by_name["be-v1"].app_port, {
        "ca": certs / "ca.pem", "client_cert": certs / "client.pem",
        "client_key": certs / "client-key.pem",
        "simple_ip": a(50), "simple_port": simple.address.rpartition(":")[2],
        "mutual_ip": a(51), "mutual_port": mutual.address.rpartition(":")[2],
        "bad_ip": a(52), "bad_port": bad.address.rpartition(":")[2],
        "ingressed_port": by_name["ingressed"].app_port,
    }))
    servers = [simple, mutual, bad]
    try:
        for server in servers:
            server.start()
        mesh.start_discovery(["--debounce-after", "0.05"])
        mesh.wait_ready(60)
        for workload in workloads:
            mesh.start_workload(workload)
        for workload in workloads:  # generous: six Envoys start at once on a busy machine
            mesh.wait_envoy_ready(workload.name, timeout=90)
        yield World(mesh, simple, mutual, bad, client_ca)
    finally:
        mesh.stop()
        for server in servers:
            server.stop()


# --- helpers ----------------------------------------------------------------------------------


def send(
    mesh: Mesh, host: str, path: str = "/", headers: dict[str, str] | None = None,
    method: str = "GET", client: str = "client", port: int = 9080,
) -> tuple[int, dict[str, str], bytes]:
    address = f"{mesh.workloads[client].outbound_bind}:{port}"
    return http_request(address, host, path, headers=headers, method=method, timeout=15)


def seen_by(mesh: Mesh, workload: str, forget: bool = False) -> list[dict[str, Any]]:
    """What a backend received, read from the application directly (not through the mesh)."""
    app = mesh.workloads[workload].app_address
    _, _, body = http_request(app, "x", "/__requests", method="DELETE" if forget else "GET")
    requests: list[dict[str, Any]] = json.loads(body)["requests"]
    return requests


def forget(mesh: Mesh) -> None:
    for name in ("be-v1", "be-v2"):
        seen_by(mesh, name, forget=True)


def stat(mesh: Mesh, workload: str, name: str) -> int:
    """One counter or gauge of a sidecar's Envoy (0 when it does not exist yet)."""
    admin = mesh.workloads[workload].admin_address
    _, _, body = http_request(admin, "x", "/stats?filter=" + name.replace("|", "%7C"))
    for line in body.decode().splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def served_by(mesh: Mesh, host: str, times: int, **kwargs: Any) -> set[str]:
    """The backends that served `times` requests sent as `send(mesh, host, **kwargs)`."""
    out = set()
    for _ in range(times):
        status, headers, _ = send(mesh, host, **kwargs)
        assert status == 200
        out.add(headers["x-workload"])
    return out


# --- DestinationRule --------------------------------------------------------------------------


def test_connection_pool_overflows(world: World) -> None:
    """One connection and one pending request: of eight concurrent slow requests, the overflow is
    answered 503 by the client's sidecar itself (`x-envoy-overloaded`), counted in its stats."""
    mesh = world.mesh
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: send(mesh, "pool.example", "/delay/2"), range(8)))
    statuses = collections.Counter(status for status, _, _ in results)
    overloaded = [h for status, h, _ in results if status == 503]
    assert statuses[200] >= 1 and overloaded, statuses
    assert all(h.get("x-envoy-overloaded") == "true" for h in overloaded)
    overflow = "cluster.outbound|9080||pool.example.upstream_rq_pending_overflow"
    assert stat(mesh, "client", overflow) >= len(overloaded)
    # Without concurrency nothing overflows.
    assert [send(mesh, "pool.example")[0] for _ in range(3)] == [200, 200, 200]


def test_outlier_detection_ejects_the_failing_backend(world: World) -> None:
    mesh = world.mesh
    ejections = "cluster.outbound|9080||outlier.example.outlier_detection.ejections_enforced_total"
    assert stat(mesh, "client", ejections) == 0

    def only_healthy() -> bool:
        return all(send(mesh, "outlier.example")[1].get("x-workload") == "be-v1"
                   for _ in range(10))

    wait_until(only_healthy, 30, "the failing backend ejected")
    assert world.bad.paths, "the failing backend was never tried"
    assert stat(mesh, "client", ejections) >= 1
    tried = len(world.bad.paths)
    assert served_by(mesh, "outlier.example", 10) == {"be-v1"}
    assert len(world.bad.paths) == tried  # ejected for 5 minutes


def test_tls_origination_simple_with_sni_and_san(world: World) -> None:
    status, headers, body = send(world.mesh, "tls-simple.example", "/over-tls")
    assert (status, headers["x-workload"]) == (200, "tls")
    assert json.loads(body)["path"] == "/over-tls"
    assert "secure.example" in world.simple.snis
    assert world.simple.peers == []  # SIMPLE presents no client certificate


def test_tls_origination_rejects_a_wrong_subject_alt_name(world: World) -> None:
    before = list(world.simple.paths)
    status, _, body = send(world.mesh, "tls-wrongsan.example", "/never")
    assert status == 503
    assert b"upstream connect error" in body, body
    # Envoy counts the handshake it refused for the SAN.
    assert stat(world.mesh, "client",
                "cluster.outbound|9080||tls-wrongsan.example.ssl.fail_verify_san") >= 1
    assert world.simple.paths == before


def test_tls_origination_mutual_presents_the_client_certificate(world: World) -> None:
    status, headers, body = send(world.mesh, "tls-mutual.example", "/mutual")
    assert (status, headers["x-workload"]) == (200, "tls")
    assert json.loads(body)["peer"] is True
    assert "mutual.example" in world.mutual.snis
    subject = dict(item[0] for item in world.mutual.peers[-1]["subject"])
    assert subject["commonName"] == "sidecar-client"


def test_port_level_settings_apply_to_their_port_only(world: World) -> None:
    mesh = world.mesh
    user = {"x-user": "ana"}
    # Port 9080: the top-level round robin spreads one user's requests.
    assert served_by(mesh, "ports.example", 20, headers=user) == {"be-v1", "be-v2"}
    # Port 9081: hashed on x-user, each user sticks to one backend.
    for name in ("ana", "bo", "cy"):
        assert len(served_by(mesh, "ports.example", 12, headers={"x-user": name},
                             port=9081)) == 1


def test_destination_rule_workload_selector(world: World) -> None:
    """client2 gets the rule selecting it (hash on x-user); client keeps round robin."""
    mesh = world.mesh
    assert served_by(mesh, "ports.example", 20, headers={"x-user": "ana"}) == {"be-v1", "be-v2"}
    for name in ("ana", "bo", "cy"):
        assert len(served_by(mesh, "ports.example", 12, headers={"x-user": name},
                             client="client2")) == 1


def test_subset_traffic_policy(world: World) -> None:
    mesh = world.mesh
    plain = served_by(mesh, "subpol.example", 20, headers={"x-user": "ana"})
    assert plain == {"be-v1", "be-v2"}
    for name in ("ana", "bo", "cy"):
        headers = {"x-user": name, "x-sub": "sticky"}
        assert len(served_by(mesh, "subpol.example", 12, headers=headers)) == 1


def test_destination_rule_export_to(world: World) -> None:
    """The rule (TLS toward plaintext backends) applies in its own namespace only."""
    mesh = world.mesh
    assert send(mesh, "exp.example")[0] == 503
    status, headers, _ = send(mesh, "exp.example", client="other")
    assert (status, headers["x-workload"][:3]) == (200, "be-")


# --- VirtualService ---------------------------------------------------------------------------


def test_virtual_service_export_to(world: World) -> None:
    mesh = world.mesh
    assert send(mesh, "vsexp.example")[:3:2] == (418, b"default only")
    status, headers, _ = send(mesh, "vsexp.example", client="other")
    assert (status, headers["x-workload"][:3]) == (200, "be-")


def rule(mesh: Mesh, path: str = "/", host: str = "match.example", **kwargs: Any) -> str:
    status, headers, _ = send(mesh, host, path, **kwargs)
    assert status == 200
    return headers["x-rule"]


def test_match_types(world: World) -> None:
    mesh = world.mesh
    assert rule(mesh) == "default"
    assert rule(mesh, "/?v=2") == "query"
    assert rule(mesh, "/?v=3") == "default"
    assert rule(mesh, method="PUT") == "method"
    assert rule(mesh, "/x", host="match.example:9080") == "authority"
    assert rule(mesh, "/cAsE") == "nocase"
    assert rule(mesh, "/case/more") == "default"
    assert rule(mesh, "/without") == "without"
    assert rule(mesh, "/without", headers={"x-skip": "1"}) == "default"
    assert rule(mesh, "/src") == "default"
    assert rule(mesh, "/src", client="client2") == "source"
    assert rule(mesh, "/", port=9081) == "port"


def test_delegate(world: World) -> None:
    mesh = world.mesh
    status, headers, _ = send(mesh, "deleg.example", "/a/x/1")
    assert (status, headers["x-rule"], headers["x-workload"]) == (200, "child-x", "be-v2")
    status, headers, _ = send(mesh, "deleg.example", "/a/y")
    assert (status, headers["x-rule"], headers["x-workload"]) == (200, "child", "be-v1")
    status, headers, _ = send(mesh, "deleg.example", "/b")
    assert (status, headers["x-rule"], headers["x-workload"]) == (200, "root", "be-v1")


def test_uri_regex_rewrite(world: World) -> None:
    status, _, body = send(world.mesh, "rx.example", "/rx/shoe/42")
    assert status == 200
    assert json.loads(body)["path"] == "/items/42/shoe"


def test_per_try_timeout(world: World) -> None:
    mesh = world.mesh
    forget(mesh)
    status, _, _ = send(mesh, "pertry.example", "/delay/1")
    assert status == 504
    wait_until(lambda: len([r for r in seen_by(mesh, "be-v1") if r["path"] == "/delay/1"]) == 3,
               15, "three tries, each cut at 0.3 s")


def test_retry_on(world: World) -> None:
    mesh = world.mesh
    forget(mesh)
    assert send(mesh, "retryon.example", "/status/500")[0] == 500
    assert send(mesh, "retryon.example", "/status/502")[0] == 502
    paths = collections.Counter(r["path"] for r in seen_by(mesh, "be-v1"))
    assert paths == {"/status/500": 1, "/status/502": 4}  # gateway-error: 502 only


def test_mirror_percentage(world: World) -> None:
    mesh = world.mesh
    forget(mesh)
    for _ in range(40):
        assert send(mesh, "mirrorpct.example", "/half")[1]["x-workload"] == "be-v1"
    send(mesh, "mirrorpct.example", "/marker")
    wait_until(lambda: any(r["path"] == "/marker" for r in seen_by(mesh, "be-v2")), 15,
               "the marker's mirrored copy")
    copies = [r for r in seen_by(mesh, "be-v2") if r["path"] == "/half"]
    assert 0 < len(copies) < 40
    assert all(r["host"].startswith("mirrorpct.example-shadow") for r in copies)


def test_headers_per_destination(world: World) -> None:
    status, headers, body = send(world.mesh, "perdest.example")
    assert (status, headers["x-workload"], headers["x-dest-resp"]) == (200, "be-v2", "two")
    assert json.loads(body)["headers"]["x-dest"] == "two"


def test_redirect_code_scheme_and_port(world: World) -> None:
    status, headers, _ = send(world.mesh, "redir.example", "/old")
    assert status == 302
    assert headers["location"] == "https://redir.example:8443/landing"


# --- ServiceEntry -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["dns.example", "dnsrr.example"])
def test_dns_resolution(world: World, host: str) -> None:
    status, headers, body = send(world.mesh, host, "/resolved")
    assert (status, headers["x-workload"]) == (200, "be-v1")
    assert json.loads(body)["host"] == host


def test_addresses_are_answered_as_host(world: World) -> None:
    for host in ("240.240.0.1", "240.240.0.1:9080"):
        status, headers, _ = send(world.mesh, host)
        assert (status, headers["x-workload"]) == (200, "be-v1")


def test_protocol_by_port_name(world: World) -> None:
    mesh = world.mesh
    # http-…: routed by Host, with the VirtualService's header.
    status, headers, _ = send(mesh, "httpname.example", port=9556)
    assert (status, headers["x-rule"], headers["x-workload"]) == (200, "http-named", "be-v1")
    # tcp-…: a TCP proxy, so any Host reaches the one service, untouched.
    status, headers, body = send(mesh, "not-a-service", port=9555)
    assert (status, headers["x-workload"]) == (200, "be-v1")
    assert "x-request-id" not in json.loads(body)["headers"]  # no HTTP processing on the way


# --- Sidecar ----------------------------------------------------------------------------------


def test_sidecar_ingress_listener(world: World) -> None:
    mesh = world.mesh
    status, headers, body = http_request(f"{mesh.address(60)}:9191", "anything", "/in")
    assert (status, headers["x-workload"]) == (200, "ingressed")
    assert "x-request-id" in json.loads(body)["headers"]  # through the sidecar's HTTP listener
