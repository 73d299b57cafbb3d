"""`meshpilot registry-sync`: third-party registries written out as Istio config."""
