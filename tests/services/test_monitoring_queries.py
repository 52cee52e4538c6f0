"""Every PromQL expression of the dashboards and alert rules, against a real Prometheus.

`bash run.sh monitoring up` starts Prometheus with the configuration local mode renders. Parsing needs
nothing else: a parse error is a 400 with errorType `bad_data`. Data needs traffic: bookings with
outcomes through the API (tests/services/monitored_traffic.py), driver stats through the stream with a
few invalid ones, and an evaluation of the platform's monitoring service, all scraped. Then every metric
an expression selects must have series, and every dashboard panel must show something.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import eventually, stack_up
from tests.monitoring_config import (
    EXTERNAL_METRICS,
    MONITORING_SERVICE_METRICS,
    dashboard_expressions,
    load_rules,
    metric_names_in_promql,
    rule_expressions,
)
from tests.services.monitored_traffic import book_and_wait_for_the_outcomes

# Exported from the start: the mode (champion at 0), the share, the bounds, the decision counts.
ROLLOUT_METRICS_WITHOUT_A_ROLLOUT = {"monitoring_rollout_active", "monitoring_rollout_share",
                                     "monitoring_rollout_max_error_rate", "monitoring_rollout_max_p99_ms",
                                     "monitoring_rollout_decisions_total"}
# Series an empty answer is right for on a healthy local platform.
NO_DATA_EXPECTED = {
    **{name: where for name, where in EXTERNAL_METRICS.items() if name.startswith("node_")},
    "ALERTS": "exists only while an alert is pending or firing",
    "ALERTS_FOR_STATE": "exists only while an alert is pending or firing",
    # a rollout's numbers exist only while one runs; tests/services/test_rollout_monitoring.py checks that a
    # running rollout exports every one the dashboards and alerts read
    **{name: "exists only while a rollout runs" for name in MONITORING_SERVICE_METRICS
       if name.startswith("monitoring_rollout_") and name not in ROLLOUT_METRICS_WITHOUT_A_ROLLOUT},
    # a project's numbers exist only once its champion answered on /models/{name}/predict in the window;
    # tests/services/test_model_monitoring.py checks that planted answers export every one of them
    **{name: "exists only for a model with answers in model_prediction_log" for name in MONITORING_SERVICE_METRICS
       if name.startswith("monitoring_model_")},
}
# Which job may export metrics with each of our prefixes.
OWNERS = {"serving_": "serving", "driver_stats_consumer_": "stream-consumer",
          "prediction_logger_": "prediction-logger", "monitoring_": "monitoring"}


def all_promql_expressions() -> list[tuple[str, str]]:
    """(source, expr) of every dashboard query and every alerting or recording rule; Grafana's variables
    ($__rate_interval, $model_version, ...) are replaced by values Grafana would put there."""
    return dashboard_expressions() + rule_expressions()


def instant_query(base_url: str, expr: str) -> tuple[int, dict]:
    """(HTTP status, decoded body) of /api/v1/query; errors are returned, not raised."""
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def prometheus(settings) -> str:
    stack_up("monitoring")
    return settings.prometheus_url


def test_the_expression_list_covers_dashboards_and_rules() -> None:
    expressions = all_promql_expressions()
    sources = {source.split(":", 1)[0] for source, _ in expressions}
    assert any(s.endswith(".json") for s in sources) and any(s.endswith(".yml") for s in sources), sources
    assert all(expr.strip() and "$" not in expr for _, expr in expressions), "a Grafana variable was left in"


def test_every_dashboard_and_alert_expression_parses_in_prometheus(prometheus) -> None:
    parse_errors, other_errors = [], []
    for source, expr in all_promql_expressions():
        status, body = instant_query(prometheus, expr)
        if status == 400 and body.get("errorType") == "bad_data":
            parse_errors.append(f"  {source}: {body.get('error')}\n    {expr}")
        elif status != 200 or body.get("status") != "success":
            other_errors.append(f"  {source}: HTTP {status} {body.get('errorType')}: {body.get('error')}")
    assert not parse_errors, "Prometheus cannot parse:\n" + "\n".join(parse_errors)
    assert not other_errors, "Prometheus failed to evaluate:\n" + "\n".join(other_errors)


def test_prometheus_loaded_every_alert_rule(prometheus) -> None:
    loaded = {rule["name"] for group in get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
              for rule in group["rules"]}
    expected = {rule.get("alert") or rule.get("record") for _, _, rule in load_rules()}
    assert expected <= loaded, f"rules missing from the running Prometheus: {sorted(expected - loaded)}"


def test_local_prometheus_scrapes_every_job_but_the_docker_only_ones(prometheus) -> None:
    wanted = {"prometheus", "serving", "stream-consumer", "prediction-logger", "monitoring", "mlflow"}

    def every_job_scraped() -> list[dict]:
        targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        jobs = {target["labels"]["job"] for target in targets}
        assert wanted <= jobs, f"jobs scraped: {sorted(jobs)}"
        return targets

    # the scrape manager picks up its targets a few seconds after start
    targets = eventually(every_job_scraped, 30, interval=1, what=f"Prometheus scraping {sorted(wanted)}")
    jobs = {target["labels"]["job"] for target in targets}
    assert "node" not in jobs, "node-exporter runs only in docker mode"
    own = [t for t in targets if t["labels"]["job"] == "prometheus"]
    assert own and all(t["scrapeUrl"].startswith("http://127.0.0.1:") for t in targets)


def result(base_url: str, expr: str) -> list[dict]:
    status, body = instant_query(base_url, expr)
    assert status == 200, body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def traffic(prometheus, monitored_champion, monitored_drivers, settings) -> dict:
    """Bookings, stream messages and an evaluation, each seen by Prometheus."""
    from simulation.stream_producer import produce, synthetic_rows

    version = monitored_champion["version"]
    book_and_wait_for_the_outcomes(settings, monitored_drivers, version, drifted=False, requests=80, seed=3)
    sent = produce(settings, synthetic_rows(drivers=5, first_driver_id=9_450_000, seed=3), rate=50, count=20,
                   invalid_share=0.2, seed=3)
    assert sent.sent == 20, sent
    for expr in (f'monitoring_drift_share{{model_version="{version}"}}',
                 f'monitoring_live_rmse{{model_version="{version}"}}',
                 "driver_stats_consumer_dlq_sends_total > 0", "driver_stats_consumer_freshness_seconds_count > 0",
                 f'serving_model_version == {version}', "serving_score_count > 0",
                 "prediction_logger_rows_stored_total > 0"):
        eventually(lambda expr=expr: result(prometheus, expr), 120, interval=2, what=f"Prometheus to see {expr}")
    return {"version": version}


def metrics_without_series(prometheus: str) -> list[str]:
    names: dict[str, list[str]] = {}
    for source, expr in all_promql_expressions():
        for name in metric_names_in_promql(expr) - NO_DATA_EXPECTED.keys():
            names.setdefault(name, []).append(source)
    return [f"  {name}: used by {', '.join(sources)}" for name, sources in sorted(names.items())
            if not result(prometheus, name)]


def panels_without_data(prometheus: str) -> list[str]:
    return [f"  {source}\n    {expr}" for source, expr in dashboard_expressions()
            if not metric_names_in_promql(expr) & NO_DATA_EXPECTED.keys() and not result(prometheus, expr)]


def settled(check, prometheus: str, timeout: float = 90) -> list[str]:
    """What `check` still finds after up to `timeout` seconds: a series born with the traffic needs two
    scrapes before rate() over it has a value."""
    with contextlib.suppress(AssertionError):
        eventually(lambda: not check(prometheus), timeout, interval=3, what="nothing left to find")
    return check(prometheus)


def test_every_metric_of_every_dashboard_and_alert_has_series(traffic, prometheus) -> None:
    missing = settled(metrics_without_series, prometheus)
    assert not missing, "no series in Prometheus after traffic:\n" + "\n".join(missing)


def test_every_dashboard_panel_shows_data_after_traffic(traffic, prometheus) -> None:
    empty = settled(panels_without_data, prometheus)
    assert not empty, "dashboard queries that show no data after traffic:\n" + "\n".join(empty)


def test_each_job_exports_only_its_own_metrics(traffic, prometheus) -> None:
    """A service that inherits another's metrics directory shows up here as a second exporter."""
    for prefix, owner in OWNERS.items():
        jobs = {series["metric"]["job"] for series in
                result(prometheus, f'count by (job) ({{__name__=~"{prefix}.+"}})')}
        assert jobs == {owner}, f"{prefix}* metrics come from {sorted(jobs)}, expected only {owner}"
