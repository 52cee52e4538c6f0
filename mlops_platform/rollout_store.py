"""Where rollouts live: the running one per model, and the log of every change with its evidence.

- `rollouts`: one row per model with a running rollout (no row: mode champion). The API workers read it
  every ROLLOUT_REFRESH_SECONDS, the monitoring service at each evaluation; the monitoring service also
  keeps its latest comparison on the row (`last_evaluation`) for `run.sh rollout status`.
- `rollout_events`: start, change, promote, rollback, with who did it, why and the evidence.

A promotion or rollback locks the model's row, moves the registry aliases, and only then deletes the row
and logs the event, in one transaction: two deciders (the monitoring service and a person) cannot both
act on one rollout, and a registry that fails leaves the rollout running as it was.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from mlops_platform.postgres import apply_ddl, connect
from mlops_platform.rollout import (
    AB,
    CHALLENGER_ALIAS,
    DEFAULT_AB_OUTCOMES,
    PREVIOUS_CHAMPION_ALIAS,
    Rollout,
    RolloutError,
    check_request,
)
from mlops_platform.settings import Settings

ROLLOUTS_TABLE = "rollouts"
EVENTS_TABLE = "rollout_events"
DECISION_TAG = "rollout_decision"  # on the model version: promoted or rolled_back, with rollout_reason
log = logging.getLogger("rollout")

DDL = f"""
create table if not exists {ROLLOUTS_TABLE} (
    model_name          text             primary key,
    rollout_id          text             not null,
    mode                text             not null,
    share               double precision not null,
    champion_version    text             not null,
    challenger_version  text             not null,
    started_at          timestamptz      not null,
    updated_at          timestamptz      not null,
    ends_at             timestamptz,
    max_outcomes        integer,
    last_evaluation     jsonb,
    last_evaluated_at   timestamptz
);
create table if not exists {EVENTS_TABLE} (
    id                  bigserial        primary key,
    model_name          text             not null,
    rollout_id          text             not null,
    at                  timestamptz      not null default now(),
    action              text             not null,
    actor               text             not null,
    mode                text,
    share               double precision,
    champion_version    text,
    challenger_version  text,
    reason              text             not null,
    evidence            jsonb
);
create index if not exists {EVENTS_TABLE}_model_at_idx on {EVENTS_TABLE} (model_name, at);
"""
_COLUMNS = ("model_name", "rollout_id", "mode", "share", "champion_version", "challenger_version", "started_at",
            "updated_at", "ends_at", "max_outcomes")


def ensure_schema(settings: Settings) -> None:
    apply_ddl(settings, "rollout_schema", DDL)


def _row_to_rollout(row: tuple[Any, ...]) -> Rollout:
    values = dict(zip(_COLUMNS, row, strict=True))
    return Rollout(**{**values, "share": float(values["share"])})


def read(cur, model_name: str, lock: bool = False) -> Rollout | None:
    """The running rollout of `model_name` in the caller's transaction (locked for update when asked)."""
    cur.execute(f"select {', '.join(_COLUMNS)} from {ROLLOUTS_TABLE} where model_name = %s"
                + (" for update" if lock else ""), (model_name,))
    row = cur.fetchone()
    return _row_to_rollout(row) if row else None


def current(settings: Settings, model_name: str, timeout: int = 5) -> Rollout | None:
    """The running rollout of `model_name`, or None (mode champion); a missing table is none too."""
    import psycopg2.errors

    try:
        with connect(settings, timeout=timeout) as conn, conn.cursor() as cur:
            return read(cur, model_name)
    except psycopg2.errors.UndefinedTable:
        return None


def last_evaluation(settings: Settings, model_name: str) -> tuple[dict | None, datetime | None]:
    """The monitoring service's latest comparison of the running rollout, and when it was made."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select last_evaluation, last_evaluated_at from {ROLLOUTS_TABLE} where model_name = %s",
                    (model_name,))
        row = cur.fetchone()
    return (row[0], row[1]) if row else (None, None)


def record_evaluation(settings: Settings, rollout: Rollout, evaluation: dict[str, Any]) -> None:
    """Keep the latest comparison on the rollout's row (nothing when that rollout ended meanwhile)."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"update {ROLLOUTS_TABLE} set last_evaluation = %s::jsonb, last_evaluated_at = now() "
                    "where model_name = %s and rollout_id = %s",
                    (json.dumps(evaluation, default=str), rollout.model_name, rollout.rollout_id))


def history(settings: Settings, model_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest `limit` rollout events of the model, newest first."""
    columns = ("at", "action", "actor", "rollout_id", "mode", "share", "champion_version", "challenger_version",
               "reason", "evidence")
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute(f"select {', '.join(columns)} from {EVENTS_TABLE} where model_name = %s "
                    "order by at desc, id desc limit %s", (model_name, limit))
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def _log_event(cur, action: str, rollout: Rollout, actor: str, reason: str, evidence: dict | None) -> None:
    cur.execute(f"insert into {EVENTS_TABLE} (model_name, rollout_id, action, actor, mode, share, champion_version, "
                "challenger_version, reason, evidence) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                (rollout.model_name, rollout.rollout_id, action, actor, rollout.mode, rollout.share,
                 rollout.champion_version, rollout.challenger_version, reason,
                 None if evidence is None else json.dumps(evidence, default=str)))
    log.info("rollout " + action, extra={"model_name": rollout.model_name, "rollout_id": rollout.rollout_id,
                                         "mode": rollout.mode, "share": rollout.share, "actor": actor,
                                         "champion_version": rollout.champion_version,
                                         "challenger_version": rollout.challenger_version, "reason": reason})


# ---- the registry side ------------------------------------------------------------------------
def _alias(mlflow_client, name: str, alias: str) -> str | None:
    from mlops_platform.model_registry import find_champion

    found = find_champion(mlflow_client, name, alias)
    return found.version if found else None


def _existing_version(mlflow_client, name: str, version: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client.get_model_version(name, str(version)).version)
    except MlflowException:
        raise RolloutError(f"registered model {name!r} has no version {version!r}: pick one of "
                           "`bash run.sh rollout status` or the MLflow UI") from None


# ---- transitions ------------------------------------------------------------------------------
def start(settings: Settings, mlflow_client, model_name: str, mode: str, share: float | None = None,
          challenger_version: str | None = None, max_outcomes: int | None = None, hours: float | None = None,
          actor: str = "cli", reason: str = "started by hand") -> Rollout:
    """Start a rollout of the challenger (the `challenger` alias unless a version is named), or change the
    mode and share of the running one of the same challenger; its assignment stays sticky."""
    share = check_request(mode, share, max_outcomes, hours)
    champion = _alias(mlflow_client, model_name, settings.model_alias)
    if champion is None:
        raise RolloutError(f"registered model {model_name!r} has no {settings.model_alias!r} version to compare "
                           "with: train and promote one first")
    if challenger_version is None:
        challenger_version = _alias(mlflow_client, model_name, CHALLENGER_ALIAS)
        if challenger_version is None:
            raise RolloutError(f"registered model {model_name!r} has no {CHALLENGER_ALIAS!r} alias: train a "
                               "challenger first, or name a version with --version")
    challenger_version = _existing_version(mlflow_client, model_name, challenger_version)
    if challenger_version == champion:
        raise RolloutError(f"version {challenger_version} is already the champion of {model_name!r}: a rollout "
                           "needs another version")
    if mode == AB and max_outcomes is None and hours is None:
        max_outcomes = DEFAULT_AB_OUTCOMES
    ensure_schema(settings)
    now = datetime.now(UTC)
    with connect(settings) as conn, conn.cursor() as cur:
        running = read(cur, model_name, lock=True)
        if running is not None and running.challenger_version != challenger_version:
            raise RolloutError(f"a {running.mode} rollout of version {running.challenger_version} of {model_name!r} "
                               "is running: promote it or roll it back first")
        rollout = Rollout(model_name, running.rollout_id if running else uuid.uuid4().hex, mode, share, champion,
                          challenger_version, running.started_at if running else now, now,
                          now + timedelta(hours=hours) if hours else None, max_outcomes)
        cur.execute(f"insert into {ROLLOUTS_TABLE} ({', '.join(_COLUMNS)}) values ({', '.join(['%s'] * 10)}) "
                    f"on conflict (model_name) do update set "
                    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:]),
                    tuple(getattr(rollout, c) for c in _COLUMNS))
        _log_event(cur, "change" if running else "start", rollout, actor, reason, None)
    return rollout


def promote(settings: Settings, mlflow_client, model_name: str, actor: str, reason: str,
            evidence: dict | None = None, rollout_id: str | None = None) -> Rollout:
    """The challenger becomes the champion; the champion it replaces keeps `previous_champion`."""
    ensure_schema(settings)
    with connect(settings) as conn, conn.cursor() as cur:
        rollout = _running(cur, model_name, rollout_id, "promote")
        champion = _alias(mlflow_client, model_name, settings.model_alias)
        if champion is not None and champion != rollout.challenger_version:
            mlflow_client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION_ALIAS, champion)
        mlflow_client.set_registered_model_alias(model_name, settings.model_alias, rollout.challenger_version)
        if _alias(mlflow_client, model_name, CHALLENGER_ALIAS) == rollout.challenger_version:
            mlflow_client.delete_registered_model_alias(model_name, CHALLENGER_ALIAS)
        _tag(mlflow_client, model_name, rollout.challenger_version, "promoted", reason)
        cur.execute(f"delete from {ROLLOUTS_TABLE} where model_name = %s", (model_name,))
        _log_event(cur, "promote", rollout, actor, reason, evidence)
    return rollout


def rollback(settings: Settings, mlflow_client, model_name: str, actor: str, reason: str,
             evidence: dict | None = None, rollout_id: str | None = None) -> dict[str, Any]:
    """End the running rollout with the champion unchanged; with none running, give the champion alias back
    to `previous_champion` (undoing the last promotion)."""
    ensure_schema(settings)
    with connect(settings) as conn, conn.cursor() as cur:
        running = read(cur, model_name, lock=True)
        if running is not None:
            if rollout_id is not None and running.rollout_id != rollout_id:
                raise RolloutError(f"rollout {rollout_id} of {model_name!r} is no longer running")
            _tag(mlflow_client, model_name, running.challenger_version, "rolled_back", reason)
            cur.execute(f"delete from {ROLLOUTS_TABLE} where model_name = %s", (model_name,))
            _log_event(cur, "rollback", running, actor, reason, evidence)
            return {"action": "rollback", "rollout": running.as_dict(), "champion_version": running.champion_version}
        if rollout_id is not None:
            raise RolloutError(f"rollout {rollout_id} of {model_name!r} is no longer running")
        return _restore_previous(cur, mlflow_client, settings, model_name, actor, reason, evidence)


def _restore_previous(cur, mlflow_client, settings: Settings, model_name: str, actor: str, reason: str,
                      evidence: dict | None) -> dict[str, Any]:
    previous = _alias(mlflow_client, model_name, PREVIOUS_CHAMPION_ALIAS)
    demoted = _alias(mlflow_client, model_name, settings.model_alias)
    if previous is None:
        raise RolloutError(f"no rollout of {model_name!r} is running and it has no {PREVIOUS_CHAMPION_ALIAS!r} "
                           "alias: there is nothing to roll back")
    mlflow_client.set_registered_model_alias(model_name, settings.model_alias, previous)
    mlflow_client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION_ALIAS)
    if demoted is not None:
        _tag(mlflow_client, model_name, demoted, "rolled_back", reason)
    undone = Rollout(model_name, "manual", "champion", 0.0, previous, demoted or "", datetime.now(UTC),
                     datetime.now(UTC))
    _log_event(cur, "rollback", undone, actor, reason, evidence)
    return {"action": "rollback", "champion_version": previous, "demoted_version": demoted}


def _running(cur, model_name: str, rollout_id: str | None, action: str) -> Rollout:
    rollout = read(cur, model_name, lock=True)
    if rollout is None:
        raise RolloutError(f"no rollout of {model_name!r} is running: nothing to {action} "
                           "(`bash run.sh rollout start` begins one)")
    if rollout_id is not None and rollout.rollout_id != rollout_id:
        raise RolloutError(f"rollout {rollout_id} of {model_name!r} is no longer running")
    return rollout


def _tag(mlflow_client, model_name: str, version: str, decision: str, reason: str) -> None:
    mlflow_client.set_model_version_tag(model_name, version, DECISION_TAG, decision)
    mlflow_client.set_model_version_tag(model_name, version, "rollout_reason", reason[:5000])
