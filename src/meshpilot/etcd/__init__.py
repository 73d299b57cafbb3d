"""etcd as meshpilot's own store: config documents (`config.etcd_source`) and leader election
(`etcd.leader`). The service registry adapter that reads other frameworks' keys is
`registry.etcd`."""
