"""A proxyless gRPC client for tests, run as its own process:

    GRPC_XDS_BOOTSTRAP=bootstrap.json python tests/grpc_client.py xds:///reviews.default…:9080

gRPC reads its xDS bootstrap once per process, so each test client is a process. It keeps one
channel for its whole life (as an application would, which is what makes a live route change
observable) and answers commands: one JSON object per line on stdin, one JSON result per line
on stdout.

    {"calls": 50, "metadata": {"end-user": "jason"}, "timeout": 5, "delay": 0, "fail": 0}
    → {"backends": {"v1": 35, "v2": 15}, "errors": {"DEADLINE_EXCEEDED": 2},
       "details": ["…"], "ids": ["c3-0", …]}

Call ids are unique for the life of the process (`c<command number>-<call number>`).

Each call sends `{"id", "delay", "fail"}` to the Echo test service: the backend waits `delay`
seconds, fails the first `fail` attempts of that id with UNAVAILABLE, and answers with its name
and the attempt number. The process needs only grpcio, no meshpilot.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import grpc

METHOD = "/meshpilot.test.Echo/Call"


def run(target: str) -> None:
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(METHOD)
    for number, line in enumerate(sys.stdin):
        if not line.strip():
            continue
        command: dict[str, Any] = json.loads(line)
        print(json.dumps(_calls(call, command, f"c{number}")), flush=True)
    channel.close()


def _calls(call: Any, command: dict[str, Any], tag: str) -> dict[str, Any]:
    backends: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    details: list[str] = []
    ids = []
    metadata = tuple((str(k), str(v)) for k, v in (command.get("metadata") or {}).items())
    for i in range(int(command.get("calls", 1))):
        call_id = f"{tag}-{i}"
        ids.append(call_id)
        request = {"id": call_id, "delay": command.get("delay", 0), "fail": command.get("fail", 0)}
        try:
            reply = json.loads(
                call(
                    json.dumps(request).encode(),
                    metadata=metadata,
                    timeout=float(command.get("timeout", 10)),
                )
            )
        except grpc.RpcError as error:
            errors[error.code().name] += 1
            if len(details) < 5:
                details.append(str(error.details()))
            continue
        backends[reply["backend"]] += 1
    return {"backends": backends, "errors": errors, "details": details, "ids": ids}


if __name__ == "__main__":
    run(sys.argv[1])
