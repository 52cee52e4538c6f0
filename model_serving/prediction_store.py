"""Where served predictions and their outcomes are kept: tables in the `feast` PostgreSQL database.

- `prediction_log`: one row per (request, driver, variant) the online API scored, with the features it
  used (as sent, in `features`, and as columns for plain SQL), the model version that scored it, and
  its rollout part (mlops_platform.rollout): `variant` champion or challenger, `served` whether its
  score was the one returned (a shadow challenger's is not), `rollout_id`, `latency_ms` of the variant's
  answer, and `error` (with a null score) when the variant failed to answer that request.
- `ground_truth`: whether the trip of a (request, driver) was completed, as reported by /feedback.
- `labeled_predictions`: the two joined once both exist, without failed rows; what live monitoring
  (RMSE, MAE, ROC AUC, and each variant's numbers during a rollout) reads. An outcome that arrives
  before its prediction waits in `ground_truth` until it joins.
- `batch_predictions`: the daily batch scores, one row per (run, driver, variant): the champion's, and
  during a rollout (or when asked) the challenger's too, for offline comparison.

The projects' routes and batch (every project of mlops_platform.projects, the drivers' included):

- `model_prediction_log`: one row per (model, request, entity, variant): the features as sent (jsonb), the
  prediction (a classifier's label, or a score as text), a classifier's probabilities (jsonb).
- `model_ground_truth`: the label of a (model, request, entity), as reported by /models/{name}/feedback.
- `model_batch_predictions`: the daily batch's rows, one per (run, model, entity).

The logs are keyed by (request_id, driver_id[, variant]) and written with ON CONFLICT DO NOTHING, so a message
delivered twice (Kafka delivers at least once) adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from feast_repo.features import FEATURE_NAMES
from mlops_platform.postgres import apply_ddl, insert_rows
from mlops_platform.settings import Settings

PREDICTIONS_TABLE = "prediction_log"
GROUND_TRUTH_TABLE = "ground_truth"
LABELED_VIEW = "labeled_predictions"
BATCH_TABLE = "batch_predictions"

FEATURES = FEATURE_NAMES
PREDICTION_COLUMNS = ("request_id", "driver_id", "features", *FEATURES, "score", "model_name", "model_version",
                      "predicted_at", "variant", "served", "rollout_id", "latency_ms", "error")
GROUND_TRUTH_COLUMNS = ("request_id", "driver_id", "trip_completed", "observed_at")
MODEL_PREDICTIONS_TABLE = "model_prediction_log"
MODEL_GROUND_TRUTH_TABLE = "model_ground_truth"
MODEL_BATCH_TABLE = "model_batch_predictions"
MODEL_PREDICTION_COLUMNS = ("model_name", "request_id", "entity_key", "variant", "model_version", "features",
                            "prediction", "probabilities", "predicted_at", "latency_ms", "error")
MODEL_GROUND_TRUTH_COLUMNS = ("model_name", "request_id", "entity_key", "label", "observed_at")
MODEL_BATCH_COLUMNS = ("run_id", "model_name", "entity_key", "model_version", "prediction", "probabilities",
                       "scored_at")
BATCH_COLUMNS = ("run_id", "driver_id", "event_timestamp", "score", "model_name", "model_version", "variant")



def _keyed_by_variant(table: str, key: str) -> str:
    """Move a table made before rollouts to a primary key that includes `variant` (nothing when it has it)."""
    return f"""do $$ begin
    if not exists (select 1 from pg_index i join pg_attribute a on a.attrelid = i.indrelid
                   and a.attnum = any(i.indkey)
                   where i.indrelid = '{table}'::regclass and i.indisprimary and a.attname = 'variant') then
        alter table {table} drop constraint {table}_pkey;
        alter table {table} add primary key ({key});
    end if;
end $$;"""


DDL = f"""
create table if not exists {PREDICTIONS_TABLE} (
    request_id       text             not null,
    driver_id        bigint           not null,
    features         jsonb            not null,
    conv_rate        double precision,
    acc_rate         double precision,
    avg_daily_trips  double precision,
    score            double precision,
    model_name       text             not null,
    model_version    text             not null,
    predicted_at     timestamptz      not null,
    logged_at        timestamptz      not null default now(),
    variant          text             not null default 'champion',
    served           boolean          not null default true,
    rollout_id       text,
    latency_ms       double precision,
    error            text,
    primary key (request_id, driver_id, variant),
    check ((score is null) = (error is not null))
);
create index if not exists {PREDICTIONS_TABLE}_predicted_at_idx on {PREDICTIONS_TABLE} (predicted_at);
-- a log made before rollouts: one champion row per (request, driver), kept as it was
alter table {PREDICTIONS_TABLE} add column if not exists variant text not null default 'champion';
alter table {PREDICTIONS_TABLE} add column if not exists served boolean not null default true;
alter table {PREDICTIONS_TABLE} add column if not exists rollout_id text;
alter table {PREDICTIONS_TABLE} add column if not exists latency_ms double precision;
alter table {PREDICTIONS_TABLE} add column if not exists error text;
alter table {PREDICTIONS_TABLE} alter column score drop not null;
{_keyed_by_variant(PREDICTIONS_TABLE, "request_id, driver_id, variant")}
create index if not exists {PREDICTIONS_TABLE}_rollout_idx on {PREDICTIONS_TABLE} (rollout_id)
    where rollout_id is not null;

create table if not exists {GROUND_TRUTH_TABLE} (
    request_id       text        not null,
    driver_id        bigint      not null,
    trip_completed   smallint    not null check (trip_completed in (0, 1)),
    observed_at      timestamptz not null,
    logged_at        timestamptz not null default now(),
    primary key (request_id, driver_id)
);
create index if not exists {GROUND_TRUTH_TABLE}_observed_at_idx on {GROUND_TRUTH_TABLE} (observed_at);

create or replace view {LABELED_VIEW} as
select p.request_id, p.driver_id, p.conv_rate, p.acc_rate, p.avg_daily_trips, p.score, p.model_name,
       p.model_version, p.predicted_at, g.trip_completed, g.observed_at,
       g.observed_at - p.predicted_at as label_delay, p.variant, p.served, p.rollout_id, p.latency_ms
from {PREDICTIONS_TABLE} p
join {GROUND_TRUTH_TABLE} g using (request_id, driver_id)
where p.error is null;

create table if not exists {BATCH_TABLE} (
    run_id           text             not null,
    driver_id        bigint           not null,
    event_timestamp  timestamptz      not null,
    score            double precision not null,
    model_name       text             not null,
    model_version    text             not null,
    created_at       timestamptz      not null default now(),
    variant          text             not null default 'champion',
    primary key (run_id, driver_id, variant)
);
create index if not exists {BATCH_TABLE}_event_timestamp_idx on {BATCH_TABLE} (event_timestamp);
alter table {BATCH_TABLE} add column if not exists variant text not null default 'champion';
{_keyed_by_variant(BATCH_TABLE, "run_id, driver_id, variant")}

create table if not exists {MODEL_PREDICTIONS_TABLE} (
    model_name     text        not null,
    request_id     text        not null,
    entity_key     text        not null,
    variant        text        not null default 'champion',
    model_version  text        not null,
    features       jsonb       not null,
    prediction     text,
    probabilities  jsonb,
    predicted_at   timestamptz not null,
    logged_at      timestamptz not null default now(),
    latency_ms     real,
    error          text,
    primary key (model_name, request_id, entity_key, variant)
);
create index if not exists {MODEL_PREDICTIONS_TABLE}_predicted_at_idx on {MODEL_PREDICTIONS_TABLE}
    (model_name, predicted_at);

create table if not exists {MODEL_GROUND_TRUTH_TABLE} (
    model_name   text        not null,
    request_id   text        not null,
    entity_key   text        not null,
    label        text        not null,
    observed_at  timestamptz not null,
    logged_at    timestamptz not null default now(),
    primary key (model_name, request_id, entity_key)
);

create table if not exists {MODEL_BATCH_TABLE} (
    run_id         text        not null,
    model_name     text        not null,
    entity_key     text        not null,
    model_version  text        not null,
    prediction     text        not null,
    probabilities  jsonb,
    scored_at      timestamptz not null,
    primary key (run_id, model_name, entity_key)
);
"""

_INSERT_PREDICTIONS = (f"insert into {PREDICTIONS_TABLE} ({', '.join(PREDICTION_COLUMNS)}) values %s "
                       "on conflict (request_id, driver_id, variant) do nothing")
_INSERT_GROUND_TRUTH = (f"insert into {GROUND_TRUTH_TABLE} ({', '.join(GROUND_TRUTH_COLUMNS)}) values %s "
                        "on conflict (request_id, driver_id) do nothing")
_INSERT_MODEL_PREDICTIONS = (f"insert into {MODEL_PREDICTIONS_TABLE} ({', '.join(MODEL_PREDICTION_COLUMNS)}) "
                             "values %s on conflict (model_name, request_id, entity_key, variant) do nothing")
_INSERT_MODEL_GROUND_TRUTH = (f"insert into {MODEL_GROUND_TRUTH_TABLE} ({', '.join(MODEL_GROUND_TRUTH_COLUMNS)}) "
                              "values %s on conflict (model_name, request_id, entity_key) do nothing")
_INSERT_MODEL_BATCH = f"insert into {MODEL_BATCH_TABLE} ({', '.join(MODEL_BATCH_COLUMNS)}) values %s"
_INSERT_BATCH = f"insert into {BATCH_TABLE} ({', '.join(BATCH_COLUMNS)}) values %s"


def ensure_schema(settings: Settings | None = None) -> None:
    """Create the tables and the view if missing (idempotent; serialised, since two services may race)."""
    apply_ddl(settings, "prediction_store_schema", DDL)


def insert_predictions(cur, rows: Sequence[tuple[Any, ...]]) -> int:
    """Rows in PREDICTION_COLUMNS order (`features` as a JSON string); returns how many were new."""
    template = "(" + ", ".join("%s::jsonb" if c == "features" else "%s" for c in PREDICTION_COLUMNS) + ")"
    return insert_rows(cur, _INSERT_PREDICTIONS, rows, template)


def insert_ground_truth(cur, rows: Sequence[tuple[Any, ...]]) -> int:
    """Rows in GROUND_TRUTH_COLUMNS order; returns how many were new."""
    return insert_rows(cur, _INSERT_GROUND_TRUTH, rows)


def replace_batch_predictions(cur, run_id: str, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    """Swap a run's rows for `rows` (BATCH_COLUMNS order) in the caller's transaction: (deleted, inserted).

    Readers see the old rows or the new ones, never a mix, so re-running a run is safe.
    """
    wrong = sorted({str(row[0]) for row in rows if row[0] != run_id})
    if wrong:
        raise ValueError(f"every row must belong to run {run_id!r}, found rows of {wrong[:3]}")
    cur.execute(f"delete from {BATCH_TABLE} where run_id = %s", (run_id,))
    deleted = cur.rowcount
    return deleted, insert_rows(cur, _INSERT_BATCH, rows)


def insert_model_predictions(cur, rows: Sequence[tuple[Any, ...]]) -> int:
    """Rows in MODEL_PREDICTION_COLUMNS order (`features`, `probabilities` as JSON strings); returns the new ones."""
    template = "(" + ", ".join("%s::jsonb" if c in ("features", "probabilities") else "%s"
                               for c in MODEL_PREDICTION_COLUMNS) + ")"
    return insert_rows(cur, _INSERT_MODEL_PREDICTIONS, rows, template)


def insert_model_ground_truth(cur, rows: Sequence[tuple[Any, ...]]) -> int:
    """Rows in MODEL_GROUND_TRUTH_COLUMNS order; returns how many were new."""
    return insert_rows(cur, _INSERT_MODEL_GROUND_TRUTH, rows)


def replace_model_batch_predictions(cur, run_id: str, model_name: str,
                                    rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    """Swap a run's rows of one model for `rows` (MODEL_BATCH_COLUMNS order) in the caller's transaction."""
    wrong = sorted({f"{row[0]}/{row[1]}" for row in rows if (row[0], row[1]) != (run_id, model_name)})
    if wrong:
        raise ValueError(f"every row must belong to run {run_id!r} of model {model_name!r}, found {wrong[:3]}")
    cur.execute(f"delete from {MODEL_BATCH_TABLE} where run_id = %s and model_name = %s", (run_id, model_name))
    deleted = cur.rowcount
    template = "(" + ", ".join("%s::jsonb" if c == "probabilities" else "%s" for c in MODEL_BATCH_COLUMNS) + ")"
    return deleted, insert_rows(cur, _INSERT_MODEL_BATCH, rows, template)
