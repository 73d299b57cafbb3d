"""`meshnetworks.MeshNetworksAnalyzer`: MeshNetworks endpoints from unknown registries.

A network's endpoints can be taken `fromRegistry`: the local cluster (`Kubernetes`) or a
remote cluster, known by the keys of the multicluster Secrets (label
`istio/multiCluster=true`). Any other registry name is a mistake (IST0126), reported on the
MeshNetworks object (`istio-system/meshnetworks` in the root namespace).
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import mapping, mappings, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import SECRET, Collection, Resource

UNKNOWN_REGISTRY = message_type("UnknownMeshNetworksServiceRegistry")
MESH_NETWORKS = Collection("", "MeshNetworks")
LOCAL_REGISTRY = "Kubernetes"
MULTICLUSTER_LABEL = "istio/multiCluster"


def mesh_networks_resource(ctx: Context) -> Resource:
    body = {"networks": dict(ctx.mesh.networks)}
    return Resource(MESH_NETWORKS, "v1alpha1", "meshnetworks", ctx.mesh.root_namespace, body,
                    file=ctx.mesh.networks_file)


class MeshNetworksAnalyzer:
    name = "meshnetworks.MeshNetworksAnalyzer"
    description = "Check the validity of MeshNetworks in the cluster"
    inputs: tuple[Collection, ...] = (SECRET,)

    def analyze(self, ctx: Context) -> None:
        if not ctx.mesh.networks:
            return
        registries = {LOCAL_REGISTRY}
        for secret in ctx.for_each(SECRET):
            if secret.labels.get(MULTICLUSTER_LABEL) == "true":
                registries.update(str(k) for k in mapping(secret.body.get("data")))
                registries.update(str(k) for k in mapping(secret.body.get("stringData")))
        resource = mesh_networks_resource(ctx)
        for network, definition in ctx.mesh.networks.items():
            for _, endpoint in mappings(mapping(definition).get("endpoints")):
                registry = text(endpoint.get("fromRegistry"))
                if registry and registry not in registries:
                    ctx.report(resource, UNKNOWN_REGISTRY, registry, str(network))
