"""The offline store's tables in the `feast` PostgreSQL database (connections: mlops_platform.postgres).

`driver_hourly_stats` is what Feast's PostgreSQLSource reads; `orders` holds the labels;
`penguin_measurements` holds the penguins (features, indicator columns and the species, their label);
`quarantine` keeps every rejected row with its reason and where it came from; `ingestion_runs`
records what each file contributed, so a re-run of the same file is recognised and adds nothing.

`ensure_schema()` creates what is missing and migrates what an older version created: platforms keep
their tables across upgrades, so a change to an existing table is made here, idempotently.
"""

from __future__ import annotations

import re

from feast_repo import penguin_features as penguin
from feast_repo.features import CREATED_FIELD, FEATURE_NAMES, JOIN_KEY, OFFLINE_TABLE, TIMESTAMP_FIELD
from mlops_platform.postgres import schema_lock
from mlops_platform.settings import Settings

STATS_TABLE = OFFLINE_TABLE
ORDERS_TABLE = "orders"
PENGUINS_TABLE = penguin.OFFLINE_TABLE
QUARANTINE_TABLE = "quarantine"
RUNS_TABLE = "ingestion_runs"

# What the orchestrator calls the stats table: ingestion updates it, materialization is scheduled on it.
STATS_ASSET_URI = f"postgres://postgres:5432/feast/public/{STATS_TABLE}"
PENGUINS_ASSET_URI = f"postgres://postgres:5432/feast/public/{PENGUINS_TABLE}"

# What an ingestion run ends as: its rows loaded, the file rejected (unreadable, too many invalid rows),
# or its load failed on something unforeseen (rolled back).
RUN_STATUSES = ("loaded", "rejected", "failed")
RUNS_STATUS_CHECK = f"{RUNS_TABLE}_status_check"  # the name PostgreSQL gave the column's check at first
_RUN_STATUSES_SQL = ", ".join(f"'{status}'" for status in RUN_STATUSES)

STATS_COLUMNS = (JOIN_KEY, TIMESTAMP_FIELD, CREATED_FIELD, *FEATURE_NAMES)
ORDERS_COLUMNS = ("event_timestamp", "driver_id", "trip_completed")
PENGUINS_COLUMNS = (penguin.JOIN_KEY, penguin.TIMESTAMP_FIELD, penguin.CREATED_FIELD, penguin.LABEL, "island", "sex",
                    *penguin.FEATURE_NAMES)
_PENGUIN_NUMBERS = ",\n".join(f"    {name:<18}real        not null" for name in penguin.FEATURE_NAMES)

DDL = f"""
create table if not exists {STATS_TABLE} (
    driver_id        bigint      not null,
    event_timestamp  timestamptz not null,
    created          timestamptz not null,
    conv_rate        real        not null check (conv_rate between 0 and 1),
    acc_rate         real        not null check (acc_rate between 0 and 1),
    avg_daily_trips  bigint      not null check (avg_daily_trips >= 0),
    source           text        not null,
    loaded_at        timestamptz not null default now(),
    primary key (driver_id, event_timestamp)
);
create index if not exists {STATS_TABLE}_event_timestamp_idx on {STATS_TABLE} (event_timestamp);

create table if not exists {ORDERS_TABLE} (
    driver_id        bigint      not null,
    event_timestamp  timestamptz not null,
    trip_completed   smallint    not null check (trip_completed in (0, 1)),
    source           text        not null,
    loaded_at        timestamptz not null default now(),
    primary key (driver_id, event_timestamp)
);
create index if not exists {ORDERS_TABLE}_event_timestamp_idx on {ORDERS_TABLE} (event_timestamp);

create table if not exists {PENGUINS_TABLE} (
    {penguin.JOIN_KEY:<17}bigint      not null,
    event_timestamp  timestamptz not null,
    created          timestamptz not null default now(),
    species          text        null,
    island           text        not null,
    sex              text        null,
{_PENGUIN_NUMBERS},
    source           text        not null default 'unknown',  -- ingestion names the file; others may not
    loaded_at        timestamptz not null default now(),
    primary key ({penguin.JOIN_KEY}, event_timestamp)
);
create index if not exists {PENGUINS_TABLE}_event_timestamp_idx on {PENGUINS_TABLE} (event_timestamp);

create table if not exists {QUARANTINE_TABLE} (
    id              bigserial   primary key,
    dataset         text        not null,
    source          text        not null,
    row_number      bigint      not null,
    raw             jsonb       not null,
    reason          text        not null,
    quarantined_at  timestamptz not null default now(),
    unique (dataset, source, row_number)
);

create table if not exists {RUNS_TABLE} (
    id              bigserial   primary key,
    dataset         text        not null,
    source          text        not null,
    file_sha256     text        not null,
    rows_read       bigint      not null,
    rows_loaded     bigint      not null,
    rows_quarantined bigint     not null,
    status          text        not null constraint {RUNS_STATUS_CHECK} check (status in ({_RUN_STATUSES_SQL})),
    message         text,
    started_at      timestamptz not null,
    finished_at     timestamptz not null default now()
);
create index if not exists {RUNS_TABLE}_source_idx on {RUNS_TABLE} (dataset, source, file_sha256);
"""


def ensure_schema(settings: Settings | None = None) -> None:
    """Create the offline store's tables if they are missing and migrate older ones (idempotent, cheap)."""
    with schema_lock(settings, "offline_store_schema") as cur:
        cur.execute(DDL)
        _allow_every_run_status(cur)
        _add_penguin_lineage(cur)


def _add_penguin_lineage(cur) -> None:
    """A penguin table written before ingestion knew penguins (from the contract alone) lacks the lineage
    columns: add them. Only when one is missing, so the usual call takes no table lock."""
    cur.execute("select column_name from information_schema.columns where table_schema = current_schema() "
                "and table_name = %s", (PENGUINS_TABLE,))
    present = {row[0] for row in cur.fetchall()}
    if "source" not in present:
        cur.execute(f"alter table {PENGUINS_TABLE} add column source text not null default 'unknown'")
    if "loaded_at" not in present:
        cur.execute(f"alter table {PENGUINS_TABLE} add column loaded_at timestamptz not null default now()")


def allowed_run_statuses(cur) -> set[str]:
    """The statuses the ingestion_runs status check accepts (empty when the table has no such check)."""
    cur.execute("select pg_get_constraintdef(oid) from pg_constraint where conrelid = to_regclass(%s) "
                "and conname = %s and contype = 'c'", (RUNS_TABLE, RUNS_STATUS_CHECK))
    row = cur.fetchone()
    return set(re.findall(r"'([^']*)'", row[0])) if row else set()


def _allow_every_run_status(cur) -> None:
    """A table created before `failed` existed allows only loaded and rejected: widen its check in place.

    Only when the check differs, so the usual call costs one catalog query and takes no table lock.
    """
    if allowed_run_statuses(cur) == set(RUN_STATUSES):
        return
    cur.execute(f"alter table {RUNS_TABLE} drop constraint if exists {RUNS_STATUS_CHECK}")
    cur.execute(f"alter table {RUNS_TABLE} add constraint {RUNS_STATUS_CHECK} check (status in ({_RUN_STATUSES_SQL}))")
