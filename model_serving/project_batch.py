"""Batch scoring of the projects other than the driver ranking (which model_serving.batch scores).

For each such project in mlops_platform.projects.PROJECTS and a moment `at`: the latest validated row per key
from the project's offline table (event_timestamp <= at; the newest `created` wins a tie), scored by the
version the `champion` alias names (loaded by version with `mlflow.pyfunc`, the same model the registry
serves), into `model_batch_predictions`: a classifier's label and class probabilities, or a score. A run's
rows of a model are replaced in one transaction, so re-running a run id gives the same rows.

    python -m model_serving.project_batch --at 2026-05-02T00:00:00+00:00 [--run-id R] [--project penguins]
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from mlops_platform import model_registry
from mlops_platform.postgres import connect
from mlops_platform.projects import PROJECTS, Project
from mlops_platform.settings import Settings, get_settings
from model_serving.prediction_store import ensure_schema, replace_model_batch_predictions

log = logging.getLogger("model_serving.project_batch")
TIMESTAMP, CREATED = "event_timestamp", "created"


class NoOfflineTable(LookupError):
    """The project's offline table does not exist yet: nothing was ever ingested for it."""


@dataclass(frozen=True)
class ProjectBatchReport:
    run_id: str
    at: str
    project: str
    model_name: str
    model_version: str
    entities: int  # keys with a row at or before `at`
    scored: int
    replaced_rows: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def batch_projects(settings: Settings) -> list[Project]:
    """The projects this module scores: all but the one model_serving.batch scores (MODEL_NAME)."""
    return [p for p in PROJECTS.values() if p.model_name != settings.model_name]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else datetime.fromtimestamp(value.timestamp(), UTC)


def latest_rows(project: Project, at: datetime, settings: Settings) -> pd.DataFrame:
    """The newest row per key at or before `at`: the key and the project's features (float32), sorted by key."""
    columns = ", ".join([project.join_key, *project.features])
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select to_regclass(%s) is not null", (project.offline_table,))
        if not cur.fetchone()[0]:
            raise NoOfflineTable(f"expected table {project.offline_table} in the feature database, found none: "
                                 f"ingest {project.name} data first (the data_ingestion DAG)")
        cur.execute(f"select distinct on ({project.join_key}) {columns} from {project.offline_table} "
                    f"where {TIMESTAMP} <= %s order by {project.join_key}, {TIMESTAMP} desc, {CREATED} desc",
                    (_utc(at),))
        rows = cur.fetchall()
    frame = pd.DataFrame(rows, columns=[project.join_key, *project.features])
    frame[project.join_key] = frame[project.join_key].astype("int64")
    return frame.astype({name: "float32" for name in project.features})


def outputs(model, project: Project, frame: pd.DataFrame) -> np.ndarray:
    """(n, classes) probabilities of a classifier, or (n, 1) scores, from the pyfunc model."""
    if frame.empty:
        return np.empty((0, len(project.classes) or 1))
    result = model.predict(frame[list(project.features)].astype("float32"))
    values = np.asarray(getattr(result, "values", result), dtype=np.float64).reshape(len(frame), -1)
    expected = len(project.classes) if project.is_classifier else 1
    if values.shape[1] != expected or not np.isfinite(values).all():
        raise ValueError(f"{project.model_name} returned {values.shape[1]} columns (or non-finite values), "
                         f"expected {expected} finite ones")
    return values


def rows_of(project: Project, run_id: str, version: str, keys: np.ndarray, values: np.ndarray,
            scored_at: datetime) -> list[tuple]:
    """model_batch_predictions rows (MODEL_BATCH_COLUMNS order)."""
    rows = []
    for key, out in zip(keys, values, strict=True):
        if project.is_classifier:
            prediction = project.classes[int(np.argmax(out))]
            probabilities = json.dumps({c: float(p) for c, p in zip(project.classes, out, strict=True)})
        else:
            prediction, probabilities = repr(float(out[0])), None
        rows.append((run_id, project.model_name, str(int(key)), version, prediction, probabilities, scored_at))
    return rows


def score_project(project: Project, at: datetime, run_id: str, settings: Settings) -> ProjectBatchReport:
    """Score one project's latest rows with its champion; NoChampion when it has none, NoOfflineTable when its
    data was never ingested."""
    import mlflow.pyfunc

    import mlops_platform.keras_backend  # noqa: F401  (a Keras model may be loaded)

    started = time.perf_counter()
    model_registry.check_server(settings.mlflow_tracking_uri)
    client = model_registry.client(settings.mlflow_tracking_uri)
    champion = model_registry.champion(client, project.model_name, settings.model_alias)
    model = mlflow.pyfunc.load_model(f"models:/{project.model_name}/{champion.version}")
    ensure_schema(settings)
    frame = latest_rows(project, at, settings)
    values = outputs(model, project, frame)
    rows = rows_of(project, run_id, champion.version, frame[project.join_key].to_numpy(), values, _utc(at))
    with connect(settings) as conn, conn.cursor() as cur:
        deleted, inserted = replace_model_batch_predictions(cur, run_id, project.model_name, rows)
    report = ProjectBatchReport(run_id, _utc(at).isoformat(), project.name, project.model_name, champion.version,
                                len(frame), inserted, deleted, round(time.perf_counter() - started, 3))
    log.info("project batch scored", extra=report.as_dict())
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    from mlops_platform.logs import configure_logging

    parser = argparse.ArgumentParser(description="Score each project's latest rows with its champion.")
    parser.add_argument("--at", required=True, type=datetime.fromisoformat, help="ISO timestamp (UTC if naive)")
    parser.add_argument("--run-id", default=None, help="default: manual__<at>; re-using one replaces its rows")
    parser.add_argument("--project", default=None, help="one project's name (default: every batch project)")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging("batch-serving", settings.log_level)
    at = _utc(args.at)
    projects = [p for p in batch_projects(settings) if args.project in (None, p.name)]
    if not projects:
        print(json.dumps({"error": f"--project: expected one of {[p.name for p in batch_projects(settings)]}"}))
        return 2
    failed = False
    for project in projects:
        try:
            print(json.dumps(score_project(project, at, args.run_id or f"manual__{at.isoformat()}",
                                           settings).as_dict()))
        except (model_registry.NoChampion, NoOfflineTable) as exc:
            failed = True
            print(json.dumps({"project": project.name, "error": str(exc)}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
