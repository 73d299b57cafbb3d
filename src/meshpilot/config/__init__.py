"""Config sources feeding one store: files today; etcd, MCP and Kubernetes later."""
