"""Every analyzer meshpilot has; names follow Istio's where Istio has one.

`ALL` runs by default. `OPTIONAL` holds analyzers Istio also leaves out of its default set
(too noisy, or superseded by a merged analyzer); they run only when named with `--analyzer`.
`BY_NAME` finds both.
"""

from collections.abc import Mapping

from meshpilot.analysis.analyzer import Analyzer
from meshpilot.analysis.analyzers import (
    annotations,
    apiversions,
    applicationuid,
    authn,
    authz,
    conditions,
    deployment,
    deprecation,
    destinationrule,
    envoyfilter,
    externalcontrolplane,
    gateway,
    gatewayapi,
    injection,
    k8sgateway,
    maturity,
    meshnetworks,
    registry,
    schema,
    service,
    serviceentry,
    sidecar,
    smi,
    telemetry,
    virtualservice,
    webhook,
)

ALL: tuple[Analyzer, ...] = (
    annotations.K8sAnalyzer(),
    apiversions.APIVersionAnalyzer(),
    applicationuid.Analyzer(),
    authn.BlockedCIDRsAnalyzer(),
    authz.AuthorizationPoliciesAnalyzer(),
    conditions.ConditionAnalyzer(),
    deployment.MultiServiceAnalyzer(),
    deprecation.DeprecationAnalyzer(),
    destinationrule.CaCertificateAnalyzer(),
    destinationrule.SubsetSelectPodAnalyzer(),
    envoyfilter.EnvoyPatchAnalyzer(),
    externalcontrolplane.ExternalControlPlaneAnalyzer(),
    gateway.IngressGatewayPortAnalyzer(),
    gateway.SecretAnalyzer(),
    gateway.ConflictingGatewayAnalyzer(),
    gateway.CertificateAnalyzer(),
    gatewayapi.GatewayAPIReferenceAnalyzer(),
    injection.Analyzer(),
    injection.ImageAnalyzer(),
    k8sgateway.SelectorAnalyzer(),
    meshnetworks.MeshNetworksAnalyzer(),
    registry.RegistryProtocolAnalyzer(),
    registry.RegistryPortsAnalyzer(),
    registry.ServiceEntryCollisionAnalyzer(),
    registry.UnhealthyEndpointsAnalyzer(),
    registry.SubsetEndpointsAnalyzer(),
    registry.NetworkGatewayAnalyzer(),
    *(schema.ValidationAnalyzer(collection) for collection in schema.VALIDATED),
    service.PortNameAnalyzer(),
    serviceentry.Analyzer(),
    serviceentry.ConflictingServiceEntryProtocolAnalyzer(),
    sidecar.SelectorAnalyzer(),
    smi.SMIReferenceAnalyzer(),
    smi.SMITrafficSplitWeightAnalyzer(),
    telemetry.ProviderAnalyzer(),
    telemetry.SelectorAnalyzer(),
    telemetry.DefaultSelectorAnalyzer(),
    telemetry.LightstepAnalyzer(),
    virtualservice.DestinationHostAnalyzer(),
    virtualservice.DestinationRuleAnalyzer(),
    virtualservice.GatewayAnalyzer(),
    virtualservice.ConflictingMeshGatewayHostsAnalyzer(),
    virtualservice.JWTClaimRouteAnalyzer(),
    webhook.Analyzer(),
)

OPTIONAL: tuple[Analyzer, ...] = (
    maturity.AlphaAnalyzer(),
    sidecar.DefaultSelectorAnalyzer(),
)

BY_NAME: Mapping[str, Analyzer] = {analyzer.name: analyzer for analyzer in (*ALL, *OPTIONAL)}
