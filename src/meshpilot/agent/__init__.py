"""The agent: what runs next to each Envoy.

It turns a proxy's identity into an Envoy bootstrap (`bootstrap`, `node`) and keeps that Envoy
running (`envoy_process`). The server side of the node contract, `proxy_from_node`, lives in
`node` too so both ends share one definition.
"""

from meshpilot.agent.bootstrap import build_bootstrap, render_bootstrap_json, write_bootstrap
from meshpilot.agent.envoy_process import (
    EnvoyOptions,
    EnvoyProcess,
    RestartPolicy,
    find_envoy_binary,
)
from meshpilot.agent.node import (
    HostPort,
    NodeInfo,
    XdsVariant,
    parse_host_port,
    parse_istio_node_id,
    proxy_from_node,
)

__all__ = [
    "EnvoyOptions",
    "EnvoyProcess",
    "HostPort",
    "NodeInfo",
    "RestartPolicy",
    "XdsVariant",
    "build_bootstrap",
    "find_envoy_binary",
    "parse_host_port",
    "parse_istio_node_id",
    "proxy_from_node",
    "render_bootstrap_json",
    "write_bootstrap",
]
