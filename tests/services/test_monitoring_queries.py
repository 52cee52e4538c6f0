"""Every PromQL expression of the dashboards and alert rules, against a real Prometheus.

`bash run.sh monitoring up` starts Prometheus with the configuration local mode renders. The first test
only needs it to parse each expression: a parse error is a 400 with errorType `bad_data`, while an
empty result ("no data") is fine, since nothing else needs to run. The second test will require data
once it can count on traffic from the serving stack.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import stack_up
from tests.monitoring_config import dashboard_expressions, load_rules, rule_expressions


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
    deadline = time.monotonic() + 30  # the scrape manager picks up its targets a few seconds after start
    while True:
        targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        jobs = {target["labels"]["job"] for target in targets}
        if wanted <= jobs or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert wanted <= jobs, f"jobs scraped: {sorted(jobs)}"
    assert "node" not in jobs, "node-exporter runs only in docker mode"
    own = [t for t in targets if t["labels"]["job"] == "prometheus"]
    assert own and all(t["scrapeUrl"].startswith("http://127.0.0.1:") for t in targets)


def test_every_dashboard_and_alert_expression_returns_data(prometheus) -> None:
    pytest.skip("needs traffic from the serving stack")
