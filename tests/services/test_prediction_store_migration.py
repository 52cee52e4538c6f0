"""A prediction log made before rollouts is brought forward in place: its rows stay, keyed by variant now."""

from __future__ import annotations

import uuid

from mlops_platform.postgres import connect
from model_serving.prediction_store import DDL

# The tables as the platform created them before rollouts existed.
BEFORE_ROLLOUTS = """
create table prediction_log (
    request_id text not null, driver_id bigint not null, features jsonb not null,
    conv_rate double precision, acc_rate double precision, avg_daily_trips double precision,
    score double precision not null, model_name text not null, model_version text not null,
    predicted_at timestamptz not null, logged_at timestamptz not null default now(),
    primary key (request_id, driver_id));
create table ground_truth (
    request_id text not null, driver_id bigint not null,
    trip_completed smallint not null check (trip_completed in (0, 1)),
    observed_at timestamptz not null, logged_at timestamptz not null default now(),
    primary key (request_id, driver_id));
create table batch_predictions (
    run_id text not null, driver_id bigint not null, event_timestamp timestamptz not null,
    score double precision not null, model_name text not null, model_version text not null,
    created_at timestamptz not null default now(), primary key (run_id, driver_id));
create view labeled_predictions as
select p.request_id, p.driver_id, p.conv_rate, p.acc_rate, p.avg_daily_trips, p.score, p.model_name,
       p.model_version, p.predicted_at, g.trip_completed, g.observed_at, g.observed_at - p.predicted_at as label_delay
from prediction_log p join ground_truth g using (request_id, driver_id);
insert into prediction_log (request_id, driver_id, features, score, model_name, model_version, predicted_at)
values ('r1', 7, '{}', 0.7, 'm', '1', now());
insert into batch_predictions values ('b1', 7, now(), 0.7, 'm', '1', now());
"""


def primary_key(cur, table: str) -> list[str]:
    cur.execute("""select a.attname from pg_index i
                   join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                   where i.indrelid = %s::regclass and i.indisprimary order by a.attnum""", (table,))
    return [row[0] for row in cur.fetchall()]


def test_an_old_log_gains_the_rollout_columns_and_keeps_its_rows(feast_up, settings):
    schema = f"migration_{uuid.uuid4().hex[:8]}"
    with connect(settings) as conn, conn.cursor() as cur:
        try:
            cur.execute(f"create schema {schema}; set local search_path = {schema}")
            cur.execute(BEFORE_ROLLOUTS)
            cur.execute(DDL)
            cur.execute(DDL)  # idempotent: a second start changes nothing
            assert primary_key(cur, "prediction_log") == ["request_id", "driver_id", "variant"]
            assert primary_key(cur, "batch_predictions") == ["run_id", "driver_id", "variant"]
            cur.execute("select request_id, variant, served, rollout_id, error from prediction_log")
            assert cur.fetchall() == [("r1", "champion", True, None, None)]
            cur.execute("insert into prediction_log (request_id, driver_id, features, model_name, model_version, "
                        "predicted_at, variant, served, error) values ('r1', 7, '{}', 'm', '2', now(), "
                        "'challenger', false, 'TimeoutError')")
            cur.execute("insert into ground_truth values ('r1', 7, 1, now(), now())")
            cur.execute("select variant, score from labeled_predictions")
            assert cur.fetchall() == [("champion", 0.7)]  # the failed challenger row has no label to join
        finally:
            conn.rollback()
