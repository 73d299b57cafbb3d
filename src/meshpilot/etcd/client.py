"""etcd addresses and connections shared by the config store, the elector and the CLI.

    etcd://HOST:PORT[,HOST:PORT…]?prefix=/meshpilot/config&username=U&password=P&timeout=5

Each connection attempt takes the next host of the list, so a cluster member that went away
is skipped on the next reconnection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aetcd
import aetcd.exceptions
import grpc

from meshpilot.registry.etcd import split_host_port

KEEPALIVE = {
    # Notice a server that vanished without closing the connection (etcd's minimum ping
    # interval is 5 s; pinging more often gets the connection closed).
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
}

ERRORS = (aetcd.exceptions.ClientError, grpc.RpcError, OSError)
"""What a failed call to etcd raises (aetcd wraps most gRPC errors in ClientError)."""


@dataclass(frozen=True)
class EtcdAddress:
    text: str
    hosts: tuple[tuple[str, int], ...]
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> EtcdAddress:
        parts = urlsplit(text)
        if parts.scheme != "etcd" or not parts.netloc:
            raise ValueError(f"expected etcd://HOST:PORT[,HOST:PORT…][?…], got {text!r}")
        try:
            hosts = tuple(split_host_port(h) for h in parts.netloc.split(",") if h)
        except ValueError as error:
            raise ValueError(f"{text!r}: {error}") from None
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(text, hosts, params)

    @property
    def name(self) -> str:
        """The address without its parameters (no password in logs)."""
        return "etcd://" + ",".join(f"{h}:{p}" for h, p in self.hosts)

    def param(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)

    def seconds(self, name: str, default: float) -> float:
        value = self.params.get(name)
        try:
            return float(value) if value else default
        except ValueError:
            raise ValueError(f"{self.name}: {name}={value!r} is not a number") from None

    def client(self, attempt: int = 0) -> Any:
        """An (unconnected) aetcd client for the attempt-th host, round robin."""
        host, port = self.hosts[attempt % len(self.hosts)]
        return aetcd.Client(
            host, port,
            username=self.param("username") or None,
            password=self.param("password") or None,
            timeout=self.seconds("timeout", 5.0),
            options=KEEPALIVE,
        )


def describe(error: BaseException) -> str:
    """A one-line reason from aetcd's and gRPC's errors."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, grpc.aio.AioRpcError):
            return f"{candidate.code().name}: {candidate.details()}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
