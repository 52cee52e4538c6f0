"""The record of every retraining the service started: table `retraining_triggers` in the feast database.

It says why each run was started, and its newest row is where the cool-down restarts from after
a restart of the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mlops_platform.postgres import apply_ddl, connect
from mlops_platform.settings import Settings

TRIGGERS_TABLE = "retraining_triggers"
DDL = f"""
create table if not exists {TRIGGERS_TABLE} (
    id             bigserial        primary key,
    triggered_at   timestamptz      not null,
    reason         text             not null,
    metric         text             not null,
    value          double precision not null,
    threshold      double precision not null,
    model_version  text,
    dag_run_id     text             not null
);
create index if not exists {TRIGGERS_TABLE}_triggered_at_idx on {TRIGGERS_TABLE} (triggered_at);
"""


@dataclass(frozen=True)
class TriggerRecord:
    triggered_at: datetime
    reason: str
    metric: str
    value: float
    threshold: float
    model_version: str | None
    dag_run_id: str


def ensure_table(settings: Settings) -> None:
    apply_ddl(settings, "retraining_triggers_schema", DDL)


def last_trigger_time(settings: Settings) -> datetime | None:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select max(triggered_at) from {TRIGGERS_TABLE}")
        return cur.fetchone()[0]


def record_trigger(settings: Settings, record: TriggerRecord) -> None:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"insert into {TRIGGERS_TABLE} (triggered_at, reason, metric, value, threshold, model_version, "
                    "dag_run_id) values (%s, %s, %s, %s, %s, %s, %s)",
                    (record.triggered_at, record.reason, record.metric, record.value, record.threshold,
                     record.model_version, record.dag_run_id))
