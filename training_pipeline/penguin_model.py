"""The penguin classifier: the course's Keras MLP with its scaling inside, stratified splits, one fold's fit.

    Normalization (mean/variance of the training rows) -> Dense 10 relu -> Dense 8 relu -> Dense 3 softmax

trained with SGD (learning rate 0.01) on sparse categorical cross-entropy. The scaling is part of the
model, so serving and batch scoring feed raw features (FEATURE_NAMES, float32) and get the probabilities
of CLASSES. Its statistics come from the rows the model is fitted on and nothing else: a fold's model never
sees the mean of its test rows. The 0/1 indicators pass through unscaled (mean 0, variance 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import mlops_platform.keras_backend  # noqa: F401  (before keras: Keras on JAX, CPU only)
from feast_repo.penguin_features import CLASSES, FEATURE_NAMES, LABEL, MEASUREMENT_NAMES
from training_pipeline.classification_metrics import classification_metrics

SCALED = tuple(name in MEASUREMENT_NAMES for name in FEATURE_NAMES)


def inputs(frame: pd.DataFrame) -> np.ndarray:
    """The model's input: FEATURE_NAMES in order, float32 (the serving contract)."""
    return frame[list(FEATURE_NAMES)].to_numpy(np.float32)


def targets(frame: pd.DataFrame) -> np.ndarray:
    """The species as indices into CLASSES; an unknown species is an error, not a fourth class."""
    codes = pd.Categorical(frame[LABEL], categories=list(CLASSES)).codes
    if (codes < 0).any():
        unknown = sorted(set(frame[LABEL][codes < 0].astype(str)))
        raise ValueError(f"species must be one of {list(CLASSES)}, got {unknown}")
    return codes.astype(np.int64)


def normalization_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each input column over `x`; the indicators get 0 and 1 (left as they are)."""
    x = np.asarray(x, np.float64)
    mean, variance = x.mean(axis=0), x.var(axis=0)
    scaled = np.array(SCALED)
    variance = np.where(variance > 0, variance, 1.0)  # a constant column is centred, not divided by zero
    return np.where(scaled, mean, 0.0).astype(np.float32), np.where(scaled, variance, 1.0).astype(np.float32)


def build_model(train_x: np.ndarray, learning_rate: float, seed: int):
    """Unfitted network whose Normalization layer holds train_x's statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    mean, variance = normalization_stats(train_x)
    model = keras.Sequential([
        keras.Input(shape=(len(FEATURE_NAMES),), name="features"),
        keras.layers.Normalization(mean=mean, variance=variance, name="normalize"),
        keras.layers.Dense(10, activation="relu"),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(len(CLASSES), activation="softmax", name="species"),
    ], name="penguin_species")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(train_x: np.ndarray, train_y: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float,
        seed: int):
    """A fitted network; the same rows, settings and seed give the same weights."""
    import keras

    model = build_model(train_x, learning_rate, seed)
    keras.utils.set_random_seed(seed)  # the shuffling of the batches too
    model.fit(train_x, train_y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return model


def predict_proba(model, x: np.ndarray) -> np.ndarray:
    """Probabilities (n, 3), columns in CLASSES order."""
    return np.asarray(model.predict(np.asarray(x, np.float32), verbose=0), np.float64)


def evaluate(model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return classification_metrics(y, predict_proba(model, x).argmax(axis=1), CLASSES)


# ---------------------------------------------------------------------------------------------
# splits: a stratified holdout, then stratified folds over the rest
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Splits:
    """Row positions in the training set: the holdout, and each fold's test rows among the others."""

    holdout: list[int]
    fit: list[int]  # every row that is not in the holdout
    fold_tests: list[list[int]]  # positions into the training set, each a subset of `fit`

    def fold(self, n: int) -> tuple[list[int], list[int]]:
        """(train rows, test rows) of fold n."""
        test = set(self.fold_tests[n])
        return [i for i in self.fit if i not in test], sorted(test)

    def to_dict(self) -> dict[str, list]:
        return {"holdout": self.holdout, "fit": self.fit, "fold_tests": self.fold_tests}

    @classmethod
    def from_dict(cls, values: dict) -> Splits:
        return cls(list(values["holdout"]), list(values["fit"]), [list(t) for t in values["fold_tests"]])


def split(y: np.ndarray, holdout_share: float, folds: int, seed: int) -> Splits:
    """A stratified holdout of `holdout_share`, then `folds` stratified folds over the remaining rows.

    Raises ValueError when a species has too few rows to appear on both sides of every split.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    y = np.asarray(y)
    counts = np.bincount(y, minlength=len(CLASSES))
    smallest = int(counts.min())
    needed = folds + max(1, int(np.ceil(1 / holdout_share)))
    if smallest < needed:
        raise ValueError(f"every species needs at least {needed} labelled rows for {folds} folds and a "
                         f"{holdout_share} holdout, got {dict(zip(CLASSES, counts.tolist(), strict=True))}: "
                         "land more penguins or lower folds")
    positions = np.arange(len(y))
    fit_rows, holdout = train_test_split(positions, test_size=holdout_share, stratify=y, random_state=seed)
    fit_rows, holdout = np.sort(fit_rows), np.sort(holdout)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    tests = [sorted(fit_rows[test].tolist()) for _, test in splitter.split(fit_rows, y[fit_rows])]
    return Splits(holdout.tolist(), fit_rows.tolist(), tests)


def requirements() -> list[str]:
    """What loading the model needs, pinned to this environment."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "keras", "jax", "jaxlib", "numpy", "pandas")]
