"""Config sources by address, beside the config directories: `--config-source URL`.

    xds://HOST:PORT                    an MCP-over-xDS server (`config.mcp_source`)
    kube://?kubeconfig=PATH&context=…  Istio custom resources in a Kubernetes API server
                                       (`config.kube_source`; in a pod, `kube://` alone)
    etcd://HOST:PORT[,…]?prefix=P      Istio documents under a key prefix in etcd
                                       (`config.etcd_source`)
"""

from __future__ import annotations

from meshpilot.config.etcd_source import EtcdConfigStore
from meshpilot.config.kube_source import KubeConfigStore
from meshpilot.config.mcp_source import McpConfigStore
from meshpilot.config.store import ConfigStore
from meshpilot.etcd.client import EtcdAddress
from meshpilot.kube.client import KubeOptions

SCHEMES = ("xds://", "kube://", "etcd://")


def config_source(url: str) -> ConfigStore:
    if url.startswith("kube://"):
        return KubeConfigStore(KubeOptions.from_url(url))
    if url.startswith("xds://"):
        return McpConfigStore(url.removeprefix("xds://"))
    if url.startswith("etcd://"):
        return EtcdConfigStore(EtcdAddress.parse(url))
    raise ValueError(f"{url!r}: expected xds://HOST:PORT, kube://?kubeconfig=PATH or "
                     "etcd://HOST:PORT?prefix=P")
