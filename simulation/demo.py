"""`bash run.sh demo`: the whole story on a running platform, printed as it happens.

raw files land -> data_ingestion DAG (validated offline store) -> feature_materialization DAG (Feast
online store) -> training DAG (cross-validation, registry, champion) -> batch scoring DAG -> online API
ranks drivers -> predictions and outcomes logged -> where to look. Every step goes through the
platform's own code paths: the Airflow runs are real runs (see them in the UI), the API answers real
HTTP requests. In docker mode it runs in a container of the platform (`compose run demo`), writing
the raw files to the landing volume that the Airflow tasks read.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from datetime import date, timedelta

from mlops_platform.settings import Settings, get_settings

DEMO_DRIVERS = 200
DEMO_DAYS = 21
DEMO_SEED = 42
DEMO_PENGUIN_BAD_ROWS = 3


def step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def done(started: float, detail: str) -> None:
    print(f"    {detail} ({time.perf_counter() - started:.1f}s)", flush=True)


def api(settings: Settings, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{settings.serving_url}{path}",
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if settings.serving_auth:
        request.add_header("Authorization", f"Bearer {settings.serving_api_token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for_model(settings: Settings, version: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    answer: dict = {}
    while time.monotonic() < deadline:
        status, answer = api(settings, "/ready")
        if status == 200 and str(answer.get("model", {}).get("version")) == str(version):
            return answer
        time.sleep(1)
    raise RuntimeError(f"the serving API did not load model version {version} within {timeout:.0f}s: {answer}")


def run_dag(airflow, settings, dag_id: str, timeout: float, conf: dict | None = None) -> str | None:
    """Trigger a run of `dag_id` and wait for it: its run id when it succeeded, else None after saying
    where to look."""
    run_id = airflow.trigger(dag_id, conf=conf, note="bash run.sh demo")
    state = airflow.wait(dag_id, run_id, timeout=timeout)
    if state == "success":
        return run_id
    print(f"error: {dag_id} run {run_id} {state}; see {settings.airflow_url}/dags/{dag_id} and the task's log",
          file=sys.stderr)
    return None


def land_raw_files(settings: Settings) -> None:
    from simulation.generate import generate

    started = step(f"Generate {DEMO_DRIVERS} drivers x {DEMO_DAYS} days of raw files into {settings.landing_dir}")
    summary = generate(drivers=DEMO_DRIVERS, days=DEMO_DAYS, end=date.today(), seed=DEMO_SEED,
                       landing=settings.landing_dir)
    planted = sum(len(d.planted) for d in summary.datasets.values())
    done(started, f"{sum(d.rows_written for d in summary.datasets.values()):,} rows, {planted} planted bad rows")
    land_penguins(settings)


def land_penguins(settings: Settings) -> None:
    """The second project's raw file: yesterday's penguins (within the materialization's look-back)."""
    from simulation.penguins import land

    started = step("Land the palmerpenguins CSV as yesterday's raw file of dataset `penguins`")
    landed = land(settings, date.today() - timedelta(days=1), bad_rows=DEMO_PENGUIN_BAD_ROWS)
    done(started, f"{landed['rows']} rows, {len(landed['planted'])} planted bad rows, "
                  f"{landed['rows_missing_measurements']} without measurements")


def ingest(airflow, settings: Settings) -> bool:
    started = step("Ingest through Airflow: DAG `data_ingestion` (validate, load the offline store, quarantine)")
    run_id = run_dag(airflow, settings, "data_ingestion", timeout=600, conf={"scope": "all"})
    if run_id is None:
        return False
    totals = [airflow.xcom("data_ingestion", run_id, task)
              for task in ("ingest_driver_stats", "ingest_orders", "ingest_penguins")]
    done(started, f"run {run_id}: {sum(t['rows_loaded'] for t in totals):,} rows loaded, "
                  f"{sum(t['rows_quarantined'] for t in totals)} quarantined, "
                  f"{sum(t['files_skipped'] for t in totals)} files already loaded before")
    return True


def materialize(airflow, settings: Settings) -> bool:
    started = step("Materialize through Airflow: DAG `feature_materialization` (newest features -> Redis)")
    run_id = run_dag(airflow, settings, "feature_materialization", timeout=600, conf={"lookback_hours": 72})
    if run_id is None:
        return False
    report = airflow.xcom("feature_materialization", run_id, "record_materialization")
    done(started, f"run {run_id}: {report['rows_written']:,} drivers and {report['penguin_rows_read']} penguins "
                  "written online")
    return True


def champion(settings: Settings) -> str:
    """The version number of the model the serving API is to load; NoChampion when training promoted none."""
    from mlops_platform import model_registry

    client = model_registry.client(settings.mlflow_tracking_uri)
    return model_registry.champion(client, settings.model_name, settings.model_alias).version


def train(airflow, settings: Settings) -> bool:
    started = step("Train through Airflow: DAG `training` (cross-validation, registry, champion/challenger)")
    run_id = run_dag(airflow, settings, "training", timeout=1200)
    if run_id is None:
        return False
    done(started, f"run {run_id}: success; {settings.model_name}@{settings.model_alias} is version "
                  f"{champion(settings)}")
    return True


def score_in_batch(airflow, settings: Settings) -> bool:
    started = step("Batch scoring through Airflow: DAG `batch_serving`")
    run_id = run_dag(airflow, settings, "batch_serving", timeout=600)
    if run_id is None:
        return False
    done(started, f"run {run_id}: success")
    return True


def rank_drivers_online(settings: Settings) -> bool:
    """A booking's five candidates ranked by the API once it serves the new champion, and its outcome sent."""
    started = step("Online API: rank five candidate drivers for a booking")
    wait_for_model(settings, champion(settings))
    candidates = [1001 + i * 7 for i in range(5)]
    status, answer = api(settings, "/predict", {"request_id": f"demo-{int(time.time())}", "driver_ids": candidates})
    if status != 200:
        print(f"error: /predict answered {status}: {answer}", file=sys.stderr)
        return False
    scores = {s["driver_id"]: s["score"] for s in answer["scores"]}
    for rank, driver in enumerate(answer["ranking"], start=1):
        print(f"    {rank}. driver {driver}  score {scores[driver]:.4f}")
    print(f"    best driver: {answer['best_driver_id']} (model {answer['model']['name']} "
          f"v{answer['model']['version']}); no features: {answer['missing_driver_ids'] or 'none'}")
    best = answer["best_driver_id"]
    status, _ = api(settings, "/feedback", {"request_id": answer["request_id"], "driver_id": best, "trip_completed": 1})
    done(started, f"outcome of the booking sent to /feedback: {status}")
    return True


def train_penguins(airflow, settings: Settings) -> bool:
    """The second project on the same platform: its own DAG from the shared training flow."""
    from mlops_platform.projects import PENGUINS

    started = step(f"Train the second project through Airflow: DAG `{PENGUINS.training_dag}` (Keras on JAX, "
                   "folds as mapped tasks, registry)")
    run_id = run_dag(airflow, settings, PENGUINS.training_dag, timeout=1200)
    if run_id is None:
        return False
    outcome = airflow.xcom(PENGUINS.training_dag, run_id, "register_and_promote")
    done(started, f"run {run_id}: success; {PENGUINS.model_name} version {outcome['version']} "
                  f"({outcome['decision']})")
    return True


def classify_penguin_online(settings: Settings, timeout: float = 120.0) -> bool:
    """One penguin measured in the field, classified by the penguin model's own route."""
    from mlops_platform.projects import PENGUINS

    started = step(f"Online API: classify a penguin at /models/{PENGUINS.model_name}/predict")
    penguin = {"penguin_id": 900001, "island": "Biscoe", "bill_length_mm": 46.5, "bill_depth_mm": 15.2,
               "flipper_length_mm": 215.0, "body_mass_g": 5200.0, "sex": "female"}
    path = f"/models/{PENGUINS.model_name}/predict"
    deadline = time.monotonic() + timeout
    while True:  # 503 until every worker has loaded the new champion
        status, answer = api(settings, path, {"request_id": f"demo-penguin-{int(time.time())}",
                                              "instances": [penguin]})
        if status == 200 or status != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    if status != 200:
        print(f"error: {path} answered {status}: {answer}", file=sys.stderr)
        return False
    prediction = answer["predictions"][0]
    odds = ", ".join(f"{name} {p:.3f}" for name, p in prediction["probabilities"].items())
    print(f"    penguin {prediction['penguin_id']} ({penguin['island']}, flipper {penguin['flipper_length_mm']:.0f} mm,"
          f" {penguin['body_mass_g']:.0f} g): {prediction['label']}  [{odds}]  (model {answer['model']['name']} "
          f"v{answer['model']['version']})")
    status, _ = api(settings, f"/models/{PENGUINS.model_name}/feedback",
                    {"request_id": answer["request_id"], "penguin_id": penguin["penguin_id"], "label": "Gentoo"})
    done(started, f"its species, confirmed in the field, sent to /feedback: {status}")
    return True


def where_to_look(settings: Settings) -> str:
    return f"""
==> Where to look
    Airflow      {settings.airflow_url}   (user {settings.airflow_admin_user}, password: AIRFLOW_ADMIN_PASSWORD, .env)
    MLflow       {settings.mlflow_tracking_uri}   (experiment and model {settings.model_name})
    Serving API  {settings.serving_url}/docs   (/predict, /feedback, /models/penguin_species/predict, /metrics)
    Prometheus   {settings.prometheus_url}
    Kafka        {settings.kafka_bootstrap_servers}   (topics {settings.driver_stats_topic}, {
        settings.predictions_topic})
    Grafana, Kibana, Jenkins: docker mode only (bash run.sh all up --mode docker on a machine with Docker)
    Status: bash run.sh all status    Logs: bash run.sh <stack> logs    Stop: bash run.sh all down"""


def main() -> int:
    from mlops_platform.airflow_client import AirflowClient

    settings = get_settings()
    airflow = AirflowClient.from_settings(settings)
    land_raw_files(settings)
    for run_pipeline in (ingest, materialize, train, train_penguins, score_in_batch):
        if not run_pipeline(airflow, settings):
            return 1
    if not rank_drivers_online(settings) or not classify_penguin_online(settings):
        return 1
    if settings.mode != "docker":  # in docker mode run.sh prints the URLs as the host sees them (`bash run.sh urls`)
        print(where_to_look(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
