"""Penguins landed as upstream would deliver them: the palmerpenguins CSV as the raw file of a day.

`land()` writes `<landing>/penguins/date=YYYY-MM-DD/penguins_YYYY-MM-DD.csv` from the package's own copy (no
download): penguin_id = 1-based row number + `id_offset`, event_timestamps spread over the day, `created` the
day's end. `bad_rows` appends planted invalid rows, each breaking a different rule (their row numbers, ids and
rules are returned), and `drifted` shifts the measurements as a changed population would (DRIFT: bills 15%
longer and 10% shallower, flippers 10 mm longer, 10% heavier; all still inside MEASUREMENT_BOUNDS, so drifted
rows are valid and only their distribution moved).

`prepare()` lands, ingests and materializes a day of penguins on a running platform through the platform's
own code (data_pipeline.ingest, or the data_ingestion DAG through Airflow when asked, then
data_pipeline.materialize for the day):

    python -m simulation.penguins land --day 2024-05-01 [--bad-rows 3] [--drifted] [--id-offset 0]
    python -m simulation.penguins prepare --day 2024-05-01 [--bad-rows 3] [--drifted] [--through-airflow]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as arrow

from data_pipeline.landing import landing_file, write_atomically
from data_pipeline.validate import COLUMNS, PENGUINS
from feast_repo import penguin_features as contract
from mlops_platform.settings import Settings, get_settings

# How `drifted` moves each measurement: (factor, added).
DRIFT = {"bill_length_mm": (1.15, 0.0), "bill_depth_mm": (0.9, 0.0), "flipper_length_mm": (1.0, 10.0),
         "body_mass_g": (1.1, 0.0)}
# The planted bad rows, in planting order: the rule each breaks, and how a copy of a good row is spoiled.
PLANTS = ("missing_measurement", "out_of_bounds", "unknown_island", "unknown_sex", "unknown_species",
          "duplicate_key", "bad_id", "bad_timestamp")
DEFAULT_SEED = 7


def penguin_rows(day: date, *, drifted: bool = False, id_offset: int = 0, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """The palmerpenguins rows as raw penguins columns (text timestamps), keyed and timed within `day`."""
    from palmerpenguins import load_penguins

    raw = load_penguins()
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.choice(86_400, size=len(raw), replace=False))  # distinct instants within the day
    frame = pd.DataFrame({
        contract.JOIN_KEY: np.arange(1, len(raw) + 1, dtype="int64") + id_offset,
        contract.TIMESTAMP_FIELD: [(start + timedelta(seconds=int(s))).strftime("%Y-%m-%dT%H:%M:%S+00:00")
                                   for s in seconds],
        contract.CREATED_FIELD: (start + timedelta(days=1, seconds=-1)).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    })
    for column in (*contract.RAW_FIELDS, "year"):
        frame[column] = raw[column].to_numpy()
    if drifted:
        for column, (factor, added) in DRIFT.items():
            frame[column] = (frame[column] * factor + added).round(1)
    return frame[[*COLUMNS[PENGUINS], "year"]]


def plant_bad_rows(frame: pd.DataFrame, count: int) -> tuple[pd.DataFrame, list[dict]]:
    """`count` invalid rows appended (copies of the first good rows, each spoiled by a different rule)."""
    if not 0 <= count <= len(PLANTS):
        raise ValueError(f"bad_rows must be between 0 and {len(PLANTS)} (one per rule in {list(PLANTS)}), "
                         f"got {count}")
    text = frame.astype(object)
    planted, rows = [], []
    next_id = int(frame[contract.JOIN_KEY].max()) + 1
    for n, rule in enumerate(PLANTS[:count]):
        row = text.iloc[n].copy()
        row[contract.JOIN_KEY] = next_id + n
        if rule == "missing_measurement":
            row["flipper_length_mm"] = None
        elif rule == "out_of_bounds":
            row["body_mass_g"] = 37_500.0  # a mass in the wrong unit
        elif rule == "unknown_island":
            row["island"] = "Atlantis"
        elif rule == "unknown_sex":
            row["sex"] = "unknown"
        elif rule == "unknown_species":
            row[contract.LABEL] = "Emperor"
        elif rule == "duplicate_key":
            row = text.iloc[0].copy()  # the first penguin's key delivered twice
        elif rule == "bad_id":
            row[contract.JOIN_KEY] = "P-17"
        elif rule == "bad_timestamp":
            row[contract.TIMESTAMP_FIELD] = "yesterday"
        rows.append(row)
        planted.append({"row_number": len(frame) + n, "penguin_id": row[contract.JOIN_KEY], "rule": rule})
    return pd.concat([text, pd.DataFrame(rows)], ignore_index=True), planted


def land(settings: Settings | None, day: date | str, *, bad_rows: int = 0, drifted: bool = False,
         id_offset: int = 0, seed: int = DEFAULT_SEED) -> dict:
    """Write the day's penguins file into the landing folder; returns its path, row counts and planted rows."""
    settings = settings or get_settings()
    day = date.fromisoformat(day) if isinstance(day, str) else day
    clean = penguin_rows(day, drifted=drifted, id_offset=id_offset, seed=seed)
    frame, planted = plant_bad_rows(clean, bad_rows)
    missing = int(clean[list(contract.MEASUREMENT_NAMES)].isna().any(axis=1).sum())
    path = landing_file(Path(settings.landing_dir), PENGUINS, day, "csv")
    columns = {c: arrow.array([None if v is None or (isinstance(v, float) and v != v) else str(v)
                               for v in frame[c]], type=arrow.string()) for c in frame.columns}
    write_atomically(arrow.table(columns), path, "csv")
    return {"path": str(path), "day": day.isoformat(), "rows": len(frame), "drifted": drifted,
            "id_offset": id_offset, "rows_missing_measurements": missing, "planted": planted,
            "expected_valid": len(clean) - missing}


def prepare(settings: Settings | None, day: date | str, *, bad_rows: int = 0, drifted: bool = False,
            id_offset: int = 0, seed: int = DEFAULT_SEED, through_airflow: bool = False) -> dict:
    """Land, ingest and materialize a day of penguins on a running platform; returns what each step did."""
    settings = settings or get_settings()
    landed = land(settings, day, bad_rows=bad_rows, drifted=drifted, id_offset=id_offset, seed=seed)
    start = datetime.fromisoformat(landed["day"]).replace(tzinfo=UTC)
    end = start + timedelta(days=1)
    from data_pipeline.materialize import materialize_penguins
    from mlops_platform.feast_apply import apply_if_changed

    if through_airflow:
        ingestion = _through_airflow(settings)
    else:
        from data_pipeline.ingest import ingest_files
        from data_pipeline.offline_store import ensure_schema

        ensure_schema(settings)
        ingestion = ingest_files([(PENGUINS, landed["path"])], settings).summary(PENGUINS)
    apply_if_changed(settings)
    report = materialize_penguins(start, end, settings)
    return {"landed": landed, "ingestion": ingestion,
            "materialized": {"start": report.start.isoformat(), "end": report.end.isoformat(),
                             "penguins": report.rows_read}}


def _through_airflow(settings: Settings) -> dict:
    """A data_ingestion run over every landed file not loaded yet, awaited (materialization follows here)."""
    from mlops_platform.airflow_client import AirflowClient

    client = AirflowClient.from_settings(settings)
    run_id = client.trigger("data_ingestion", conf={"scope": "all"}, note="penguins prepared")
    state = client.wait("data_ingestion", run_id, timeout=900)
    return {"data_ingestion": {"run_id": run_id, "state": state}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Land (and prepare) a day of palmerpenguins rows.")
    parser.add_argument("verb", choices=["land", "prepare"])
    parser.add_argument("--day", required=True, type=date.fromisoformat, help="YYYY-MM-DD")
    parser.add_argument("--bad-rows", type=int, default=0, help=f"planted invalid rows, 0..{len(PLANTS)}")
    parser.add_argument("--drifted", action="store_true", help="shift the measurements (see DRIFT)")
    parser.add_argument("--id-offset", type=int, default=0)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--through-airflow", action="store_true", help="prepare: run the DAGs instead")
    args = parser.parse_args(argv)
    options = {"bad_rows": args.bad_rows, "drifted": args.drifted, "id_offset": args.id_offset, "seed": args.seed}
    if args.verb == "land":
        result = land(None, args.day, **options)
    else:
        result = prepare(None, args.day, through_airflow=args.through_airflow, **options)
    json.dump(result, sys.stdout, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
