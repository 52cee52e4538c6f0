"""Batch scoring: every active driver scored by the champion model, as of one moment.

One run, for a timestamp `at` and a run id:

1. the model: the version alias `champion` of MODEL_NAME points to (looked up, then loaded by version
   so that a promotion during the run cannot mix two models). While a rollout runs
   (mlops_platform.rollout_store), or when `--variants champion,challenger` asks for it, the challenger
   scores every driver too: each row carries its variant, for an offline comparison of the two;
2. the entity frame: every driver with a stats row within the feature view's TTL before `at`
   (the drivers Feast can give features for), each at `at`;
3. their features from Feast's offline store, point in time, through the feature service;
4. scores for the drivers whose features are complete; the others are reported, not scored;
5. `batch_predictions`: the run's rows replaced in one transaction, so a re-run of a run id gives
   the same rows, not twice as many;
6. `<PLATFORM_HOME>/batch_predictions/<run id>.parquet`, written atomically.

The DAG `batch_serving` runs it daily for the end of its data interval; the same thing by hand:

    python -m model_serving.batch --at 2025-05-02T00:00:00+00:00 [--run-id manual-2025-05-02]
        [--variants champion|champion,challenger]
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from data_pipeline.offline_store import STATS_TABLE
from mlops_platform import model_registry
from mlops_platform.feature_store import feature_store
from mlops_platform.postgres import connect
from mlops_platform.rollout import CHALLENGER, CHALLENGER_ALIAS, CHAMPION, VARIANTS
from mlops_platform.settings import Settings, get_settings
from model_serving.prediction_store import BATCH_COLUMNS, ensure_schema, replace_batch_predictions

ENTITY = "driver_id"
TIMESTAMP = "event_timestamp"
EXPORT_FOLDER = "batch_predictions"
log = logging.getLogger("model_serving.batch")


@dataclass(frozen=True)
class ServedModel:
    """The loaded model and the registry coordinates every score is stamped with."""

    name: str
    version: str
    run_id: str
    model: object  # mlflow.pyfunc.PyFuncModel

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores for the rows of `frame`, given the columns (float64) the model's signature names."""
        from training_pipeline.registry import score

        return score(self.model, frame)


@dataclass(frozen=True)
class BatchReport:
    run_id: str
    at: str
    model_name: str
    model_version: str  # the champion's
    active_drivers: int
    scored: int  # rows written: one per scored driver and variant
    versions: dict[str, str] = field(default_factory=dict)  # variant -> the version that scored it
    rollout_id: str | None = None  # the rollout whose versions scored, when one ran
    missing_driver_ids: list[int] = field(default_factory=list)
    replaced_rows: int = 0
    export: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _utc(value: datetime) -> datetime:
    """A plain UTC datetime (naive means UTC); also turns pendulum's DateTime, as Airflow passes it, into one."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value.timestamp(), UTC)


# ---------------------------------------------------------------------------------------------
# 1. the model
# ---------------------------------------------------------------------------------------------
def load_champion_model(settings: Settings) -> ServedModel:
    """The version `settings.model_alias` names, loaded; NoChampion when the alias or model is missing."""
    model_registry.check_server(settings.mlflow_tracking_uri)
    mlflow_client = model_registry.client(settings.mlflow_tracking_uri)
    champion = model_registry.champion(mlflow_client, settings.model_name, settings.model_alias)
    return _load_version(mlflow_client, settings.model_name, champion.version)


def _load_version(mlflow_client, name: str, version: str) -> ServedModel:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return ServedModel(name, str(version), str(mlflow_client.get_model_version(name, version).run_id or ""), model)


def load_variant_models(settings: Settings, variants: tuple[str, ...] | None) -> tuple[dict[str, ServedModel],
                                                                                         str | None]:
    """(variant -> its loaded model, the running rollout's id or None).

    `variants` None: the champion, and the challenger too while a rollout runs (the versions the rollout
    pinned). Named variants: those, the challenger being the rollout's, else the `challenger` alias.
    """
    from mlops_platform import rollout_store

    model_registry.check_server(settings.mlflow_tracking_uri)
    mlflow_client = model_registry.client(settings.mlflow_tracking_uri)
    rollout = rollout_store.current(settings, settings.model_name)
    wanted = variants or ((CHAMPION, CHALLENGER) if rollout else (CHAMPION,))
    if rollout is not None:
        versions = {variant: rollout.version_of(variant) for variant in wanted}
    else:
        versions = {variant: model_registry.champion(mlflow_client, settings.model_name,
                                                     settings.model_alias if variant == CHAMPION else CHALLENGER_ALIAS
                                                     ).version for variant in wanted}
    models = {variant: _load_version(mlflow_client, settings.model_name, version)
              for variant, version in versions.items()}
    return models, rollout.rollout_id if rollout else None


# ---------------------------------------------------------------------------------------------
# 2. the entity frame
# ---------------------------------------------------------------------------------------------
def feature_service(store):
    from feast_repo.features import FEATURE_SERVICE

    return store.get_feature_service(FEATURE_SERVICE)


def feature_ttl(store) -> timedelta:
    """The longest TTL among the feature service's views: how far back Feast looks for a driver's row."""
    ttls = [store.get_feature_view(projection.name).ttl or timedelta(0)
            for projection in feature_service(store).feature_view_projections]
    ttl = max(ttls, default=timedelta(0))
    if ttl <= timedelta(0):
        raise ValueError(f"expected the feature service's views to have a TTL, found {ttls}: without one every "
                         "driver ever seen would count as active")
    return ttl


def active_drivers(at: datetime, ttl: timedelta, settings: Settings) -> list[int]:
    """Drivers with a stats row in [at - ttl, at]: the same window Feast's point-in-time join uses."""
    at = _utc(at)
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select distinct {ENTITY} from {STATS_TABLE} "
                    f"where {TIMESTAMP} <= %s and {TIMESTAMP} >= %s order by {ENTITY}", (at, at - ttl))
        return [row[0] for row in cur.fetchall()]


def entity_frame(driver_ids: list[int], at: datetime) -> pd.DataFrame:
    """Feast's entity_df: one row per driver, all at `at`."""
    return pd.DataFrame({
        ENTITY: pd.Series(driver_ids, dtype="int64"),
        TIMESTAMP: pd.Series([pd.Timestamp(_utc(at))] * len(driver_ids), dtype="datetime64[ns, UTC]"),
    })


# ---------------------------------------------------------------------------------------------
# 3. features, 4. scores
# ---------------------------------------------------------------------------------------------
def historical_features(store, entities: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features per driver, as float64 (NaN where Feast found none), sorted by driver."""
    service = feature_service(store)
    names = [f.name for projection in service.feature_view_projections for f in projection.features]
    if entities.empty:
        return pd.DataFrame({ENTITY: pd.Series(dtype="int64"), **{n: pd.Series(dtype="float64") for n in names}})
    frame = store.get_historical_features(entity_df=entities, features=service).to_df()
    out = pd.DataFrame({ENTITY: frame[ENTITY].to_numpy(np.int64)})
    for name in names:
        out[name] = pd.to_numeric(frame[name]).to_numpy(np.float64, na_value=np.nan)
    return out.sort_values(ENTITY, kind="stable").reset_index(drop=True)


def score_features(model: ServedModel, features: pd.DataFrame, at: datetime, run_id: str,
                   variant: str = CHAMPION) -> tuple[pd.DataFrame, list[int]]:
    """(rows in BATCH_COLUMNS order for the drivers with complete features, the ids of the others)."""
    names = [c for c in features.columns if c != ENTITY]
    complete = features[names].notna().all(axis=1)
    missing = sorted(int(d) for d in features.loc[~complete, ENTITY])
    usable = features[complete]
    scores = model.predict(usable) if len(usable) else np.empty(0, np.float64)
    scored = pd.DataFrame({
        "run_id": pd.Series([run_id] * len(usable), dtype="object"),
        ENTITY: usable[ENTITY].to_numpy(np.int64),
        TIMESTAMP: pd.Series([pd.Timestamp(_utc(at))] * len(usable), dtype="datetime64[ns, UTC]"),
        "score": np.asarray(scores, np.float64),
        "model_name": model.name,
        "model_version": model.version,
        "variant": variant,
    })
    return scored[list(BATCH_COLUMNS)], missing


def score_variants(models: dict[str, ServedModel], features: pd.DataFrame, at: datetime,
                   run_id: str) -> tuple[pd.DataFrame, list[int]]:
    """Every variant's rows, the champion's first, and the drivers none could score (the same for all)."""
    frames, missing = [], []
    for variant in sorted(models, key=VARIANTS.index):
        scored, missing = score_features(models[variant], features, at, run_id, variant)
        frames.append(scored)
    return pd.concat(frames, ignore_index=True), missing


# ---------------------------------------------------------------------------------------------
# 5. the table, 6. the export
# ---------------------------------------------------------------------------------------------
def write_scores(run_id: str, scored: pd.DataFrame, settings: Settings) -> tuple[int, int]:
    """Replace the run's rows in batch_predictions in one transaction; (deleted, inserted)."""
    rows = [(r.run_id, int(r.driver_id), r.event_timestamp.to_pydatetime(), float(r.score), r.model_name,
             r.model_version, r.variant) for r in scored.itertuples(index=False)]
    with connect(settings) as conn, conn.cursor() as cur:
        return replace_batch_predictions(cur, run_id, rows)


def export_path(settings: Settings, run_id: str) -> Path:
    """Where a run's parquet export goes; characters a file name should not carry become '_'."""
    name = re.sub(r"[^A-Za-z0-9._:+-]", "_", run_id).lstrip(".")
    if not name:
        raise ValueError(f"expected a run id usable as a file name, got {run_id!r}")
    return settings.home / EXPORT_FOLDER / f"{name}.parquet"


def export_scores(scored: pd.DataFrame, path: Path) -> Path:
    """The run's rows as parquet, renamed into place when complete: readers see all or nothing."""
    import pyarrow as arrow

    from data_pipeline.landing import write_atomically

    write_atomically(arrow.Table.from_pandas(scored, preserve_index=False), path, "parquet")
    return path


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run_batch(at: datetime, run_id: str, settings: Settings | None = None, store=None,
              variants: tuple[str, ...] | None = None) -> BatchReport:
    """Score every driver active at `at` with the champion (and the challenger during a rollout, or with
    the variants named); idempotent per run id."""
    settings = settings or get_settings()
    at = _utc(at)
    began = time.perf_counter()
    models, rollout_id = load_variant_models(settings, variants)
    model = models.get(CHAMPION) or next(iter(models.values()))
    store = store or feature_store(settings)
    drivers = active_drivers(at, feature_ttl(store), settings)
    if not drivers:
        log.warning("no active driver: nothing to score", extra={"run_id": run_id, "at": at.isoformat()})
    features = historical_features(store, entity_frame(drivers, at))
    scored, missing = score_variants(models, features, at, run_id)
    if missing:
        log.warning("drivers without complete features were not scored",
                    extra={"run_id": run_id, "missing": len(missing), "first_missing": missing[:10]})
    ensure_schema(settings)
    deleted, inserted = write_scores(run_id, scored, settings)
    path = export_scores(scored, export_path(settings, run_id))
    report = BatchReport(run_id=run_id, at=at.isoformat(), model_name=model.name, model_version=model.version,
                         active_drivers=len(drivers), scored=inserted,
                         versions={variant: m.version for variant, m in models.items()}, rollout_id=rollout_id,
                         missing_driver_ids=missing,
                         replaced_rows=deleted, export=str(path), seconds=round(time.perf_counter() - began, 3))
    log.info("batch scored", extra={k: v for k, v in report.as_dict().items() if k != "missing_driver_ids"})
    return report


def parse_variants(text: str) -> tuple[str, ...]:
    """`champion,challenger` -> ('champion', 'challenger'); the champion always scores."""
    import argparse

    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or CHAMPION not in names:
        raise argparse.ArgumentTypeError(f"--variants: expected champion or champion,challenger, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from mlops_platform.logs import configure_logging

    parser = argparse.ArgumentParser(description="Score every active driver with the champion model.")
    parser.add_argument("--at", required=True, type=datetime.fromisoformat, help="ISO timestamp (UTC if naive)")
    parser.add_argument("--run-id", default=None, help="default: manual__<at>; re-using one replaces its rows")
    parser.add_argument("--variants", default=None, type=parse_variants,
                        help="champion or champion,challenger (default: both while a rollout runs, else champion)")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging("batch-serving", settings.log_level)
    at = _utc(args.at)
    try:
        report = run_batch(at, args.run_id or f"manual__{at.isoformat()}", settings, variants=args.variants)
    except model_registry.NoChampion as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
