"""Reading the monitoring configuration for tests: dashboards, alert rules, their PromQL, and the metric
names our code defines.

The metric names come from the code itself (the prometheus_client constructors, read with `ast`), so a
dashboard or an alert that uses a name no service exports fails a unit test instead of showing "no data".
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------
# Metric names our code defines
# ---------------------------------------------------------------------------------------------
CONSTRUCTORS = {
    "Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary", "Info": "info",
    "Enum": "gauge",
    "CounterMetricFamily": "counter", "GaugeMetricFamily": "gauge", "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary", "InfoMetricFamily": "info",
}


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    kind: str
    where: str

    def exposed_names(self) -> set[str]:
        """The sample names Prometheus stores for this metric."""
        if self.kind == "counter":
            base = self.name.removesuffix("_total")
            return {base + "_total", base + "_created"}
        if self.kind == "histogram":
            return {self.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
        if self.kind == "summary":
            return {self.name, *(self.name + suffix for suffix in ("_sum", "_count", "_created"))}
        if self.kind == "info":
            return {self.name + "_info"}
        return {self.name}


class _Unresolved(Exception):
    pass


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)


def _evaluate(node: ast.AST, names: dict[str, str]) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _evaluate(node.left, names) + _evaluate(node.right, names)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                if value.format_spec is not None or value.conversion != -1:
                    raise _Unresolved
                parts.append(_evaluate(value.value, names))
            else:
                parts.append(_evaluate(value, names))
        return "".join(parts)
    raise _Unresolved


def _python_files() -> list[Path]:
    files = []
    for package in METRIC_PACKAGES:
        root = REPO_ROOT / package
        if root.is_dir():
            files.extend(p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts)
    return files


def _module_constants(trees: dict[str, ast.Module]) -> dict[str, dict[str, str]]:
    """Module-level string constants of each module, following `from x import NAME` between them."""
    constants: dict[str, dict[str, str]] = {module: {} for module in trees}
    for _ in range(4):  # imports of imports
        for module, tree in trees.items():
            names = constants[module]
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module in constants:
                    for alias in node.names:
                        if alias.name in constants[node.module]:
                            names[alias.asname or alias.name] = constants[node.module][alias.name]
                elif isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if node.value is None:
                        continue
                    try:
                        value = _evaluate(node.value, names)
                    except _Unresolved:
                        continue
                    for target in targets:
                        if isinstance(target, ast.Name):
                            names[target.id] = value
    return constants


def _prometheus_imports(tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    """Names bound to prometheus_client's constructors anywhere in the module (local name -> constructor),
    and the names the prometheus_client modules themselves are bound to."""
    imported: dict[str, str] = {}
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prometheus_client":
            for alias in node.names:
                imported[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prometheus_client":
                    aliases.add(alias.asname or alias.name)
    return imported, aliases


def _enclosing_functions(tree: ast.Module) -> dict[int, ast.FunctionDef | ast.AsyncFunctionDef]:
    """id(node) -> the innermost function definition the node is written in."""
    enclosing: dict[int, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for function in ast.walk(tree):  # outer functions come first, so inner ones overwrite them
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if node is not function:
                    enclosing[id(node)] = function
    return enclosing


def _calls_to(tree: ast.Module, function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[ast.Call, bool]]:
    """The calls of a helper function in its own module, and whether each passes `self` implicitly."""
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called == function.name:
                calls.append((node, params[:1] in (["self"], ["cls"]) and isinstance(func, ast.Attribute)))
    return calls


def _constructions_of(trees: dict[str, ast.Module], class_name: str) -> list[tuple[str, ast.Call]]:
    """(module, call) of every `super().__init__(...)` in a subclass of `class_name`, in any module, and of
    every direct `class_name(...)`: the places a base class's __init__ gets its arguments."""
    found = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    (base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)) == class_name
                    for base in node.bases):
                for call in ast.walk(node):
                    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                            and call.func.attr == "__init__" and isinstance(call.func.value, ast.Call)
                            and isinstance(call.func.value.func, ast.Name) and call.func.value.func.id == "super"):
                        found.append((module, call))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == class_name:
                found.append((module, node))
    return found


def _call_site_bindings(function: ast.FunctionDef | ast.AsyncFunctionDef,
                        calls: list[tuple[ast.Call, bool, dict[str, str]]],
                        needed: set[str]) -> list[dict[str, str]] | None:
    """For a helper such as `def gauge(name, text): return Gauge(PREFIX + name, text)`, the string
    arguments given to the `needed` parameters at each of its `calls` (call, passes self implicitly,
    the constants of the call's module); None when one of them cannot be read."""
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    defaults = dict(zip(params[len(params) - len(function.args.defaults):], function.args.defaults, strict=True))
    bindings = []
    for node, implicit_self, names in calls:
        positional = params[1:] if implicit_self else params
        bound: dict[str, str] = {}
        try:
            for param, arg in zip(positional, node.args, strict=False):
                if param in needed:
                    bound[param] = _evaluate(arg, names)
            for keyword in node.keywords:
                if keyword.arg in needed:
                    bound[keyword.arg] = _evaluate(keyword.value, names)
            for param, default in defaults.items():
                if param in needed and param not in bound:
                    bound[param] = _evaluate(default, names)
        except _Unresolved:
            return None
        bindings.append(bound)
    return bindings or None


def _helper_calls(trees: dict[str, ast.Module], module: str, helper: ast.FunctionDef | ast.AsyncFunctionDef,
                  constants: dict[str, dict[str, str]]) -> list[tuple[ast.Call, bool, dict[str, str]]]:
    """Where a helper's arguments come from: the calls in its module, or for a class's __init__, the
    subclasses' super().__init__ calls and the constructions of the class anywhere."""
    if helper.name == "__init__":
        owner = next((node.name for node in ast.walk(trees[module]) if isinstance(node, ast.ClassDef)
                      and helper in node.body), None)
        if owner is not None:
            return [(call, True, constants[where]) for where, call in _constructions_of(trees, owner)]
    return [(call, implicit_self, constants[module]) for call, implicit_self in _calls_to(trees[module], helper)]


def metric_definitions() -> tuple[list[MetricDefinition], list[str]]:
    """Every metric our code creates, and the places whose name could not be read statically."""
    trees = {}
    paths = {}
    for path in _python_files():
        try:
            trees[_module_name(path)] = ast.parse(path.read_text(), filename=str(path))
        except SyntaxError:
            continue
        paths[_module_name(path)] = path
    constants = _module_constants(trees)
    definitions, unresolved = [], []
    for module, tree in trees.items():
        imported, aliases = _prometheus_imports(tree)
        enclosing = _enclosing_functions(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in imported:
                constructor = imported[func.id]
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in aliases:
                constructor = func.attr
            else:
                continue  # not prometheus_client's (collections.Counter, for one)
            if constructor not in CONSTRUCTORS:
                continue
            where = f"{paths[module].relative_to(REPO_ROOT)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            name_node = node.args[0] if node.args else keywords.get("name")
            if name_node is None:
                continue
            # The name is a constant expression, or built from the arguments of a helper function.
            scopes: list[dict[str, str]] = [constants[module]]
            try:
                _evaluate(name_node, constants[module])
            except _Unresolved:
                helper = enclosing.get(id(node))
                name_parts = [name_node, *(keywords[k] for k in ("namespace", "subsystem") if k in keywords)]
                needed = {n.id for value in name_parts for n in ast.walk(value) if isinstance(n, ast.Name)}
                bindings = (_call_site_bindings(helper, _helper_calls(trees, module, helper, constants), needed)
                            if helper else None)
                if bindings is None:
                    unresolved.append(where)
                    continue
                scopes = [{**constants[module], **bound} for bound in bindings]
            for names in scopes:
                try:
                    name = _evaluate(name_node, names)
                    prefix = [_evaluate(keywords[k], names) for k in ("namespace", "subsystem") if k in keywords]
                except _Unresolved:
                    unresolved.append(where)
                    break
                if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
                    continue  # not a metric name after all
                full = "_".join([p for p in prefix if p] + [name])
                definitions.append(MetricDefinition(full, CONSTRUCTORS[constructor], where))
    return definitions, unresolved


def defined_metric_names() -> dict[str, str]:
    """Sample name -> where it is defined, for every metric of our code."""
    names = {}
    for definition in metric_definitions()[0]:
        for name in definition.exposed_names():
            names.setdefault(name, f"{definition.where} ({definition.kind} {definition.name})")
    return names


def recorded_metric_names() -> set[str]:
    return {rule["record"] for _, _, rule in load_rules() if "record" in rule}


# ---------------------------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------------------------
def promtool() -> str | None:
    return shutil.which("promtool")
