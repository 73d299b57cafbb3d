"""Hosts on separate networks inside this machine, for tests of what crosses a network.

Each network is a Linux network namespace joined to the test's own namespace by a veth pair: the
test's side holds the range's first address, the namespace holds the addresses it is given and
routes everything else through the test's side. The test's namespace does not forward between
networks, so a host
in one network reaches only the other network's first address (the test's namespace answers
it locally) — like two private networks whose only meeting point is a gateway. Addresses
come from the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) — those
this machine does not use itself; namespaces, links and addresses are removed on exit.

Needs root (CAP_NET_ADMIN) and `ip` from iproute2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Network:
    namespace: str
    """The namespace's name, for `ip netns exec`."""
    gateway: str
    """The test namespace's address on this network (the range's first host)."""
    addresses: tuple[str, ...]
    """The addresses inside the namespace."""
    cidr: str


def unavailable() -> str:
    """Why namespaces cannot be made here ('' when they can)."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _no_forwarding(link: str) -> None:
    """Packets arriving on `link` must not be routed on to the other network."""
    Path(f"/proc/sys/net/ipv4/conf/{link}/forwarding").write_text("0\n")


def free_ranges(*candidates: str) -> list[str]:
    """The candidate ranges that no route of this machine overlaps (its own uplink may sit in a
    documentation range: then tests must not reuse it)."""
    done = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                          text=True, check=True)
    used = []
    for line in done.stdout.splitlines():
        words = line.split()
        for word in words[:2]:
            with contextlib.suppress(ValueError):
                if "/" in word or word[0].isdigit():
                    used.append(ipaddress.ip_network(word, strict=False))
    return [c for c in candidates
            if not any(ipaddress.ip_network(c).overlaps(u) for u in used if u.prefixlen > 0)]


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_stale() -> None:
    """Remove namespaces and links left by test runs that were killed before cleaning up."""
    found = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=False).stdout
    for match in re.finditer(r"^\d+: (mp(\d+)o\d+)@", found, re.MULTILINE):
        if not _alive(int(match[2])):
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", match[1])
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False).stdout
    for match in re.finditer(r"^(mp(\d+)n\d+)\b", spaces, re.MULTILINE):
        if not _alive(int(match[2])):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", match[1])


@contextlib.contextmanager
def networks(*specs: tuple[str, tuple[int, ...]]) -> Iterator[list[Network]]:
    """One namespace per `(cidr, host numbers within it)`; `.1` is the test's side."""
    remove_stale()
    tag = str(os.getpid())  # names stay within 15 characters for pids below 10**8
    made: list[tuple[str, str]] = []
    try:
        out: list[Network] = []
        for index, (cidr, hosts) in enumerate(specs):
            net = ipaddress.ip_network(cidr)
            namespace, outer, inner = f"mp{tag}n{index}", f"mp{tag}o{index}", f"mp{tag}i{index}"
            gateway = str(net.network_address + 1)
            _ip("netns", "add", namespace)
            made.append((namespace, outer))
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", namespace)
            _ip("addr", "add", f"{gateway}/{net.prefixlen}", "dev", outer)
            _ip("link", "set", outer, "up")
            _no_forwarding(outer)
            inside = ("netns", "exec", namespace, "ip")
            addresses = tuple(str(net.network_address + host) for host in hosts)
            for address in addresses:
                _ip(*inside, "addr", "add", f"{address}/{net.prefixlen}", "dev", inner)
            _ip(*inside, "link", "set", inner, "up")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "route", "add", "default", "via", gateway)
            out.append(Network(namespace, gateway, addresses, str(net)))
        yield out
    finally:
        for namespace, outer in reversed(made):
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", outer)  # removes its peer in the namespace too
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", namespace)


def can_connect(namespace: str, host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection from inside `namespace` to `host:port` succeeds."""
    code = (f"import socket; socket.create_connection(({host!r}, {port}), timeout={timeout})")
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code],
                          capture_output=True, check=False, timeout=timeout + 10)
    return done.returncode == 0


def http_get(namespace: str, url: str, timeout: float = 5.0) -> str:
    """The body of a GET from inside `namespace` (e.g. an Envoy admin port on its loopback)."""
    code = f"import urllib.request, sys; sys.stdout.write(urllib.request.urlopen({url!r}).read()" \
           f".decode())"
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code],
                          capture_output=True, text=True, check=True, timeout=timeout + 10)
    return done.stdout
