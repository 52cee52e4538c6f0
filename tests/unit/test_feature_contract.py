"""The feature contract (feast_repo/features.py) is light to import and the only place the feature list is written."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from data_pipeline.offline_store import STATS_COLUMNS
from data_pipeline.validate import COLUMNS, STATS
from feast_repo.features import FEATURE_NAMES, FEATURES, JOIN_KEY

REPO = Path(__file__).resolve().parents[2]
# Every package of the platform and the simulators; feast_repo itself owns the list.
READERS = ("mlops_platform", "data_pipeline", "training_pipeline", "model_serving", "monitoring_service",
           "simulation", "airflow/dags")


def test_the_contract_imports_nothing_heavy():
    """Every package reads it, the serving API at start-up too: importing Feast would cost seconds each time."""
    probe = ("import sys, feast_repo.features; "
             "print(','.join(sorted({'feast', 'pandas', 'numpy', 'pyarrow'} & set(sys.modules))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"feast_repo/features.py imports {result.stdout.strip()}"


def test_every_feature_has_a_type_feast_knows():
    assert len(set(FEATURE_NAMES)) == len(FEATURES) > 0
    assert {feature.dtype for feature in FEATURES} <= {"float32", "int64"}
    assert JOIN_KEY not in FEATURE_NAMES


def test_raw_files_carry_the_offline_tables_columns():
    """validate.py adds a kind to each column; its columns must still be the contract's."""
    assert tuple(COLUMNS[STATS]) == STATS_COLUMNS


def feature_list_copies(path: Path) -> list[str]:
    """Tuples, lists and sets written in the module that spell out every feature name.

    Dicts that give each feature its own value (a generator's formula, a message's fields) are not copies.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            strings = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if set(FEATURE_NAMES) <= strings:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_module_writes_the_feature_list_again():
    copies = [copy for folder in READERS for path in sorted((REPO / folder).rglob("*.py"))
              for copy in feature_list_copies(path)]
    assert not copies, ("the feature names are written again here; import them from feast_repo.features "
                        "(FEATURE_NAMES, or a form derived from it):\n" + "\n".join(copies))
