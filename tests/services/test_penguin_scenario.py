"""`bash run.sh scenario --project penguins --normal|--drifted` end to end: a trained penguin champion served
by the API, answers and feedback through the event spool, Kafka and the prediction logger, and the
monitoring service's verdict, once with the penguins as measured (no drift, accuracy near the holdout's),
then heavier penguins with longer flippers (drift of exactly those two features).

The verdict comes from a monitoring service process of this module (2 s interval, 50 rows minimum) on a
free port; the scenario reads it through MONITORING_SERVICE_PORT as a user's would. Its drift reference is
the one the champion's training run logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from mlops_platform.projects import PENGUINS
from simulation.penguin_scenario import penguin_rows
from tests.conftest import REPO_ROOT, eventually, free_port, run_sh, stack_up
from tests.services.monitored_traffic import metrics

# Fewer normal answers than drifted ones: both stay in the window, and the drifted ones must dominate it.
REQUESTS = {"normal": 100, "drifted": 200}


@pytest.fixture(scope="module")
def served_champion(trained_penguins, kafka_up, settings) -> str:
    """The API and the prediction logger up, the penguin route answering with a champion; its version."""
    stack_up("serving")
    row = penguin_rows(1, seed=0).iloc[0]
    probe = {"instances": [{"penguin_id": 1, "island": row.island, "bill_length_mm": float(row.bill_length_mm),
                            "bill_depth_mm": float(row.bill_depth_mm),
                            "flipper_length_mm": float(row.flipper_length_mm), "body_mass_g": float(row.body_mass_g)}]}

    def version() -> str | None:
        response = httpx.post(f"{settings.serving_url}/models/{PENGUINS.model_name}/predict", json=probe, timeout=5)
        return response.json()["model"]["version"] if response.status_code == 200 else None

    return eventually(version, 120, interval=1, what=f"the API serving a champion of {PENGUINS.model_name}")


@pytest.fixture(scope="module")
def monitoring_port(served_champion, settings):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MONITORING_SERVICE_PORT": str(port),
           "MONITOR_INTERVAL_SECONDS": "2", "MONITOR_WINDOW_MINUTES": "30", "MONITOR_MIN_ROWS": "50"}
    with open(settings.home / "logs" / "monitoring-service-penguin-scenario.log", "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "monitoring_service"], env=env, cwd=REPO_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: metrics(url).get("monitoring_ready") == 1.0, 90, what=f"the service ready at {url}")
        yield str(port)
    finally:
        process.terminate()
        process.wait(timeout=30)


def scenario(kind: str, port: str) -> dict:
    result = run_sh("scenario", "--project", "penguins", f"--{kind}", "--requests", str(REQUESTS[kind]),
                    "--timeout", "120", env={"MONITORING_SERVICE_PORT": port}, check=False, timeout=600)
    assert result.returncode == 0, f"scenario --{kind} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def normal(monitoring_port) -> dict:
    return scenario("normal", monitoring_port)


@pytest.fixture(scope="module")
def drifted(normal, monitoring_port) -> dict:
    return scenario("drifted", monitoring_port)


def test_penguins_as_measured_show_no_drift_and_the_champion_s_quality(normal, served_champion,
                                                                          trained_penguins) -> None:
    assert normal["outcome"] == "as expected" and normal["drift_detected"] is False
    assert normal["answered"] == normal["feedback"] == REQUESTS["normal"]
    assert normal["model_versions"] == [served_champion]
    assert not any(feature["drifted"] for feature in normal["features"].values()), normal["features"]
    # the champion has seen most of these penguins in training: far above the majority guess
    assert normal["accuracy"] > trained_penguins["majority_baseline"] + 0.3, normal
    assert set(normal["class_recall"]) == set(PENGUINS.classes)


def test_heavier_penguins_with_longer_flippers_are_reported_as_drift_of_those_features(drifted) -> None:
    assert drifted["outcome"] == "as expected" and drifted["drift_detected"] is True, drifted
    drifted_features = {name for name, feature in drifted["features"].items() if feature["drifted"]}
    assert drifted_features == {"body_mass_g", "flipper_length_mm"}, drifted["features"]
    assert drifted["macro_f1"] is not None and "accuracy" in drifted
