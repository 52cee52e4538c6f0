"""Reading the monitoring configuration for tests: dashboards, alert rules and their PromQL.

The metric names our code defines are read from the code by tests/metric_definitions.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO_ROOT / "monitoring" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
GRAFANA_DIR = REPO_ROOT / "monitoring" / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
MONITORING_SERVICE_PACKAGE = REPO_ROOT / "monitoring_service"

# Packages whose metric definitions count; monitoring_service/ joins once it exists.
METRIC_PACKAGES = ("model_serving", "data_pipeline", "training_pipeline", "mlops_platform", "airflow",
                   "monitoring_service")

# Metrics that exist without our code defining them: written by Prometheus itself, or exported by
# node-exporter (docker mode only).
EXTERNAL_METRICS = {
    "up": "Prometheus (every scrape)",
    "scrape_duration_seconds": "Prometheus (every scrape)",
    "scrape_samples_scraped": "Prometheus (every scrape)",
    "ALERTS": "Prometheus (alerting rules)",
    "ALERTS_FOR_STATE": "Prometheus (alerting rules)",
    "node_cpu_seconds_total": "node-exporter (docker mode)",
    "node_memory_MemAvailable_bytes": "node-exporter (docker mode)",
    "node_memory_MemTotal_bytes": "node-exporter (docker mode)",
    "node_load1": "node-exporter (docker mode)",
}

# What the dashboards and alerts expect from the monitoring service (job `monitoring`, package
# monitoring_service/, metrics in monitoring_service/metrics.py). Once that package exists these names
# must be defined in its code like every other metric; before, they were accepted as announced.
MONITORING_SERVICE_METRICS = {
    "monitoring_ready": "gauge, 1 once the last evaluation could read the prediction log",
    "monitoring_window_has_data": "gauge, 1 when the last window had enough predictions to evaluate",
    "monitoring_window_has_labels": "gauge, 1 when the last window had enough labelled predictions",
    "monitoring_window_predictions": "gauge {model_version}: predictions in the last window",
    "monitoring_window_labeled_predictions": "gauge {model_version}: labelled predictions in the last window",
    "monitoring_drift_share": "gauge {model_version}: share of features that drifted",
    "monitoring_feature_drift_score": "gauge {feature, model_version}: drift score of one feature",
    "monitoring_feature_drifted": "gauge {feature, model_version}: 1 when the feature drifted",
    "monitoring_live_rmse": "gauge {model_version}: RMSE of the scores against ground truth",
    "monitoring_live_mae": "gauge {model_version}: MAE of the scores against ground truth",
    "monitoring_live_roc_auc": "gauge {model_version}: ROC AUC of the scores against ground truth",
    "monitoring_airflow_failed_dag_runs": "gauge {dag_id}: failed DAG runs in the last 24 hours",
    "monitoring_last_evaluation_timestamp_seconds": "gauge: Unix time of the last finished evaluation",
    "monitoring_evaluation_errors_total": "counter {step}: evaluation steps that failed",
    "monitoring_retraining_triggered_total": "counter {reason}: training runs started",
    # the running rollout (monitoring_service/rollout_metrics.py); per variant: {variant, model_version}
    "monitoring_rollout_active": "gauge {mode}: 1 while a rollout runs; mode champion at 0 when none does",
    "monitoring_rollout_share": "gauge: the challenger's share of the answers",
    "monitoring_rollout_requests": "gauge per variant: requests it was asked to answer",
    "monitoring_rollout_labeled_outcomes": "gauge per variant: labelled outcomes so far",
    "monitoring_rollout_brier": "gauge per variant: Brier score (mean squared error)",
    "monitoring_rollout_brier_low": "gauge per variant: lower bound of the Brier score's interval",
    "monitoring_rollout_brier_high": "gauge per variant: upper bound of the Brier score's interval",
    "monitoring_rollout_auc": "gauge per variant: ROC AUC",
    "monitoring_rollout_precision": "gauge per variant: precision at SERVING_SCORE_THRESHOLD",
    "monitoring_rollout_recall": "gauge per variant: recall at SERVING_SCORE_THRESHOLD",
    "monitoring_rollout_latency_p50_ms": "gauge per variant: median answer time per request",
    "monitoring_rollout_latency_p99_ms": "gauge per variant: p99 answer time per request",
    "monitoring_rollout_error_rate": "gauge per variant: share of its requests it failed",
    "monitoring_rollout_brier_difference": "gauge {champion_version, challenger_version}: Brier challenger - champion",
    "monitoring_rollout_brier_difference_low": "gauge: lower bound of the Brier difference's interval",
    "monitoring_rollout_brier_difference_high": "gauge: upper bound of the Brier difference's interval",
    "monitoring_rollout_auc_difference": "gauge {champion_version, challenger_version}: AUC challenger - champion",
    "monitoring_rollout_auc_difference_low": "gauge: lower bound of the AUC difference's interval",
    "monitoring_rollout_auc_difference_high": "gauge: upper bound of the AUC difference's interval",
    "monitoring_rollout_max_error_rate": "gauge: ROLLOUT_MAX_ERROR_RATE",
    "monitoring_rollout_max_p99_ms": "gauge: ROLLOUT_MAX_P99_MS",
    "monitoring_rollout_decisions_total": "counter {decision}: rollouts promoted or rolled back",
    # every project's champion on /models/{name}/predict (monitoring_service/model_metrics.py), label {model}
    "monitoring_model_window_predictions": "gauge {model, model_version}: champion answers in the last window",
    "monitoring_model_window_labeled_predictions": "gauge {model, model_version}: of them, with their label back",
    "monitoring_model_feature_drift_score": "gauge {model, feature}: drift score of one feature",
    "monitoring_model_feature_drifted": "gauge {model, feature}: 1 when the feature drifted",
    "monitoring_model_drift_share": "gauge {model}: share of the model's features that drifted",
    "monitoring_model_drift_detected": "gauge {model}: 1 when enough of its features drifted",
    "monitoring_model_accuracy": "gauge {model}: accuracy of the labelled answers (classifiers)",
    "monitoring_model_macro_precision": "gauge {model}: mean per-class precision (classifiers)",
    "monitoring_model_macro_recall": "gauge {model}: mean per-class recall (classifiers)",
    "monitoring_model_macro_f1": "gauge {model}: mean per-class F1 (classifiers)",
    "monitoring_model_class_precision": "gauge {model, class}: precision of one class",
    "monitoring_model_class_recall": "gauge {model, class}: recall of one class",
    "monitoring_model_class_f1": "gauge {model, class}: F1 of one class",
    "monitoring_model_class_labeled_outcomes": "gauge {model, class}: labels of that true class in the window",
    "monitoring_model_live_rmse": "gauge {model}: RMSE of the scores against 0/1 labels (score models)",
    "monitoring_model_live_mae": "gauge {model}: MAE of the scores against 0/1 labels (score models)",
}

# Grafana's variables, replaced by what Grafana would put there, so an expression can be parsed.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__rate_interval}": "5m",
    "${__interval}": "1m",
    "${__range}": "1h",
    "$model_version": ".*",
    "${model_version}": ".*",
    "$model": ".*",
    "${model}": ".*",
}


# ---------------------------------------------------------------------------------------------
# Dashboards and rules
# ---------------------------------------------------------------------------------------------
def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in dashboard_files()}


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def load_rules() -> list[tuple[Path, str, dict[str, Any]]]:
    """(file, group name, rule) of every alerting and recording rule."""
    rules = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                rules.append((path, group["name"], rule))
    return rules


def alert_rules() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, rule) for path, _, rule in load_rules() if "alert" in rule]


def substitute_grafana_variables(expr: str) -> str:
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    return expr


def dashboard_expressions(substitute: bool = True) -> list[tuple[str, str]]:
    """(source, expr) of every dashboard query; Grafana's variables replaced unless told otherwise."""
    found = []
    for path, dashboard in load_dashboards().items():
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                source = f"{path.relative_to(REPO_ROOT)}: panel {panel.get('title')!r} ({target.get('refId')})"
                found.append((source, substitute_grafana_variables(expr) if substitute else expr))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    found = []
    for path, _, rule in load_rules():
        name = rule.get("alert") or rule.get("record")
        found.append((f"{path.relative_to(REPO_ROOT)}: {name}", rule["expr"]))
    return found


def variable_queries() -> list[tuple[str, str]]:
    """(source, query) of every templating variable that queries Prometheus (label_values(...) etc.)."""
    found = []
    for path, dashboard in load_dashboards().items():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable.get("query")
            query = query.get("query", "") if isinstance(query, dict) else str(query or "")
            found.append((f"{path.relative_to(REPO_ROOT)}: variable {variable.get('name')!r}", query))
    return found


# ---------------------------------------------------------------------------------------------
# Metric names in PromQL
# ---------------------------------------------------------------------------------------------
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "atan2", "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names_in_promql(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, labels and durations left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def metric_names_in_variable_query(query: str) -> set[str]:
    """label_values(metric, label), query_result(expr) and friends."""
    match = re.fullmatch(r"\s*label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)\s*", query)
    if match:
        return metric_names_in_promql(match.group(1))
    match = re.fullmatch(r"\s*(?:query_result|metrics)\((.*)\)\s*", query, re.DOTALL)
    if match:
        return metric_names_in_promql(match.group(1))
    return set()


def recorded_metric_names() -> set[str]:
    return {rule["record"] for _, _, rule in load_rules() if "record" in rule}


# ---------------------------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------------------------
def promtool() -> str | None:
    return shutil.which("promtool")
