"""Platforms keep their tables across upgrades: the offline store's ensure_schema() migrates them in place, on a
real PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest

from data_pipeline.offline_store import ensure_schema
from mlops_platform.postgres import connect


def query(settings, sql: str) -> pd.DataFrame:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


# ingestion_runs as it was created before a run could be recorded as failed.
OLD_RUNS_DDL = """
create table ingestion_runs (
    id bigserial primary key, dataset text not null, source text not null, file_sha256 text not null,
    rows_read bigint not null, rows_loaded bigint not null, rows_quarantined bigint not null,
    status text not null check (status in ('loaded', 'rejected')), message text,
    started_at timestamptz not null, finished_at timestamptz not null default now()
)"""
MIGRATION_SCHEMA = "test_runs_migration"


def insert_run(settings, status: str) -> None:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("insert into ingestion_runs (dataset, source, file_sha256, rows_read, rows_loaded, "
                    "rows_quarantined, status, started_at) values ('orders', %s, 'sha', 1, 0, 0, %s, now())",
                    (f"{status}.csv", status))


def status_checks(settings) -> list[tuple[int, str]]:
    """(oid, definition) of each check constraint on ingestion_runs."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select oid, pg_get_constraintdef(oid) from pg_constraint "
                    "where conrelid = to_regclass('ingestion_runs') and contype = 'c'")
        return cur.fetchall()


def test_ensure_schema_migrates_an_ingestion_runs_table_created_before_failed_runs(feast_up, settings, monkeypatch):
    import psycopg2.errors

    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"drop schema if exists {MIGRATION_SCHEMA} cascade")
        cur.execute(f"create schema {MIGRATION_SCHEMA}")
    monkeypatch.setenv("PGOPTIONS", f"-c search_path={MIGRATION_SCHEMA}")  # unqualified names: the test's schema
    try:
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(OLD_RUNS_DDL)
        insert_run(settings, "loaded")
        with pytest.raises(psycopg2.errors.CheckViolation):
            insert_run(settings, "failed")

        ensure_schema(settings)
        insert_run(settings, "failed")
        with pytest.raises(psycopg2.errors.CheckViolation):
            insert_run(settings, "done")  # still a check, just a wider one
        checks = status_checks(settings)
        assert len(checks) == 1 and all(f"'{s}'" in checks[0][1] for s in ("loaded", "rejected", "failed")), checks

        ensure_schema(settings)  # already migrated: the constraint is left as it is
        assert status_checks(settings) == checks
        runs = query(settings, "select source, status from ingestion_runs order by id")
        assert runs.values.tolist() == [["loaded.csv", "loaded"], ["failed.csv", "failed"]]
    finally:
        monkeypatch.delenv("PGOPTIONS")
        with connect(settings) as conn, conn.cursor() as cur:
            cur.execute(f"drop schema if exists {MIGRATION_SCHEMA} cascade")
