"""Live quality of a classifier: its served labels against the labels that came back as feedback.

Computed by hand from the confusion counts, so that a class the window never saw or never predicted
gives 0 rather than a warning: precision = right / predicted as the class, recall = right / truly of
the class, F1 their harmonic mean, each 0 when its denominator is. Macro averages weigh every class of
the project equally, also those absent from the window (their recall and F1 are 0): the alert on
macro F1 is then about the project's classes, not about the ones that happened to come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ClassQuality:
    rows: int
    accuracy: float
    precision: dict[str, float]  # class -> precision
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]  # class -> labelled outcomes of that class (the truth)

    @property
    def macro_precision(self) -> float:
        return sum(self.precision.values()) / len(self.precision)

    @property
    def macro_recall(self) -> float:
        return sum(self.recall.values()) / len(self.recall)

    @property
    def macro_f1(self) -> float:
        return sum(self.f1.values()) / len(self.f1)


def ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def class_quality(predicted: Sequence[str], actual: Sequence[str], classes: Sequence[str]) -> ClassQuality:
    """Accuracy, per-class precision/recall/F1 and support; ValueError on unknown labels or mismatched lengths."""
    predicted, actual = [str(label) for label in predicted], [str(label) for label in actual]
    if len(predicted) != len(actual):
        raise ValueError(f"expected one label per prediction, got {len(predicted)} predictions and "
                         f"{len(actual)} labels")
    if not predicted:
        raise ValueError("expected labelled predictions, got none")
    unknown = sorted((set(predicted) | set(actual)) - set(classes))
    if unknown:
        raise ValueError(f"expected labels among the project's classes {list(classes)}, found {unknown[:5]}")
    pairs = list(zip(predicted, actual, strict=True))
    precision, recall, f1, support = {}, {}, {}, {}
    for name in classes:
        right = sum(p == name and a == name for p, a in pairs)
        as_class = sum(p == name for p in predicted)
        support[name] = sum(a == name for a in actual)
        precision[name] = ratio(right, as_class)
        recall[name] = ratio(right, support[name])
        both = precision[name] + recall[name]
        f1[name] = 2 * precision[name] * recall[name] / both if both else 0.0
    accuracy = sum(p == a for p, a in pairs) / len(pairs)
    return ClassQuality(len(pairs), accuracy, precision, recall, f1, support)
