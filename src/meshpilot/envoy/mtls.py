"""Mutual TLS between sidecars with the mesh's workload certificates (delivered by SDS).

Client side (outbound clusters), as Istio decides it:

* a DestinationRule `tls.mode: ISTIO_MUTUAL` always uses mTLS, with its `sni` and
  `subjectAltNames` when given;
* any other explicit `tls` (DISABLE, SIMPLE, MUTUAL) is the user's and auto mTLS stays off;
* without `tls`, **auto mTLS**: the cluster carries two `transport_socket_matches` — mTLS for
  endpoints whose metadata says `tlsMode: istio`, plaintext for the rest — and EDS marks an
  endpoint `tlsMode: istio` when it has a sidecar (security/identity.py) and its own
  PeerAuthentication does not DISABLE mTLS on that port. A client thus uses mTLS exactly where
  the server side accepts it, per endpoint.

The server's certificate is checked against the mesh root and must carry a SPIFFE id of the
mesh's trust domain (or one of the DestinationRule's `subjectAltNames`). Which workload it is
is left to the server side's AuthorizationPolicy: clusters are shared by every client and built
once per snapshot, while service accounts of endpoints can change by EDS alone.

Server side (inbound listeners), by the workload's effective PeerAuthentication for the port
(security/policies.py):

    STRICT       one filter chain that requires a client certificate from the mesh
    PERMISSIVE   a TLS inspector; a chain for `transport_protocol: tls` (mTLS, as STRICT) and
                 one for `raw_buffer` (plaintext)
    DISABLE      plaintext only

Without a CA (`Snapshot.security` lacks certificates) nothing here applies: no proxy could
present a certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshpilot.envoy import tcp_routes
from meshpilot.envoy.protos import pack
from meshpilot.envoy.sds import mesh_common_context
from meshpilot.model import Endpoint, Proxy
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.identity import has_sidecar, trust_domain
from meshpilot.security.policies import DISABLE, PERMISSIVE, STRICT, peer_policy

log = logging.getLogger("meshpilot.envoy")

TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"
SOCKET_MATCH = "envoy.transport_socket_match"
"""Endpoint metadata namespace that `transport_socket_matches` are matched against."""
TLS_MODE = "tlsMode"
ISTIO = "istio"
ISTIO_MUTUAL = "ISTIO_MUTUAL"


def enabled(snapshot: Snapshot) -> bool:
    return snapshot.security is not None and snapshot.security.certificates is not None


def istio_sni(host: str, port: int, subset: str) -> str:
    """Istio's SNI for mesh traffic: `outbound_.<port>_.<subset>_.<host>`."""
    return f"outbound_.{port}_.{subset}_.{host}"


def upstream_context(
    snapshot: Snapshot, sni: str, subject_alt_names: Sequence[str] = ()
) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext(sni=sni)
    context.common_tls_context.CopyFrom(mesh_common_context())
    validation = context.common_tls_context.combined_validation_context
    matchers = validation.default_validation_context.match_typed_subject_alt_names
    uri = common_pb2.SubjectAltNameMatcher.URI
    if subject_alt_names:
        for name in subject_alt_names:
            matchers.add(san_type=uri, matcher=string_pb2.StringMatcher(exact=name))
    else:
        prefix = f"spiffe://{trust_domain(snapshot)}/"
        matchers.add(san_type=uri, matcher=string_pb2.StringMatcher(prefix=prefix))
    return context


def _socket(name: str, config: Any) -> base_pb2.TransportSocket:
    socket = base_pb2.TransportSocket(name=name)
    socket.typed_config.CopyFrom(pack(config))
    return socket


def apply_upstream(
    cluster: cluster_pb2.Cluster,
    snapshot: Snapshot,
    host: str,
    port: int,
    subset: str,
    policy: Mapping[str, Any],
) -> None:
    """Give an outbound cluster its mesh transport: ISTIO_MUTUAL or auto mTLS (see above)."""
    tls: Mapping[str, Any] | None = policy.get("tls")
    mode = str((tls or {}).get("mode") or "DISABLE").upper() if tls is not None else None
    if not enabled(snapshot):
        if mode == ISTIO_MUTUAL:
            _warn_once(snapshot, host)
        return
    if mode is not None and mode != ISTIO_MUTUAL:
        return  # the user's own TLS settings (cluster_policies) or DISABLE: no auto mTLS
    sni = istio_sni(host, port, subset)
    if mode == ISTIO_MUTUAL:
        assert tls is not None
        context = upstream_context(
            snapshot, str(tls.get("sni") or sni), [str(s) for s in tls.get("subjectAltNames") or ()]
        )
        cluster.transport_socket.CopyFrom(_socket(TLS_SOCKET, context))
        return
    mutual = cluster.transport_socket_matches.add(name=f"{TLS_MODE}-{ISTIO}")
    mutual.match.update({TLS_MODE: ISTIO})
    mutual.transport_socket.CopyFrom(_socket(TLS_SOCKET, upstream_context(snapshot, sni)))
    plain = cluster.transport_socket_matches.add(name=f"{TLS_MODE}-disabled")
    plain.transport_socket.CopyFrom(_socket(RAW_BUFFER_SOCKET, raw_buffer_pb2.RawBuffer()))


def _warn_once(snapshot: Snapshot, host: str) -> None:
    key = ("mtls-warned", host)
    if key not in snapshot.cache:
        snapshot.cache[key] = True
        log.warning("DestinationRule for %s: tls.mode ISTIO_MUTUAL needs the mesh CA "
                    "(meshpilot discovery --ca-dir); traffic stays plaintext", host)


def mark_endpoint(snapshot: Snapshot, endpoint: Endpoint, metadata: base_pb2.Metadata) -> None:
    """Label an EDS endpoint for auto mTLS when it has a sidecar that accepts mTLS."""
    if not enabled(snapshot) or not has_sidecar(endpoint):
        return
    mode = peer_policy(snapshot, endpoint.namespace, endpoint.labels).mode_for(endpoint.port)
    if mode != DISABLE:
        metadata.filter_metadata[SOCKET_MATCH].update({TLS_MODE: ISTIO})


def inbound_mode(snapshot: Snapshot, proxy: Proxy, port: int) -> str:
    """The proxy's effective mTLS mode on one inbound port; DISABLE without a CA."""
    if not enabled(snapshot):
        return DISABLE
    return peer_policy(snapshot, proxy.namespace, proxy.labels).mode_for(port)


def downstream_context() -> tls_pb2.DownstreamTlsContext:
    context = tls_pb2.DownstreamTlsContext()
    context.common_tls_context.CopyFrom(mesh_common_context())
    context.require_client_certificate.value = True
    return context


def apply_inbound(listener: listener_pb2.Listener, mode: str) -> None:
    """Turn an inbound listener's one plaintext filter chain into what `mode` accepts."""
    if mode not in (STRICT, PERMISSIVE):
        return
    plain = listener.filter_chains[0]
    secured = listener_components_pb2.FilterChain()
    secured.CopyFrom(plain)
    secured.name = "mtls"
    secured.transport_socket.CopyFrom(_socket(TLS_SOCKET, downstream_context()))
    if mode == STRICT:
        listener.ClearField("filter_chains")
        listener.filter_chains.append(secured)
        return
    plain_copy = listener_components_pb2.FilterChain()
    plain_copy.CopyFrom(plain)
    plain_copy.name = "plaintext"
    secured.filter_chain_match.transport_protocol = "tls"
    plain_copy.filter_chain_match.transport_protocol = "raw_buffer"
    listener.ClearField("filter_chains")
    listener.filter_chains.extend([secured, plain_copy])
    listener.listener_filters.append(tcp_routes.tls_inspector())
