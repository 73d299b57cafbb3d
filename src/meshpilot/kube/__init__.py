"""Kubernetes API access for meshpilot: a thin adapter over `kubernetes_asyncio` (`client`), a
list-and-watch cache (`informer`), leader election with a Lease (`leader`) and status
write-back (`status`). The registry, config store and registry-sync target build on these.
"""
