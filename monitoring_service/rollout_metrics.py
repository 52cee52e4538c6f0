"""Prometheus metrics of the running rollout; names and labels are the ones monitoring/prometheus/rules/rollouts.yml
and monitoring/grafana/dashboards/rollout.json read.

Per-variant series carry {variant, model_version}; the differences (challenger - champion) carry the two
versions. Without a rollout they are absent; `monitoring_rollout_active{mode="champion"}` is 0, the share 0,
and the bounds a decision applies are always exported, so alerts compare against the configured numbers.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from mlops_platform.rollout import CHAMPION
from monitoring_service.rollout_bootstrap import Interval
from monitoring_service.rollout_comparison import Comparison
from monitoring_service.rollout_decision import PROMOTE, ROLLBACK, Bounds

PREFIX = "monitoring_rollout_"
VARIANT_LABELS = ("variant", "model_version")
DIFFERENCE_LABELS = ("champion_version", "challenger_version")


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, text, list(labels), registry=registry)

        self.active = gauge("active", "1 while a rollout runs, by mode; 0 with mode champion when none runs.",
                            ("mode",))
        self.share = gauge("share", "The challenger's share of the answers (canary, ab); 0 in shadow or without "
                           "a rollout.")
        self.requests = gauge("requests", "Requests each variant was asked to answer in the running rollout.",
                              VARIANT_LABELS)
        self.error_rate = gauge("error_rate", "Share of its requests a variant failed to answer.", VARIANT_LABELS)
        self.latency_p50 = gauge("latency_p50_ms", "Median answer time of a variant per request, milliseconds.",
                                 VARIANT_LABELS)
        self.latency_p99 = gauge("latency_p99_ms", "99th percentile answer time of a variant per request, "
                                 "milliseconds.", VARIANT_LABELS)
        self.outcomes = gauge("labeled_outcomes", "Labelled outcomes of a variant's scores (served ones in canary "
                              "and ab, all in shadow).", VARIANT_LABELS)
        self.completion_rate = gauge("completion_rate", "Share of a variant's labelled outcomes that were completed "
                                     "trips.", VARIANT_LABELS)
        self.brier = gauge("brier", "Brier score (mean squared error) of a variant's scores; lower is better.",
                           VARIANT_LABELS)
        self.brier_low = gauge("brier_low", "Lower bound of the Brier score's bootstrap interval.", VARIANT_LABELS)
        self.brier_high = gauge("brier_high", "Upper bound of the Brier score's bootstrap interval.", VARIANT_LABELS)
        self.rmse = gauge("rmse", "RMSE (root of the Brier score) of a variant's scores.", VARIANT_LABELS)
        self.auc = gauge("auc", "ROC AUC of a variant's scores (both outcomes present).", VARIANT_LABELS)
        self.precision = gauge("precision", "Precision of a variant at SERVING_SCORE_THRESHOLD.", VARIANT_LABELS)
        self.recall = gauge("recall", "Recall of a variant at SERVING_SCORE_THRESHOLD.", VARIANT_LABELS)
        self.brier_difference = gauge("brier_difference", "Brier score challenger - champion; below 0: the "
                                      "challenger errs less.", DIFFERENCE_LABELS)
        self.brier_difference_low = gauge("brier_difference_low", "Lower bound of the Brier difference's interval "
                                          "at ROLLOUT_CONFIDENCE; above 0: the challenger is worse.", DIFFERENCE_LABELS)
        self.brier_difference_high = gauge("brier_difference_high", "Upper bound of the Brier difference's interval "
                                           "at ROLLOUT_CONFIDENCE; below 0: the challenger is better.",
                                           DIFFERENCE_LABELS)
        self.auc_difference = gauge("auc_difference", "ROC AUC challenger - champion.", DIFFERENCE_LABELS)
        self.auc_difference_low = gauge("auc_difference_low", "Lower bound of the AUC difference's interval.",
                                        DIFFERENCE_LABELS)
        self.auc_difference_high = gauge("auc_difference_high", "Upper bound of the AUC difference's interval.",
                                         DIFFERENCE_LABELS)
        self.max_error_rate = gauge("max_error_rate", "ROLLOUT_MAX_ERROR_RATE: a challenger failing more requests "
                                    "is rolled back.")
        self.max_p99_ms = gauge("max_p99_ms", "ROLLOUT_MAX_P99_MS: a challenger slower at p99 is rolled back.")
        self.decisions = Counter(PREFIX + "decisions", "Rollouts the monitoring service ended, by decision.",
                                 ["decision"], registry=registry)
        for decision in (PROMOTE, ROLLBACK):
            self.decisions.labels(decision)
        self.clear()

    def publish_bounds(self, bounds: Bounds) -> None:
        self.max_error_rate.set(bounds.max_error_rate)
        self.max_p99_ms.set(bounds.max_p99_ms)

    def _per_variant(self) -> tuple[Gauge, ...]:
        return (self.requests, self.error_rate, self.latency_p50, self.latency_p99, self.outcomes,
                self.completion_rate, self.brier, self.brier_low, self.brier_high, self.rmse, self.auc, self.precision,
                self.recall)

    def _differences(self) -> tuple[Gauge, ...]:
        return (self.brier_difference, self.brier_difference_low, self.brier_difference_high, self.auc_difference,
                self.auc_difference_low, self.auc_difference_high)

    def clear_numbers(self) -> None:
        """The comparison could not be made: its numbers are unknown, not the last ones."""
        for gauge in (*self._per_variant(), *self._differences()):
            gauge.clear()

    def clear(self) -> None:
        """No rollout runs: no per-variant numbers, mode champion."""
        self.clear_numbers()
        self.active.clear()
        self.active.labels(CHAMPION).set(0)
        self.share.set(0)

    def publish(self, comparison: Comparison) -> None:
        self.clear()
        self.active.clear()
        self.active.labels(comparison.mode).set(1)
        self.share.set(comparison.share)
        for stats in comparison.variants():
            labels = (stats.variant, stats.model_version)
            self.requests.labels(*labels).set(stats.requests)
            self.outcomes.labels(*labels).set(stats.outcomes)
            for gauge, number in ((self.error_rate, stats.error_rate), (self.latency_p50, stats.latency_p50_ms),
                                  (self.latency_p99, stats.latency_p99_ms),
                                  (self.completion_rate, stats.completion_rate)):
                if number is not None:
                    gauge.labels(*labels).set(number)
            if stats.brier is not None:
                self.brier_low.labels(*labels).set(stats.brier.low)
                self.brier_high.labels(*labels).set(stats.brier.high)
            for gauge, interval in ((self.brier, stats.brier), (self.rmse, stats.rmse), (self.auc, stats.auc),
                                    (self.precision, stats.precision), (self.recall, stats.recall)):
                if interval is not None:
                    gauge.labels(*labels).set(interval.estimate)
        versions = (comparison.champion.model_version, comparison.challenger.model_version)
        self._publish_difference(versions, comparison.brier_difference,
                                 (self.brier_difference, self.brier_difference_low, self.brier_difference_high))
        self._publish_difference(versions, comparison.auc_difference,
                                 (self.auc_difference, self.auc_difference_low, self.auc_difference_high))

    @staticmethod
    def _publish_difference(versions: tuple[str, str], interval: Interval | None,
                            gauges: tuple[Gauge, Gauge, Gauge]) -> None:
        if interval is None:
            return
        for gauge, number in zip(gauges, (interval.estimate, interval.low, interval.high), strict=True):
            gauge.labels(*versions).set(number)
