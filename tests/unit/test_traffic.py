"""The traffic simulator's pure parts, and a whole run against a stub API on this machine (no services)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from simulation import traffic
from tests.conftest import build_settings

SETTINGS = build_settings(SERVING_AUTH="off", SERVING_HOST="serving", SERVING_PORT="8000")
GOOD, POOR = (0.9, 0.95, 30.0), (0.1, 0.3, 2.0)


# ---------------------------------------------------------------------------------------------
# pure parts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://serving:8000",
                                 "https://[::1]:8443"])
def test_the_target_may_be_this_machine_or_the_configured_serving_host(url):
    assert traffic.check_target(url, SETTINGS) == url.rstrip("/")


@pytest.mark.parametrize(("url", "words"), [
    ("http://example.com:8000", "got host 'example.com'"),
    ("http://10.0.0.7:8000", "got host '10.0.0.7'"),
    ("ftp://127.0.0.1/", "expected an http(s) URL"),
    ("127.0.0.1:8000", "expected an http(s) URL"),
])
def test_any_other_target_is_refused(url, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        traffic.check_target(url, SETTINGS)


def test_candidates_are_distinct_and_capped_by_the_drivers_known():
    rng = random.Random(1)
    picked = traffic.sample_candidates(rng, range(1001, 1101), 5)
    assert len(picked) == len(set(picked)) == 5 and set(picked) <= set(range(1001, 1101))
    assert sorted(traffic.sample_candidates(rng, [1, 2, 3], 10)) == [1, 2, 3]
    assert traffic.sample_candidates(random.Random(7), range(50), 4) == traffic.sample_candidates(
        random.Random(7), range(50), 4)


def test_outcomes_follow_the_generators_completion_model():
    assert traffic.completion_probability(GOOD) == pytest.approx(1 / (1 + np.exp(-3.65)))
    draws = np.random.default_rng(0)
    noise, uniform = draws.normal(0, traffic.LABEL_NOISE, 4000), draws.random(4000)
    good = np.mean([traffic.draw_outcome(GOOD, n, u) for n, u in zip(noise, uniform, strict=True)])
    poor = np.mean([traffic.draw_outcome(POOR, n, u) for n, u in zip(noise, uniform, strict=True)])
    assert good > 0.9 and poor < 0.3, (good, poor)
    assert traffic.draw_outcome(GOOD, 0.0, 0.0) == 1 and traffic.draw_outcome(POOR, 0.0, 0.999) == 0


def test_percentiles_are_observed_values():
    values = list(range(1, 101))
    assert traffic.percentile(values, 50) == 50 and traffic.percentile(values, 99) == 99
    assert traffic.percentile([7.0], 99) == 7.0 and traffic.percentile([], 50) is None
    assert traffic.percentile([3, 1, 2], 100) == 3


def test_status_classes():
    assert [traffic.status_class(s) for s in (200, 204, 302, 404, 422, 503, None)] == [
        "2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "error"]


def test_the_time_budget_covers_the_schedule_the_delay_and_the_timeouts():
    config = traffic.TrafficConfig(requests=100, rate=20, label_delay=3, http_timeout=2)
    assert config.time_budget() == pytest.approx(5 + 3 + 4 + 1)


@pytest.mark.parametrize("argv", [
    ["--requests", "0", "--rate", "1"],
    ["--requests", "5", "--rate", "0"],
    ["--requests", "5", "--rate", "nan"],
    ["--requests", str(traffic.MAX_REQUESTS + 1), "--rate", "1"],
    ["--requests", "5", "--rate", "1", "--drivers-per-request", "0"],
    ["--requests", "5", "--rate", "1", "--label-delay", "-1"],
    ["--rate", "1"],
])
def test_the_command_line_refuses_unbounded_or_malformed_values(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        traffic.parse_args(argv, SETTINGS)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "expected" in error or "required" in error


def test_the_command_line_refuses_a_foreign_target_before_sending_anything(capsys):
    assert traffic.main(["--requests", "1", "--rate", "1", "--url", "http://example.com"]) == 2
    assert "this platform's own API" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a whole run against a stub API
# ---------------------------------------------------------------------------------------------
class StubApi:
    """/predict ranks candidates by a fixed score; /feedback records what it was told."""

    def __init__(self, token: str | None = None, fail_every: int = 0, delay: float = 0.0) -> None:
        self.token, self.fail_every, self.delay = token, fail_every, delay
        self.predictions: list[dict] = []
        self.feedback: list[dict] = []
        self.calls = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.calls += 1
                time.sleep(stub.delay)
                if stub.token and self.headers.get("Authorization") != f"Bearer {stub.token}":
                    return self.answer(401, {"detail": "missing or wrong token"})
                if stub.fail_every and stub.calls % stub.fail_every == 0:
                    return self.answer(503, {"detail": "busy"})
                if self.path == "/predict":
                    stub.predictions.append(body)
                    known = [d for d in body["driver_ids"] if d % 10 != 0]  # ids ending in 0 have no features
                    scores = [{"driver_id": d, "score": (d % 7) / 7} for d in known]
                    ranking = [s["driver_id"] for s in sorted(scores, key=lambda s: -s["score"])]
                    return self.answer(200, {"request_id": body["request_id"], "scores": scores, "ranking": ranking,
                                             "best_driver_id": ranking[0] if ranking else None,
                                             "missing_driver_ids": [d for d in body["driver_ids"] if d % 10 == 0],
                                             "model": {"name": "m", "version": "1", "run_id": "r"}})
                stub.feedback.append(body)
                return self.answer(202, {"accepted": True})

            def answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubApi:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


DRIVERS = {d: (GOOD if d % 2 else POOR) for d in range(1001, 1041)}


def run(config: traffic.TrafficConfig, url: str, token: str | None = None) -> dict:
    return asyncio.run(traffic.run_traffic(config, DRIVERS, url, token))


def test_every_booking_is_predicted_assigned_and_labelled_once():
    config = traffic.TrafficConfig(requests=40, rate=200, drivers_per_request=4, label_delay=0.05, seed=3)
    with StubApi() as api:
        summary = run(config, api.url)
    assert summary["requests"] == 40 and summary["responses"]["2xx"] == 40
    assert summary["assigned"] + summary["unassigned"] == 40
    assert summary["feedback_sent"] == summary["assigned"] == len(api.feedback)
    assert summary["abandoned"] == 0 and summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    assert summary["missing_drivers"] == sum(d % 10 == 0 for p in api.predictions for d in p["driver_ids"])
    assert all(len(set(p["driver_ids"])) == 4 for p in api.predictions)
    by_request = {p["request_id"]: p["driver_ids"] for p in api.predictions}
    for feedback in api.feedback:  # the best candidate of its own request, with a 0/1 outcome
        candidates = [d for d in by_request[feedback["request_id"]] if d % 10 != 0]
        assert feedback["driver_id"] == max(candidates, key=lambda d: (d % 7, -candidates.index(d)))
        assert feedback["trip_completed"] in (0, 1)
    assert summary["trips_completed"] == sum(f["trip_completed"] for f in api.feedback)
    json.dumps(summary)  # printable as is


def test_a_seed_gives_the_same_bookings_and_outcomes():
    config = traffic.TrafficConfig(requests=30, rate=300, drivers_per_request=3, label_delay=0.0, seed=9)
    outcomes = []
    for _ in range(2):
        with StubApi() as api:
            run(config, api.url)
        outcomes.append(Counter((f["driver_id"], f["trip_completed"]) for f in api.feedback))
    assert outcomes[0] == outcomes[1]


def test_the_token_is_sent_and_failures_are_counted_by_class():
    config = traffic.TrafficConfig(requests=12, rate=500, label_delay=0.0, seed=1)
    with StubApi(token="s3cret") as api:
        refused = run(config, api.url)
        accepted = run(config, api.url, token="s3cret")
    assert refused["responses"]["4xx"] == 12 and refused["feedback_sent"] == 0
    assert accepted["responses"]["2xx"] == 12
    with StubApi(fail_every=3) as api:
        flaky = run(config, api.url)
    assert flaky["responses"]["5xx"] > 0 and flaky["responses"]["2xx"] > 0
    assert flaky["feedback_sent"] + flaky["feedback_failed"] == flaky["assigned"]


def test_an_api_that_does_not_answer_is_reported_not_raised():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = traffic.TrafficConfig(requests=3, rate=100, label_delay=0.0, http_timeout=1.0)
    summary = run(config, f"http://127.0.0.1:{port}")
    assert summary["responses"]["error"] == 3 and summary["latency_ms"]["p50"] is None


def test_a_run_is_bounded_in_time():
    # One request at a time against an API that takes 0.3 s: ten bookings cannot finish in the budget.
    config = traffic.TrafficConfig(requests=10, rate=100, label_delay=0.0, http_timeout=0.5, max_in_flight=1)
    with StubApi(delay=0.3) as api:
        started = time.monotonic()
        summary = run(config, api.url)
        elapsed = time.monotonic() - started
    assert elapsed < config.time_budget() + 0.5
    assert summary["abandoned"] > 0
    assert summary["requests"] + summary["abandoned"] >= 10  # each booking was answered or abandoned
