"""Config sources by address, beside the config directories: `--config-source URL`.

    xds://HOST:PORT                    an MCP-over-xDS server (`config.mcp_source`)
    kube://?kubeconfig=PATH&context=…  Istio custom resources in a Kubernetes API server
                                       (`config.kube_source`; in a pod, `kube://` alone)
"""

from __future__ import annotations

from meshpilot.config.kube_source import KubeConfigStore
from meshpilot.config.mcp_source import McpConfigStore
from meshpilot.config.store import ConfigStore
from meshpilot.kube.client import KubeOptions

SCHEMES = ("xds://", "kube://")


def config_source(url: str) -> ConfigStore:
    if url.startswith("kube://"):
        return KubeConfigStore(KubeOptions.from_url(url))
    if url.startswith("xds://"):
        return McpConfigStore(url.removeprefix("xds://"))
    raise ValueError(f"{url!r}: expected xds://HOST:PORT or kube://?kubeconfig=PATH")
