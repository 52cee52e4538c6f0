"""The benchmark's non-Python load clients: their reports are read right and their inputs written right."""

from __future__ import annotations

import base64
import json

import pytest

from benchmarks.load_tools import Step, parse_wrk, write_targets, write_wrk_script

WRK_REPORT = """\
Running 10s test @ http://127.0.0.1:24880/predict
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     8.41ms    5.02ms  61.32ms   80.11%
    Req/Sec   480.10     52.31   610.00     70.50%
  Latency Distribution
     50%    7.52ms
     75%   10.01ms
     90%   14.20ms
     99%    1.20s
  9604 requests in 10.01s, 4.21MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:    959.40
Transfer/sec:    430.55KB
"""


def test_a_wrk_report_gives_rate_quantiles_in_ms_and_every_failure():
    run = parse_wrk(WRK_REPORT, connections=8)
    assert (run.requests_per_second, run.p50, run.p99) == (959.40, 7.52, 1200.0)
    assert (run.non_2xx, run.socket_errors, run.connections) == (5, 3, 8)


def test_a_clean_wrk_report_has_no_failures():
    clean = "\n".join(line for line in WRK_REPORT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    run = parse_wrk(clean.replace("1.20s", "950.00us"), connections=4)
    assert (run.non_2xx, run.socket_errors, run.p99) == (0, 0, pytest.approx(0.95))


@pytest.mark.parametrize("step, held", [
    (Step(1000, 10000, 999.0, 1.0, 2.0, 5.0, 24.0, 40.0, []), True),
    (Step(1000, 10000, 999.0, 1.0, 2.0, 5.0, 26.0, 40.0, []), False),  # p99 over the bound
    (Step(1000, 10000, 999.0, 0.9999, 2.0, 5.0, 10.0, 40.0, ["503"]), False),  # one failed request
    (Step(1000, 10000, 900.0, 1.0, 2.0, 5.0, 10.0, 40.0, []), False),  # the rate was not delivered
])
def test_a_step_is_held_only_when_every_request_succeeded_at_the_rate_within_the_bound(step, held):
    assert step.held(25.0) is held


def test_targets_and_the_wrk_script_carry_every_body_exactly(tmp_path):
    bodies = [b'{"driver_ids":[1,2]}', b'{"driver_ids":[3,"\\u00e9"]}']
    lines = write_targets(tmp_path / "t.jsonl", "http://h/p", bodies, {"X": ["y"]}).read_text().splitlines()
    assert [base64.b64decode(json.loads(line)["body"]) for line in lines] == bodies
    script = write_wrk_script(tmp_path / "w.lua", bodies, {"Authorization": "Bearer t"}).read_text()
    assert all(json.dumps(body.decode()) in script for body in bodies)
    assert 'wrk.headers["Authorization"] = "Bearer t"' in script
