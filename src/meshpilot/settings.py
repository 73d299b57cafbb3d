"""Settings for `meshpilot discovery`, each with a name, a default and a sentence.

Read once at start-up (from the command line) and passed down; no module reads the
environment on import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from meshpilot.console.settings import ConsoleSettings
from meshpilot.xds.discovery import DebounceSettings


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    config_dirs: tuple[Path, ...] = ()
    """Directories of Istio YAML/JSON, watched recursively."""
    xds_address: str = "127.0.0.1:15010"
    """Where the ADS gRPC server listens (plaintext; loopback by default)."""
    debug_address: str = "127.0.0.1:15014"
    """Where the debug HTTP endpoints listen."""
    controlz_address: str = "127.0.0.1:9876"
    """Where ControlZ (introspection pages: log scopes, memory, process, metrics) listens."""
    debounce: DebounceSettings = field(default_factory=DebounceSettings)
    secrets_dir: Path | None = None
    """Directory of Gateway TLS credentials named by `credentialName` (see config/secrets.py)."""
    mesh_networks: Path | None = None
    """Istio MeshNetworks file: which network endpoints are in, and each network's gateways."""
    mesh_config: Path | None = None
    """Istio MeshConfig file: tracing providers, access logs, outbound policy, trust domain."""
    ca_dir: Path | None = None
    """The mesh CA's directory (plug-in `ca-cert.pem`/`ca-key.pem`, or a self-signed root
    created there); None runs without workload certificates, hence without mTLS."""
    trust_domain: str = ""
    """SPIFFE trust domain of workload identities; '' takes MeshConfig's `trustDomain`."""
    cert_ttl: float = 24 * 3600.0
    """Lifetime of workload certificates in seconds; they rotate at half of it."""
    secure_xds_address: str = "127.0.0.1:15012"
    """With `ca_dir`: the mutual-TLS xDS port (xds/secure.py); '' serves none."""
    ca_address: str = "127.0.0.1:15013"
    """With `ca_dir`: the TLS port for token-proven certificate requests; '' serves none."""
    config_sources: tuple[str, ...] = ()
    """Config sources beside the files: MCP-over-xDS servers (`xds://HOST:PORT`),
    Kubernetes API servers (`kube://?kubeconfig=PATH`) and etcd (`etcd://HOST:PORT?prefix=P`),
    see config/sources.py."""
    replicas_lease: str = ""
    """Leader election among replicas (`kube://?…&namespace=NS&name=LEASE` or
    `etcd://HOST:PORT?key=KEY`): only the leader writes status; '' makes this server its own
    leader (see kube/replicas.py)."""
    write_status: bool = True
    """Write validation and analysis results into the status of Kubernetes config objects."""
    registries: tuple[str, ...] = ()
    """Third-party registry URLs (`consul://…`, `etcd://…`), adapters found by scheme."""
    cluster_id: str = "Kubernetes"
    """Cluster id given to endpoints of config-defined registries (Istio's default name)."""
    analysis: bool = True
    """Analyze the config on every change (`/debug/analyze`, see analysis/server.py)."""
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    """The mesh console (`--console-address`, login, stats polling; see console/)."""
    rest_address: str = ""
    """Where REST-JSON xDS (`POST /v3/discovery:<type>`, Envoy's `api_type: REST`) listens;
    '' serves none (see xds/rest.py)."""
    workers: int = 1
    """Processes serving xDS on the one port (SO_REUSEPORT); see workers.py."""
    rest_xds_cluster: str = "xds-grpc"
    """The cluster REST clients reach this server through: resources sent over REST point
    their EDS and RDS config sources at it."""
