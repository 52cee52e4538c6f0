"""The package layers of docs/architecture.md, read from the code: no upward import, no large unit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Lowest first; a package may import only the packages before it (docs/architecture.md).
LAYERS = ("feast_repo", "mlops_platform", "data_pipeline", "training_pipeline", "model_serving",
          "monitoring_service", "simulation", "airflow")
PLATFORM_PACKAGES = LAYERS[:-1]
CHECKED_FOLDERS = (*PLATFORM_PACKAGES, "airflow/dags", "tests", "benchmarks")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def python_files(*folders: str) -> list[Path]:
    files = []
    for folder in folders:
        files += sorted(path for path in (REPO / folder).rglob("*.py") if ".venv" not in path.parts)
    return files


def layer_of(path: Path) -> str:
    return path.relative_to(REPO).parts[0]


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in the module, including those inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def test_no_package_imports_a_higher_layer():
    upward = []
    for path in python_files(*PLATFORM_PACKAGES, "airflow/dags"):
        own = LAYERS.index(layer_of(path))
        for package, line in imported_packages(path):
            if package in LAYERS and package != layer_of(path) and LAYERS.index(package) > own:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {package}")
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(sorted(upward))


def test_the_feature_contract_and_the_ground_floor_import_no_pipeline():
    for package in ("feast_repo", "mlops_platform"):
        allowed = set(LAYERS[:LAYERS.index(package) + 1])
        for path in python_files(package):
            wrong = {name for name, _ in imported_packages(path) if name in LAYERS and name not in allowed}
            assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", python_files(*CHECKED_FOLDERS), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_over_the_line_budget(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines; split it by job"


def test_no_function_over_the_line_budget():
    long = []
    for path in python_files(*CHECKED_FOLDERS):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} has {length} lines")
    assert not long, "functions over the line budget:\n" + "\n".join(long)


def test_the_mlflow_folder_cannot_shadow_the_library():
    assert (REPO / "mlflow").is_dir() and not (REPO / "mlflow" / "__init__.py").exists()
    import mlflow

    assert Path(mlflow.__file__).resolve().is_relative_to(REPO / ".venv") or "site-packages" in mlflow.__file__
