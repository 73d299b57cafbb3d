"""`make run`: the discovery server on the example mesh, with sample workloads and sidecars.

Starts everything, sends a few requests through the client's sidecar to show the routing, then
prints what to try and keeps running until Ctrl-C.
"""

from __future__ import annotations

import collections
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

from meshpilot.console.auth import hash_password, write_credentials
from meshpilot.demo.mesh import Mesh, example_workloads, http_request

CONSOLE = "127.0.0.1:15016"


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="meshpilot-example-"))
    # The server's default ports, so other `meshpilot` commands find it without flags.
    mesh = Mesh(workdir, xds_port=15010, debug_port=15014)
    mesh.write_example_config()
    workloads = example_workloads(mesh)
    client = workloads[0]
    try:
        # The console (topology, traffic, push history) with a password made for this run.
        password = secrets.token_urlsafe(12)
        credentials = workdir / "console-credentials"
        write_credentials(credentials, {"admin": hash_password(password)})
        mesh.start_discovery(["--console-address", CONSOLE,
                              "--console-credentials", str(credentials)])
        mesh.wait_ready()
        for workload in workloads:
            mesh.start_workload(workload)
        for workload in workloads:
            mesh.wait_envoy_ready(workload.name)
        reviews = f"{client.outbound_bind}:9080"
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(100):
            _, headers, _ = http_request(reviews, "reviews")
            counts[headers.get("x-workload", "?")] += 1
        _, _, body = http_request(reviews, "reviews", headers={"end-user": "jason"})
        jason = json.loads(body)["workload"]
        print(
            f"""
The example mesh is running (config: {mesh.config_dir}, logs: {mesh.log_dir}).

100 requests to reviews through the client's sidecar: {dict(sorted(counts.items()))}
A request with `end-user: jason` went to: {jason}

Console: http://{CONSOLE}/  (user admin, password {password})

Try:
  .venv/bin/meshpilot proxy-status                   # every sidecar SYNCED?
  .venv/bin/meshpilot proxy-config route client.default
  .venv/bin/meshpilot describe service reviews.default.svc.cluster.local
  .venv/bin/meshpilot analyze {mesh.config_dir}
  curl -s -H 'Host: reviews' http://{reviews}/ | python3 -m json.tool
  curl -s -H 'Host: reviews' -H 'end-user: jason' http://{reviews}/
  curl -s http://{client.outbound_bind}:27017/       # ratings-db, a TCP service
  curl -s {mesh.debug_url}/debug/syncz         # what each proxy acknowledged
  curl -s {mesh.debug_url}/debug/registryz     # services and endpoints
  curl -s http://{client.admin_address}/config_dump  # the client's Envoy config

Edit {mesh.config_dir / 'routing.yaml'} (e.g. weights 0/100): traffic follows in a second.
Press Ctrl-C to stop.""",
            flush=True,
        )
        while all(mesh.process_alive(name) for name in mesh.processes):
            time.sleep(1)
        dead = [name for name in mesh.processes if not mesh.process_alive(name)]
        print(f"stopped: {', '.join(dead)} exited; see {mesh.log_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except TimeoutError as error:
        print(f"error: {error}; logs in {mesh.log_dir}", file=sys.stderr)
        return 1
    finally:
        mesh.stop()


if __name__ == "__main__":
    sys.exit(main())
