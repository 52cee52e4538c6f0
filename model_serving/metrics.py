"""The API's Prometheus metrics, correct with one uvicorn worker or several.

With several workers each process counts on its own; prometheus_client's multiprocess mode keeps every
worker's values in files under PROMETHEUS_MULTIPROC_DIR and /metrics adds them up. The mode is chosen
when prometheus_client is first imported, so `python -m model_serving.api` sets the directory before
anything else (Feast would otherwise pick a temporary one of its own). All names start with `serving_`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "serving_"

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
SCORE_BUCKETS = (-0.5, -0.25, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5)


def prepare_multiprocess_dir(path: Path) -> None:
    """Point prometheus_client at an empty `path`; values of a previous run's workers are deleted."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


class EventMetrics:
    """What happened to prediction-log and feedback events; updated by the workers and the event senders."""

    REASONS = ("spool_full", "spool_error", "corrupt")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        registry = registry or REGISTRY
        self.spooled = Counter(PREFIX + "events_spooled", "Prediction-log and feedback events written to the event "
                               "spool (on their way to Kafka), by topic.", ["topic"], registry=registry)
        self.delivered = Counter(PREFIX + "events_delivered", "Prediction-log and feedback events the Kafka broker "
                                 "acknowledged, by topic (a batch sent again after a failure counts again).",
                                 ["topic"], registry=registry)
        self.dropped = Counter(PREFIX + "events_dropped", "Prediction-log and feedback events lost, by topic and "
                               "reason (spool_full: the spool held EVENT_SPOOL_MAX_BYTES; spool_error: the disk "
                               "refused the write; corrupt: a torn or garbled record found on replay).",
                               ["topic", "reason"], registry=registry)
        self.spool_bytes = Gauge(PREFIX + "event_spool_bytes", "Bytes in the event spool not yet acknowledged by "
                                 "Kafka.", multiprocess_mode="livesum", registry=registry)
        self.spool_limit = Gauge(PREFIX + "event_spool_limit_bytes", "The event spool's bound "
                                 "(EVENT_SPOOL_MAX_BYTES); past it events are dropped.", multiprocess_mode="max",
                                 registry=registry)

    def declare(self, topics: Sequence[str]) -> None:
        """Export zeros for every topic and reason, so a rate() works before the first event."""
        for topic in topics:
            self.spooled.labels(topic)
            self.delivered.labels(topic)
            for reason in self.REASONS:
                self.dropped.labels(topic, reason)


class ServingMetrics:
    """Every metric the API exports; created once per process, after the mode is decided.

    `registry` defaults to prometheus_client's global one; a private one lets a process build several apps.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        self.registry = registry = registry or REGISTRY
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        labels = ["endpoint", "status", "model_version", "model"]
        self.requests = Counter(PREFIX + "requests", "HTTP requests answered, by endpoint, status, model version "
                                "and model (the registered model's name; empty for the probes).",
                                labels, registry=registry)
        self.latency = Histogram(PREFIX + "request_duration_seconds",
                                 "Time from request received to response sent, by endpoint, status and model version.",
                                 labels, buckets=LATENCY_BUCKETS, registry=registry)
        self.scores = Histogram(PREFIX + "score", "Scores returned by /predict, one observation per scored driver "
                                "(its _count is the number of drivers scored).", ["model_version"],
                                buckets=SCORE_BUCKETS, registry=registry)
        self.missing = Counter(PREFIX + "missing_features", "Drivers not scored because the online store had no "
                               "features for them (not_found) or only values older than the TTL (expired).",
                               ["reason"], registry=registry)
        self.reloads = Counter(PREFIX + "model_reloads", "Model versions loaded and swapped in (the first load "
                               "included).", registry=registry)
        self.reload_failures = Counter(PREFIX + "model_reload_failures", "Model versions that failed to load; the "
                                       "previous model kept serving.", registry=registry)
        self.model_version = Gauge(PREFIX + "model_version", "Registry version of the model being served (0: none).",
                                   ["model_name"], multiprocess_mode="livemostrecent", registry=registry)
        self.model_info = Gauge(PREFIX + "model_info", "1 for the model version being served, with its run id.",
                                ["model_name", "model_version", "run_id"], multiprocess_mode="livemax",
                                registry=registry)
        self.variant_requests = Counter(
            PREFIX + "variant_requests", "/predict requests each variant took part in, by variant, model version and "
            "outcome (ok: it scored; error: it failed and the champion answered instead, or its shadow scores were "
            "lost; fallback: the champion answered for a challenger that failed).",
            ["variant", "model_version", "outcome"], registry=registry)
        self.variant_latency = Histogram(PREFIX + "variant_latency_seconds", "Time a variant took to answer a "
                                         "/predict request (feature read and scoring), by variant.", ["variant"],
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.shadow_skipped = Counter(PREFIX + "shadow_skipped", "Requests the shadow challenger did not score "
                                      "because as many shadow scorings as allowed were running.", registry=registry)
        self.rollout_info = Gauge(PREFIX + "rollout_info", "1 for the rollout mode in force (champion: none "
                                  "running), with the rollout's id.", ["mode", "rollout_id"],
                                  multiprocess_mode="livemax", registry=registry)
        self.rollout_share = Gauge(PREFIX + "rollout_share", "The challenger's share of the answers (canary, ab; 0 "
                                   "otherwise).", multiprocess_mode="livemostrecent", registry=registry)
        self.events = EventMetrics(registry)
        for reason in ("not_found", "expired"):
            self.missing.labels(reason)
        self.rollout_info.labels("champion", "").set(1)
        self.shadow_skipped.inc(0)

    def model_swapped(self, old, new) -> None:
        """Called by the model store on every swap (old is None on the first load)."""
        if old is not None:
            self.model_info.labels(old.name, old.version, old.run_id).set(0)
        self.model_info.labels(new.name, new.version, new.run_id).set(1)
        self.model_version.labels(new.name).set(_numeric(new.version))
        self.reloads.inc()

    def rollout_changed(self, old, new) -> None:
        """Called by the rollout watcher on every change of the state (model_serving.rollout_state.RolloutView)."""
        def labels(view) -> tuple[str, str]:
            return (view.rollout.mode, view.rollout.rollout_id) if view.rollout else ("champion", "")

        if labels(old) != labels(new):
            self.rollout_info.labels(*labels(old)).set(0)
        self.rollout_info.labels(*labels(new)).set(1)
        self.rollout_share.set(new.rollout.share if new.rollout else 0.0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text (all workers' values in multiprocess mode) and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def process_exit(self) -> None:
        """Forget this worker's live gauges (its counters and histograms keep counting in the total)."""
        if self.multiprocess:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid())


def _numeric(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        return 0.0
