"""notebooks/driver_poc.ipynb, executed as a data scientist runs it, against the test platform.

The kernel is the one `bash run.sh notebook` gives JupyterLab: the spec mlops_platform.notebook writes under
PLATFORM_HOME, with the server's environment, so this also holds on a machine where only the .venv exists.
The notebook registers under a model name and an experiment of this test's own (POC_MODEL_NAME,
POC_EXPERIMENT): the driver model's aliases, which other tests read, never move. Its labels are the
month before 2022-11-01 of drivers 8,800,001.., a window and ids no other test writes.
"""

from __future__ import annotations

import uuid

import nbformat
import pytest

from mlops_platform.notebook import NOTEBOOK_DIR, install_kernel, notebook_environment
from tests.services.training_data import FEATURES, load_generated
from training_pipeline import registry

NOTEBOOK = NOTEBOOK_DIR / "driver_poc.ipynb"
LABEL_END, LABEL_DAYS = "2022-11-01", 14


def execute(settings, variables: dict[str, str]) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel of the platform's spec; nbclient raises on the first failing cell."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    kernels = install_kernel(settings).parent
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    manager = AsyncKernelManager(kernel_name=notebook.metadata.kernelspec.name,
                                 kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = NotebookClient(notebook, km=manager, timeout=300, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute(env={**notebook_environment(settings), **variables})
    return notebook


@pytest.fixture(scope="module")
def executed(offline_store, mlflow_client, settings):
    load_generated(8_800_001, drivers=60, days=LABEL_DAYS, end=LABEL_END, seed=43)
    suffix = uuid.uuid4().hex[:8]
    names = {"POC_MODEL_NAME": f"driver-poc-test-{suffix}", "POC_EXPERIMENT": f"driver-poc-test-{suffix}"}
    notebook = execute(settings, {**names, "POC_LABEL_END": LABEL_END, "POC_LABEL_DAYS": str(LABEL_DAYS)})
    return notebook, names


def test_the_notebook_tracks_its_variants_and_registers_the_best_as_challenger(executed, mlflow_client):
    notebook, names = executed
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors, errors
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the exploration cells drew no inline plots"

    experiment = mlflow_client.get_experiment_by_name(names["POC_EXPERIMENT"])
    assert experiment is not None, f"no experiment {names['POC_EXPERIMENT']!r} in MLflow"
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert len(runs) >= 2 and all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status)
                                                                                for r in runs]
    assert all({"alpha", "l1_ratio"} <= set(r.data.params) and "holdout_roc_auc" in r.data.metrics for r in runs)

    aliases = registry.aliases(mlflow_client, names["POC_MODEL_NAME"])
    assert set(aliases) == {"challenger"}, aliases
    version = mlflow_client.get_model_version(names["POC_MODEL_NAME"], aliases["challenger"])
    assert version.run_id in {r.info.run_id for r in runs}
    registered = mlflow_client.get_run(version.run_id).data.metrics["holdout_roc_auc"]
    assert registered == pytest.approx(max(r.data.metrics["holdout_roc_auc"] for r in runs), rel=1e-12)
    assert version.tags["features"] == ",".join(FEATURES)
