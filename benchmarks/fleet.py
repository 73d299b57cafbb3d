"""A fleet of simulated proxies spread over worker processes, and the scenario runner.

The fleet starts `procs` processes (spawned, so none inherits the benchmark's state) each
running its share of the proxies (see simproxy.py), and talks to them over pipes.

A scenario repetition: mark every proxy (counters reset, replies confirm the mark), note the
time, make the change, then poll until every expected proxy has received and ACKed something
since the mark and no proxy has ACKed anything for `quiet` seconds. A proxy's latency is the
time of its last ACK minus the time of the change: "the change has reached it" includes any
follow-up it triggers (a new cluster's EDS). The server's CPU over the same window, and the
bytes every proxy received, make the per-push figures.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import procstat
from benchmarks.simproxy import WorkerArgs, worker_main


class Fleet:
    def __init__(self, target: str, proxies: int, procs: int, namespace: str, delta: bool,
                 capture: bool = True) -> None:
        context = multiprocessing.get_context("spawn")
        self.proxies = proxies
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        share, extra = divmod(proxies, procs)
        first = 0
        for w in range(procs):
            count = share + (1 if w < extra else 0)
            if not count:
                continue
            ours, theirs = context.Pipe()
            args = WorkerArgs(target, first, count, namespace, delta, capture and w == 0)
            process = context.Process(target=worker_main, args=(theirs, args), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
            first += count

    def ask(self, *command: Any) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(command)
        return [pipe.recv() for pipe in self.pipes]

    def status(self) -> dict[str, Any]:
        replies = self.ask("status")
        errors = sorted({e for r in replies for e in r["errors"]})
        if any(r["failed"] for r in replies):
            raise RuntimeError(f"simulated proxies failed: {errors[:3]}")
        total = {k: sum(r[k] for r in replies)
                 for k in ("connected", "responses", "bytes", "acked", "subscribed")}
        total["last"] = max(r["last"] for r in replies)
        return total

    def wait_synced(self, quiet: float, timeout: float) -> float:
        """Wait until every proxy subscribed to all four types and all went quiet; returns the
        time that took."""
        start = time.monotonic()
        while True:
            status = self.status()
            now = time.monotonic()
            if status["subscribed"] == self.proxies and now - status["last"] >= quiet:
                return float(status["last"] - start)
            if now - start > timeout:
                raise TimeoutError(f"fleet not synced after {timeout}s: {status}")
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            self.ask("stop")
            for pipe in self.pipes:
                pipe.recv()
        except (EOFError, OSError, BrokenPipeError):
            pass
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    """Per proxy and repetition: seconds from the change to its last ACK."""
    cpu: list[float] = field(default_factory=list)
    """Server CPU seconds per repetition."""
    received: list[int] = field(default_factory=list)
    responses: list[int] = field(default_factory=list)
    reached: list[int] = field(default_factory=list)
    types: dict[str, int] = field(default_factory=dict)
    captures: list[list[tuple[str, bytes]]] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        lat = sorted(self.latencies) or [float("nan")]
        return {
            "p50_ms": _quantile(lat, 0.50) * 1000,
            "p99_ms": _quantile(lat, 0.99) * 1000,
            "max_ms": lat[-1] * 1000,
            "cpu_s": statistics.mean(self.cpu) if self.cpu else float("nan"),
            "kib": statistics.mean(self.received) / 1024 if self.received else float("nan"),
            "reached": min(self.reached) if self.reached else 0,
            "responses": statistics.mean(self.responses) if self.responses else 0,
        }


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def run_scenario(
    fleet: Fleet,
    server_pid: int,
    change: Callable[[int], object],
    reps: int,
    quiet: float,
    expected: int,
    timeout: float = 120.0,
) -> Outcome:
    outcome = Outcome()
    for rep in range(reps):
        fleet.ask("mark")
        pids = procstat.tree(server_pid)
        cpu_before = procstat.cpu_seconds(pids)
        t0 = time.monotonic()
        change(rep)
        while True:
            time.sleep(0.05)
            status = fleet.status()
            now = time.monotonic()
            if status["acked"] >= expected and now - status["last"] >= quiet:
                break
            if now - t0 > timeout:
                raise TimeoutError(f"push not ACKed by {expected} proxies: {status}")
        outcome.cpu.append(procstat.cpu_seconds(pids) - cpu_before)
        reached = 0
        for reply in fleet.ask("collect"):
            for _index, last_ack, responses, _size, types in reply:
                if responses:
                    reached += 1
                    outcome.latencies.append(last_ack - t0)
                for type_url, count in types.items():
                    outcome.types[type_url] = outcome.types.get(type_url, 0) + count
        outcome.reached.append(reached)
        outcome.received.append(status["bytes"])
        outcome.responses.append(status["responses"])
        outcome.captures.append([c for reply in fleet.ask("capture") for c in reply])
    return outcome
