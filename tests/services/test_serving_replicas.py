"""Serving replicas behind HAProxy: `bash run.sh serving up --replicas 2`, one replica SIGKILLed under load.

Open-loop traffic (each request due at start + i/rate, whatever earlier ones cost) goes to SERVING_PORT,
where HAProxy spreads it over the replicas. One replica's main process is SIGKILLed mid-traffic:
- only requests in flight at the kill may fail; every request sent after it is answered (HAProxy sends a
  request whose connection is refused to the other replica, and stops choosing the dead one);
- supervision restarts the replica, HAProxy's health check sees it DOWN and then UP again (stats socket);
- afterwards both replicas answer requests again (the `X-Served-By` header names the replica).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from mlops_platform import haproxy, local, process_tree
from tests.conftest import eventually, scaled_up, stack_up

REPLICAS = 2
RATE = 100.0  # requests per second
TIMEOUT_SECONDS = 10.0


@dataclass
class Answer:
    started: float  # monotonic
    ended: float
    status: int | None  # None: no answer (refused, reset, timeout)
    served_by: str
    error: str = ""


class HealthTraffic:
    """GET /health through HAProxy at a constant rate, from a thread of its own, until `stop()`."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> HealthTraffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT_SECONDS + 10)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_SECONDS) as client:
            tasks, begin, i = [], time.monotonic(), 0
            while not self._stop.is_set():
                await asyncio.sleep(max(0.0, begin + i / self.rate - time.monotonic()))
                tasks.append(asyncio.create_task(self._call(client)))
                i += 1
            await asyncio.gather(*tasks)

    async def _call(self, client: httpx.AsyncClient) -> None:
        started = time.monotonic()
        try:
            response = await client.get(f"{self.url}/health")
            status, served_by = response.status_code, response.headers.get("x-served-by", "")
        except httpx.HTTPError as exc:
            self.answers.append(Answer(started, time.monotonic(), None, "", f"{type(exc).__name__}: {exc}"))
            return
        self.answers.append(Answer(started, time.monotonic(), status, served_by))

    def since(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.started >= moment]


@pytest.fixture(scope="module")
def replicas(kafka_up, settings):
    """Two API replicas behind HAProxy; afterwards the serving stack is back to the one replica of `up`."""
    yield from scaled_up(settings, "serving", "--replicas", "serving", REPLICAS)


def states(settings) -> dict[str, str]:
    return {name: row["status"] for name, row in haproxy.server_states(haproxy.stats_socket(settings)).items()}


def test_a_killed_replica_costs_only_its_requests_in_flight_and_the_pool_heals(replicas, settings):
    names = {replica.name for replica in replicas}
    eventually(lambda: states(settings) == dict.fromkeys(names, "UP"), timeout=30, what=f"{names} UP in HAProxy")
    victim = replicas[-1]
    pid = local.main_pid(settings, victim.name)
    restarts_before = local.restart_count(settings, victim.name)
    traffic = HealthTraffic(settings.serving_url, RATE).start()
    try:
        eventually(lambda: {a.served_by for a in traffic.answers} >= names, timeout=30,
                   what="traffic answered by both replicas before the kill")
        os.kill(pid, signal.SIGKILL)
        # The kill takes effect when the process is gone (its sockets closed), a moment after the signal.
        eventually(lambda: not process_tree.alive(pid), timeout=10, interval=0.001, what=f"pid {pid} gone")
        killed_at = time.monotonic()
        eventually(lambda: states(settings)[victim.name].startswith("DOWN"), timeout=30, interval=0.05,
                   what=f"HAProxy marks {victim.name} DOWN")
        eventually(lambda: local.main_pid(settings, victim.name) not in (None, pid), timeout=60,
                   what=f"{victim.name} restarted by supervision")
        eventually(lambda: states(settings)[victim.name] == "UP", timeout=60, interval=0.1,
                   what=f"HAProxy marks {victim.name} UP again")
        healed_at = time.monotonic()
        eventually(lambda: {a.served_by for a in traffic.since(healed_at)} >= names, timeout=30,
                   what="both replicas answering after the restart")
    finally:
        traffic.stop()

    in_flight = [a for a in traffic.answers if a.started <= killed_at <= a.ended]
    failed = [a for a in traffic.answers if a.status is None or a.status >= 500]
    assert len(traffic.since(killed_at)) > RATE, "too little traffic after the kill to judge"
    assert all(a.started <= killed_at for a in failed), \
        f"requests sent after the replica died failed: {[a for a in failed if a.started > killed_at][:5]}"
    assert len(failed) <= len(in_flight), f"{len(failed)} failures, only {len(in_flight)} requests in flight"
    assert local.restart_count(settings, victim.name) > restarts_before, "the restart is counted"


def test_prometheus_scrapes_each_replica_as_a_target_of_its_own(replicas, settings):
    """Behind HAProxy one target would read a different replica's counters at each scrape."""
    stack_up("monitoring")
    wanted = {f"127.0.0.1:{replica.port(settings)}" for replica in replicas}

    def serving_targets():
        answer = httpx.get(f"{settings.prometheus_url}/api/v1/targets", timeout=10).json()
        found = {t["labels"]["instance"]: t["health"] for t in answer["data"]["activeTargets"]
                 if t["labels"]["job"] == "serving"}
        return found if found == dict.fromkeys(wanted, "up") else None

    eventually(serving_targets, timeout=90, interval=1, what=f"Prometheus scraping {sorted(wanted)}, each up")


def test_every_replica_counts_among_the_running_services(replicas, settings):
    """What `all down` checks before it reports the platform stopped: a replica left running is not missed."""
    running = local.running_services(settings)
    assert {replica.name for replica in replicas} <= set(running), running
