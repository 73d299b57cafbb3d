"""Foreign config APIs (SMI, Gateway API) translated into Istio's at ingestion."""
