"""Static checks of the Grafana dashboards (monitoring/grafana/dashboards/) and of the metric names that
dashboards and alert rules use.

The metric check reads the names out of the code's metric definitions (prometheus_client constructors)
and fails when a dashboard or an alert asks for a name that no service exports: that keeps the
dashboards, the alerts and the code from drifting apart.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.metric_definitions import defined_metric_names, metric_definitions
from tests.monitoring_config import (
    DASHBOARDS_DIR,
    EXTERNAL_METRICS,
    GRAFANA_DIR,
    MONITORING_SERVICE_METRICS,
    MONITORING_SERVICE_PACKAGE,
    REPO_ROOT,
    all_panels,
    dashboard_expressions,
    load_dashboards,
    metric_names_in_promql,
    metric_names_in_variable_query,
    promtool,
    recorded_metric_names,
    rule_expressions,
    variable_queries,
)

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
PANELS_WITHOUT_QUERIES = {"row"}


@pytest.fixture(scope="module")
def dashboards() -> dict[Path, dict[str, Any]]:
    found = load_dashboards()
    assert found, f"no dashboard in {DASHBOARDS_DIR.relative_to(REPO_ROOT)}"
    return found


def used_metric_names() -> dict[str, list[str]]:
    """Metric name -> where dashboards, variables and rules use it."""
    used: dict[str, list[str]] = {}
    for source, expr in dashboard_expressions() + rule_expressions():
        for name in metric_names_in_promql(expr):
            used.setdefault(name, []).append(source)
    for source, query in variable_queries():
        for name in metric_names_in_variable_query(query):
            used.setdefault(name, []).append(source)
    return used


# ---------------------------------------------------------------------------------------------
# Shape of the dashboards
# ---------------------------------------------------------------------------------------------
def test_dashboards_are_valid_json_with_unique_uids_and_titles(dashboards) -> None:
    uids: dict[str, Path] = {}
    titles: dict[str, Path] = {}
    for path, dashboard in dashboards.items():
        uid, title = dashboard.get("uid"), dashboard.get("title")
        assert uid and isinstance(uid, str) and len(uid) <= 40, f"{path.name}: uid {uid!r} (Grafana allows 40 chars)"
        assert title, f"{path.name} has no title"
        assert uid not in uids, f"{path.name} and {uids[uid].name} share the uid {uid!r}"
        assert title not in titles, f"{path.name} and {titles[title].name} share the title {title!r}"
        uids[uid], titles[title] = path, path
        assert dashboard.get("id") is None, f"{path.name}: a provisioned dashboard must not carry a database id"
        assert "ride-mlops" in dashboard.get("tags", []), f"{path.name}: tag ride-mlops links the dashboards"
        ids = [panel.get("id") for panel in all_panels(dashboard)]
        assert len(ids) == len(set(ids)) and None not in ids, f"{path.name}: panel ids must be unique"


def test_every_panel_has_promql_targets_on_the_prometheus_datasource(dashboards) -> None:
    for path, dashboard in dashboards.items():
        panels = [p for p in all_panels(dashboard) if p.get("type") not in PANELS_WITHOUT_QUERIES]
        assert panels, f"{path.name} has no panel"
        for panel in panels:
            where = f"{path.name}: panel {panel.get('title')!r}"
            assert panel.get("title"), f"{path.name}: panel {panel.get('id')} has no title"
            assert panel.get("datasource") == DATASOURCE, f"{where}: datasource must be {DATASOURCE}"
            targets = panel.get("targets") or []
            assert targets, f"{where} has no query"
            ref_ids = [t.get("refId") for t in targets]
            assert len(ref_ids) == len(set(ref_ids)), f"{where}: refIds must be unique"
            for target in targets:
                assert isinstance(target.get("expr"), str) and target["expr"].strip(), f"{where}: target without expr"
                assert target.get("datasource", DATASOURCE) == DATASOURCE, f"{where}: target on another datasource"
            grid = panel.get("gridPos") or {}
            assert {"x", "y", "w", "h"} <= set(grid) and grid["x"] + grid["w"] <= 24, f"{where}: bad gridPos {grid}"


def test_variables_query_the_prometheus_datasource(dashboards) -> None:
    for path, dashboard in dashboards.items():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                assert variable.get("datasource") == DATASOURCE, f"{path.name}: variable {variable.get('name')}"
    assert all(query.strip() for _, query in variable_queries())


def test_the_required_dashboards_show_what_they_are_for() -> None:
    by_file: dict[str, set[str]] = {}
    exprs: dict[str, str] = {}
    for source, expr in dashboard_expressions(substitute=False):
        name = source.split(":", 1)[0].rsplit("/", 1)[-1]
        by_file.setdefault(name, set()).update(metric_names_in_promql(expr))
        exprs[name] = exprs.get(name, "") + "\n" + expr
    required = {
        "serving.json": {"serving_requests_total", "serving_request_duration_seconds_bucket", "serving_model_version",
                         "serving_model_info", "serving_missing_features_total", "serving_events_dropped_total"},
        "streaming.json": {"driver_stats_consumer_messages_consumed_total",
                           "driver_stats_consumer_messages_pushed_total",
                           "driver_stats_consumer_messages_rejected_total", "driver_stats_consumer_lag",
                           "driver_stats_consumer_freshness_seconds_bucket", "driver_stats_consumer_dlq_sends_total",
                           "prediction_logger_messages_rejected_total", "prediction_logger_dlq_sends_total"},
        "data-drift.json": {"monitoring_feature_drift_score", "monitoring_drift_share", "monitoring_window_has_data"},
        "model-quality.json": {"monitoring_live_rmse", "monitoring_live_mae", "monitoring_live_roc_auc"},
        "rollout.json": {"monitoring_rollout_labeled_outcomes", "monitoring_rollout_brier", "monitoring_rollout_auc",
                         "monitoring_rollout_precision", "monitoring_rollout_recall",
                         "monitoring_rollout_latency_p99_ms", "monitoring_rollout_error_rate",
                         "monitoring_rollout_brier_difference_low", "monitoring_rollout_brier_difference_high",
                         "serving_variant_requests_total"},
        "model-monitoring.json": {"monitoring_model_drift_detected", "monitoring_model_feature_drift_score",
                                  "monitoring_model_accuracy", "monitoring_model_macro_f1",
                                  "monitoring_model_class_precision", "monitoring_model_class_recall",
                                  "monitoring_model_class_f1", "monitoring_model_window_predictions"},
    }
    for name, metrics in required.items():
        assert name in by_file, f"dashboard {name} is missing"
        assert metrics <= by_file[name], f"{name} does not show {sorted(metrics - by_file[name])}"
    assert "by (status)" in exprs["serving.json"], "serving traffic must be split by status"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(serving_request_duration_seconds_bucket" in (
            exprs["serving.json"]), f"serving latency p{quantile} is missing"
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(driver_stats_consumer_freshness_seconds_bucket" in (
            exprs["streaming.json"]), f"freshness p{quantile} is missing"
    assert "by (feature" in exprs["data-drift.json"], "drift must be shown per feature"
    assert "by (model_version)" in exprs["model-quality.json"], "live quality must be shown per model version"
    assert "by (variant, model_version)" in exprs["rollout.json"], "a rollout must be shown per variant"
    model_queries = [e for e in exprs["model-monitoring.json"].splitlines() if e.strip()]
    assert all('model=~"$model"' in e and "by (model" in e for e in model_queries), (
        "every model monitoring query must follow the $model variable and keep the model label")


def test_grafana_provisioning_and_container(dashboards) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?"), "admin password from .env"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    image, _, tag = grafana["image"].rpartition(":")
    assert image == "grafana/grafana" and tag[:1].isdigit(), f"grafana image {grafana['image']} is not pinned"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith("/var/lib/grafana/dashboards/")
        assert (DASHBOARDS_DIR / home.rsplit("/", 1)[1]).is_file(), f"home dashboard {home} does not exist"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [d["uid"] for d in datasources["datasources"]] == ["prometheus"]


# ---------------------------------------------------------------------------------------------
# Dashboards, alerts and code agree on metric names
# ---------------------------------------------------------------------------------------------
def test_the_metric_reader_finds_the_code_s_metrics() -> None:
    # If this fails, the reader in tests/monitoring_config.py lost track of how metrics are defined, and
    # the check below would prove nothing.
    names = defined_metric_names()
    for expected in ("serving_requests_total", "serving_request_duration_seconds_bucket", "serving_model_version",
                     "driver_stats_consumer_freshness_seconds_count", "driver_stats_consumer_lag",
                     "prediction_logger_messages_rejected_total", "prediction_logger_ready"):
        assert expected in names, f"{expected} not found in the code's metric definitions"
    assert "serving_requests" not in names, "a counter is exposed with _total"
    assert "driver_stats_consumer_freshness_seconds" not in names, "a histogram is exposed as _bucket/_sum/_count"
    _, unresolved = metric_definitions()
    assert not unresolved, f"metric names that cannot be read statically: {unresolved}"


def test_every_metric_in_dashboards_and_alerts_is_defined_in_the_code() -> None:
    defined = defined_metric_names()
    allowed = set(defined) | set(EXTERNAL_METRICS) | recorded_metric_names()
    if not MONITORING_SERVICE_PACKAGE.is_dir():
        allowed |= set(MONITORING_SERVICE_METRICS)
    used = used_metric_names()
    assert used, "no metric name found in dashboards and rules"
    unknown = {name: sources for name, sources in used.items() if name not in allowed}
    assert not unknown, "metric names no code defines:\n" + "\n".join(
        f"  {name}: used by {', '.join(sorted(set(sources))[:3])}" for name, sources in sorted(unknown.items())
    )


def test_monitoring_service_defines_what_dashboards_and_alerts_expect() -> None:
    if not MONITORING_SERVICE_PACKAGE.is_dir():
        pytest.skip("monitoring_service/ does not exist yet; its metric names are taken as announced")
    missing = set(MONITORING_SERVICE_METRICS) - set(defined_metric_names())
    assert not missing, "the monitoring service does not define:\n" + "\n".join(
        f"  {name}: {MONITORING_SERVICE_METRICS[name]}" for name in sorted(missing)
    )


def test_announced_monitoring_metrics_are_all_used() -> None:
    used = used_metric_names()
    unused = set(MONITORING_SERVICE_METRICS) - set(used)
    assert not unused, f"announced but used by no dashboard or alert: {sorted(unused)}"


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses every query as a recording rule: a syntax error names the panel.
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    expressions = dashboard_expressions()
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(expressions)]
    path = tmp_path / "dashboard-expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        culprits = [f"  {source}: {expr}" for i, (source, expr) in enumerate(expressions)
                    if f"expr_{i}\"" in output or f"group 0, rule {i + 1}," in output]
        pytest.fail("promtool rejects dashboard queries:\n" + "\n".join(culprits) + "\n" + output[-3000:])
