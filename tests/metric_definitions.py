"""The metric names our code defines, read from the code itself (prometheus_client constructors, with `ast`),
so a dashboard or an alert that uses a name no service exports fails a unit test instead of showing "no data".
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from tests.monitoring_config import METRIC_PACKAGES, REPO_ROOT

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
