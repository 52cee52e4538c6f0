"""Service tests: the `services` marker, and the fixtures several modules share."""

import pytest

# Registered here, once: a fixture imported into several test modules is a separate fixture in each, and a
# "session" one would then run once per module (the penguin model trained again for each).
from tests.services.penguin_project import trained_penguins  # noqa: F401

# The serving tests' running API and what it serves (module-scoped: each module gets its own).
from tests.services.serving_api import api, online_rows, registry, store  # noqa: F401


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/services/" in str(item.fspath):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="module")
def monitored_drivers(platform_up, settings):
    """Drivers with normal stats in both stores (tests/services/monitored_traffic.py)."""
    from tests.services.monitored_traffic import drivers_in_stores

    yield from drivers_in_stores(settings)


@pytest.fixture(scope="module")
def monitored_champion(monitored_drivers, settings):
    """This module's champion, served by the API, with the drivers as drift reference."""
    from tests.services.monitored_traffic import served_champion

    yield from served_champion(monitored_drivers, settings)


@pytest.fixture(scope="module")
def offline_store(feast_up):
    """The offline store's tables, and the training tests' rows (tests/services/training_data.py) removed after."""
    from data_pipeline.offline_store import ensure_schema
    from tests.services.training_data import ID_RANGE, delete_drivers

    ensure_schema()
    yield
    delete_drivers(*ID_RANGE)


@pytest.fixture(scope="module")
def mlflow_client(mlflow_up, settings):
    from mlops_platform import model_registry

    return model_registry.client(settings.mlflow_tracking_uri)
