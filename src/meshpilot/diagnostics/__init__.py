"""Client-side diagnostics: ask the discovery server and Envoy's admin API, and show the answers
the way istioctl does (proxy-status, proxy-config, describe, precheck, admin log)."""
