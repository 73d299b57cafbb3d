"""Istio-compatible configuration analysis (`meshpilot analyze`).

Resources of any kind are read from files (`loader`), analyzers (`analyzers/`, one module per
family, named as Istio names them) inspect them through a `Context` and report coded messages
from the catalog (`messages`, built from Istio's message table plus meshpilot's MP codes),
and `offline` ties it together the way `istioctl analyze --use-kube=false` does. `output`
renders istioctl's log, JSON and YAML shapes; `suppress` implements `--suppress` and the
`galley.istio.io/analyze-suppress` annotation.
"""
