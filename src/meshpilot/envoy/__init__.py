"""Pure translation: a Snapshot and a Proxy in, Envoy protos out. No gRPC, no asyncio."""
