"""Open-loop traffic for the fault suite, and the count of what arrived against what was sent.

Three streams run at constant rates from a thread of their own while a service is killed or frozen:
- /predict for a few drivers each, request i due at start + i/rate whatever earlier ones cost (a stalled
  service shows up as latency and errors, not as a lower rate);
- /feedback for the first scored driver of every answered prediction;
- driver statistics on the stream topic, each with a unique (driver_id, event_timestamp).

What counts as sent is what was acknowledged: a 200 from /predict (one prediction event per scored
driver), a 202 from /feedback, a broker acknowledgement for a stream message. Everything sent must end up
in PostgreSQL: `prediction_log`, `ground_truth` and the offline store.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from data_pipeline.offline_store import STATS_TABLE
from data_pipeline.stream_messages import message_key
from mlops_platform.messages import format_timestamp
from mlops_platform.postgres import connect
from model_serving.prediction_store import GROUND_TRUTH_TABLE, PREDICTIONS_TABLE

REQUEST_TIMEOUT_SECONDS = 30.0
STREAM_FIRST_DRIVER = 9_700_000


@dataclass
class Call:
    kind: str  # predict | feedback
    started: float  # monotonic
    seconds: float
    status: int | None  # None: no answer (connection refused or reset, timeout)
    error: str = ""


@dataclass
class Sent:
    predictions: set[tuple[str, int]] = field(default_factory=set)
    feedback: set[tuple[str, int]] = field(default_factory=set)
    stream: set[tuple[int, datetime]] = field(default_factory=set)


class OpenLoopLoad:
    """Constant-rate predictions, feedback and stream events until `stop()`."""

    def __init__(self, settings, run: str, drivers: list[int], rate: float = 20.0, stream_rate: float = 20.0,
                 drivers_per_request: int = 3) -> None:
        self.settings = settings
        self.run = run
        self.drivers = drivers
        self.rate = rate
        self.stream_rate = stream_rate
        self.per_request = drivers_per_request
        self.calls: list[Call] = []
        self.sent = Sent()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- control -----------------------------------------------------------------------------------
    def start(self) -> OpenLoopLoad:
        self._threads = [threading.Thread(target=lambda: asyncio.run(self._http()), name="fault-http", daemon=True),
                         threading.Thread(target=self._stream, name="fault-stream", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_SECONDS + 150)
            assert not thread.is_alive(), f"{thread.name} did not finish"

    # ---- HTTP ----------------------------------------------------------------------------------------
    async def _http(self) -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=50)
        timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, pool=None)
        async with httpx.AsyncClient(base_url=self.settings.serving_url, limits=limits, timeout=timeout) as client:
            tasks = []
            begin = time.monotonic()
            i = 0
            while not self._stop.is_set():
                due = begin + i / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(self._booking(client, i)))
                i += 1
            await asyncio.gather(*tasks)

    async def _call(self, client: httpx.AsyncClient, kind: str, body: dict) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await client.post(f"/{kind}", json=body)
        except httpx.HTTPError as exc:
            self.calls.append(Call(kind, started, time.monotonic() - started, None, type(exc).__name__))
            return None
        self.calls.append(Call(kind, started, time.monotonic() - started, response.status_code,
                               "" if response.status_code < 300 else response.text[:200]))
        return response

    async def _booking(self, client: httpx.AsyncClient, i: int) -> None:
        request_id = f"fault-{self.run}-{i:06d}"
        start = (i * self.per_request) % len(self.drivers)
        ids = [self.drivers[(start + k) % len(self.drivers)] for k in range(self.per_request)]
        response = await self._call(client, "predict", {"request_id": request_id, "driver_ids": ids})
        if response is None or response.status_code != 200:
            return
        scored = [item["driver_id"] for item in response.json()["scores"]]
        self.sent.predictions.update((request_id, d) for d in scored)
        if not scored:
            return
        body = {"request_id": request_id, "driver_id": scored[0], "trip_completed": i % 2}
        answer = await self._call(client, "feedback", body)
        if answer is not None and answer.status_code == 202:
            self.sent.feedback.add((request_id, scored[0]))

    # ---- stream ----------------------------------------------------------------------------------
    def _stream(self) -> None:
        from kafka import KafkaProducer

        producer = None
        pending: list[tuple[tuple[int, datetime], object]] = []
        begin = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = begin + i / self.stream_rate
            self._stop.wait(max(0.0, due - time.monotonic()))
            if producer is None:
                try:  # the broker may be the service under fault: retry until it answers
                    producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all",
                                             linger_ms=5, max_block_ms=1_000, delivery_timeout_ms=120_000,
                                             request_timeout_ms=10_000, reconnect_backoff_max_ms=1_000)
                except Exception:
                    i += 1
                    continue
            driver = STREAM_FIRST_DRIVER + i % 50
            now = datetime.now(UTC)
            message = {"driver_id": driver, "conv_rate": 0.5, "acc_rate": 0.5, "avg_daily_trips": 10,
                       "event_timestamp": format_timestamp(now, "microseconds"),
                       "created": format_timestamp(now, "microseconds"), "produced_at": format_timestamp(now)}
            try:
                future = producer.send(self.settings.driver_stats_topic, key=message_key(driver),
                                       value=json.dumps(message).encode())
                pending.append(((driver, now), future))
            except Exception:  # not taken within max_block_ms: never sent, so not counted
                pass
            i += 1
        if producer is not None:
            producer.flush(timeout=120)
            for key, future in pending:
                if future.is_done and future.succeeded():
                    self.sent.stream.add(key)
            producer.close(timeout=5)

    # ---- figures -----------------------------------------------------------------------------------
    def window(self, begin: float, end: float) -> list[Call]:
        return [c for c in self.calls if begin <= c.started < end]


def p99(calls: list[Call]) -> float:
    if not calls:
        return math.nan
    seconds = sorted(c.seconds for c in calls)
    return seconds[min(len(seconds) - 1, math.ceil(0.99 * len(seconds)) - 1)]


def stored(settings, run: str, sent: Sent) -> Sent:
    """What of `sent` PostgreSQL holds now."""
    with connect(settings) as conn, conn.cursor() as cur:
        pattern = f"fault-{run}-%"
        cur.execute(f"select request_id, driver_id from {PREDICTIONS_TABLE} where request_id like %s", (pattern,))
        predictions = {(r, int(d)) for r, d in cur.fetchall()}
        cur.execute(f"select request_id, driver_id from {GROUND_TRUTH_TABLE} where request_id like %s", (pattern,))
        feedback = {(r, int(d)) for r, d in cur.fetchall()}
        cur.execute(f"select driver_id, event_timestamp from {STATS_TABLE} where driver_id between %s and %s",
                    (STREAM_FIRST_DRIVER, STREAM_FIRST_DRIVER + 49))
        stream = {(int(d), t) for d, t in cur.fetchall()}
    return Sent(predictions & sent.predictions, feedback & sent.feedback, stream & sent.stream)
