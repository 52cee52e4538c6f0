"""Service tests: the `services` marker, and the fixtures several modules share."""

import pytest


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
