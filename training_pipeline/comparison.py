"""Champion against challenger on the same holdout rows, each model scored on its own features.

A challenger may be trained on other features than the champion: a subset (`--features
avg_daily_trips`), a superset, another order. The run's saved holdout holds the challenger's features
only, so the features the champion needs beyond them are fetched for the same labels, point in time,
through the feature service (the training set's own join), and joined to those rows by
(driver_id, event_timestamp). Each model is then given its own columns in its own order.

The champion's feature list comes from its signature (what the pipeline computes on); a version
logged without one falls back to the `features` param of the run that trained it.

A champion that needs a feature the feature service no longer serves cannot be scored (and serving
cannot load it): registry.decide_unservable says what happens then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from training_pipeline import model, registry
from training_pipeline.training_set import ENTITY, LABEL, TIMESTAMP, TrainingSetError

log = logging.getLogger(__name__)
KEYS = [ENTITY, TIMESTAMP]


@dataclass(frozen=True)
class Comparison:
    """What the holdout said about both models, and on which features."""

    challenger_features: list[str]
    challenger_metrics: dict[str, float]
    champion_version: str | None = None
    champion_features: list[str] | None = None
    champion_features_from: str = ""  # "signature" or "run params"
    champion_metrics: dict[str, float] | None = None
    unserved: list[str] | None = None  # champion features the service no longer serves: not scored
    fetched: list[str] | None = None  # champion features joined to the holdout for this comparison
    champion_rows_imputed: int = 0  # holdout rows where a fetched feature had no value (imputed by the champion)

    def tags(self, holdout_rows: int) -> dict[str, str]:
        """What the version and the run record about the comparison."""
        tags = {"compared_with_version": self.champion_version or "none", "holdout_rows": str(holdout_rows),
                "challenger_features": ",".join(self.challenger_features),
                "challenger_holdout_roc_auc": f"{self.challenger_metrics['roc_auc']:.6f}"}
        if self.champion_features is not None:
            tags["champion_features"] = ",".join(self.champion_features)
            tags["champion_features_from"] = self.champion_features_from
        if self.champion_metrics is not None:
            tags["champion_holdout_roc_auc"] = f"{self.champion_metrics['roc_auc']:.6f}"
        if self.fetched:
            tags["champion_features_fetched"] = ",".join(self.fetched)
            tags["champion_rows_imputed"] = str(self.champion_rows_imputed)
        if self.unserved:
            tags["champion_features_unserved"] = ",".join(self.unserved)
        return tags

    def decide(self, margin: float, service: str, replace_unservable: bool) -> registry.Decision:
        if self.unserved:
            return registry.decide_unservable(self.champion_version or "", self.unserved, service, replace_unservable)
        return registry.decide(self.challenger_metrics[registry.DECISION_METRIC],
                               self.champion_metrics[registry.DECISION_METRIC] if self.champion_metrics else None,
                               margin)


def champion_features(mlflow_client, loaded_model, run_id: str, version: str) -> tuple[list[str], str]:
    """(the champion's input columns in order, where they were read): its signature, else its run's params."""
    try:
        return registry.input_columns(loaded_model), "signature"
    except ValueError:
        pass
    features = mlflow_client.get_run(run_id).data.params.get("features", "") if run_id else ""
    names = [name for name in features.split(",") if name]
    if not names:
        raise ValueError(f"champion version {version} was logged without a signature and its run {run_id or '?'} "
                         "has no `features` param: its input columns are unknown. Promote a version trained by "
                         "this pipeline (it logs both), or retrain")
    return names, "run params"


def join_features(holdout: pd.DataFrame, fetched: pd.DataFrame, features: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """`holdout` with `features` from `fetched`, matched by (driver_id, event_timestamp); (frame, rows with a NaN).

    Every holdout row must come back: the fetch reads the same labels again, so a missing one means the
    orders of the label window changed during the run, and both models would no longer see the same rows.
    """
    features = list(features)
    merged = holdout.merge(fetched[[*KEYS, *features]], on=KEYS, how="left", indicator=True, validate="one_to_one")
    lost = merged["_merge"] != "both"
    if lost.any():
        example = merged.loc[lost, KEYS].head(3).to_dict("records")
        raise TrainingSetError(
            f"{int(lost.sum())} of {len(holdout)} holdout labels were not found again when fetching the champion's "
            f"features {features}, e.g. {example}: the orders of the label window changed during the run; rerun it")
    merged = merged.drop(columns="_merge")
    return merged, int(merged[features].isna().any(axis=1).sum())


class ModelUnavailable(RuntimeError):
    """A registered version needed by the comparison cannot be loaded."""


def _load(load: Callable[[str], object], name: str, version: str, what: str, remedy: str):
    uri = f"models:/{name}/{version}"
    try:
        return load(uri)
    except Exception as exc:
        raise ModelUnavailable(
            f"could not load {what}, version {version} of {name!r} ({uri}): {type(exc).__name__}: {exc}. Expected "
            f"its artifacts to load as they were logged; they are missing or damaged: {remedy}") from exc


def compare(mlflow_client, name: str, version: str, champion_version: str | None, holdout: pd.DataFrame,
            served: Callable[[], list[str]], fetch: Callable[[list[str]], pd.DataFrame],
            load: Callable[[str], object]) -> Comparison:
    """Score the challenger `version` and the champion on the holdout, each on its own columns.

    `load(uri)` loads a model, `served()` lists the features the service serves now, `fetch(features)`
    returns those features for the holdout's labels (keys and features, point in time).
    """
    y_true = model.target(holdout)
    challenger = _load(load, name, version, "the version this run registered",
                       "check the artifact store (`bash run.sh mlflow logs`) and rerun the training")
    challenger_columns = registry.input_columns(challenger)
    challenger_metrics = model.evaluate(y_true, registry.score(challenger, holdout, challenger_columns))
    if not champion_version:
        return Comparison(challenger_columns, challenger_metrics)

    champion_model_version = mlflow_client.get_model_version(name, champion_version)
    # By version, not alias: the alias may move while this run compares.
    champion = _load(load, name, champion_version, "the champion",
                     "restore them in the artifact store, or point the alias `champion` at a version that loads "
                     "(serving cannot load this one either)")
    needed, source = champion_features(mlflow_client, champion, champion_model_version.run_id, champion_version)
    have = [c for c in holdout.columns if c not in (*KEYS, LABEL)]
    missing = [f for f in needed if f not in have]
    base = Comparison(challenger_columns, challenger_metrics, champion_version, needed, source)
    if not missing:
        champion_metrics = model.evaluate(y_true, registry.score(champion, holdout, needed))
        return replace(base, champion_metrics=champion_metrics)

    service_features = served()
    unserved = [f for f in missing if f not in service_features]
    if unserved:
        log.warning("champion cannot be scored: the feature service no longer serves its features",
                    extra={"champion_version": champion_version, "champion_features": needed, "unserved": unserved})
        return replace(base, unserved=unserved)
    frame, imputed = join_features(holdout, fetch(missing), missing)
    if imputed:
        log.warning("holdout rows without a value of a champion feature: the champion's imputer fills them",
                    extra={"champion_version": champion_version, "rows": imputed, "features": missing})
    champion_metrics = model.evaluate(y_true, registry.score(champion, frame, needed))
    log.info("champion scored on features fetched for the holdout",
             extra={"champion_version": champion_version, "fetched": missing, "rows": len(frame)})
    return replace(base, champion_metrics=champion_metrics, fetched=missing, champion_rows_imputed=imputed)
