"""Fixtures several unit test modules share."""

from __future__ import annotations

import os

import pytest

from mlops_platform.services import airflow_env
from tests.conftest import build_settings


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    """Our DAGs parsed as Airflow's dag-processor would, without a database or services. Airflow's
    environment is set for the module's tests only, then the previous one is restored."""
    settings = build_settings(tmp_path_factory.mktemp("airflow-home"))
    env = airflow_env(settings)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        from airflow.dag_processing.dagbag import DagBag

        yield DagBag(dag_folder=env["AIRFLOW__CORE__DAGS_FOLDER"])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def raw():
    """docker-compose.yml as written (YAML anchors and merges resolved, ${...} untouched)."""
    from tests.compose_file import load_raw

    return load_raw()


@pytest.fixture(scope="module")
def compose():
    """docker-compose.yml as compose sees it with a fresh .env."""
    from tests.compose_file import load_compose

    return load_compose()
