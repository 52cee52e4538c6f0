"""Fixtures several unit test modules share."""

from __future__ import annotations

import os

import pytest

from mlops_platform.services import airflow_env
from mlops_platform.settings import load_settings


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    """Our DAGs parsed as Airflow's dag-processor would, without a database or services. Airflow's
    environment is set for the module's tests only, then the previous one is restored."""
    settings = load_settings({**os.environ, "PLATFORM_HOME": str(tmp_path_factory.mktemp("airflow-home")),
                              "POSTGRES_PASSWORD": "x", "REDIS_PASSWORD": "x", "AIRFLOW_ADMIN_PASSWORD": "x",
                              "AIRFLOW_FERNET_KEY": "x", "AIRFLOW_SECRET_KEY": "x"})
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
