"""The penguin project's feature contract: entity, features, label and the encoding of its raw fields.

The second project of the platform (the Palmer penguins of `palmerpenguins`): a classifier of species from
four body measurements, the island and the sex. Every package reads names from here, as the driver packages
read feast_repo.features. The Feast objects are built from it in definitions.py.

The model's inputs are numbers only: the measurements as measured, and the island and sex as 0/1 indicators
whose vocabulary is part of the contract (`encode_categories`). That encoding is fixed, not learned, so it
happens once, at ingestion and for inline serving requests. What is learned from data (the scaling of the
measurements) is fitted on each training fold and lives inside the Keras model.
"""

from __future__ import annotations

from datetime import timedelta

from feast_repo.features import Feature

ENTITY = "penguin"
JOIN_KEY = "penguin_id"

# One table: the validated measurements, the species (the label) and the indicator columns Feast serves.
OFFLINE_TABLE = "penguin_measurements"
TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created"

FEATURE_VIEW = "penguin_measurements"
# A penguin's measurements do not go stale: no TTL (Feast reads a zero timedelta as "forever").
FEATURE_TTL = timedelta(0)
FEATURE_SERVICE = "penguin_species"
MODEL_NAME = "penguin_species"

LABEL = "species"
CLASSES = ("Adelie", "Chinstrap", "Gentoo")  # the model's output columns, in this order
ISLANDS = ("Biscoe", "Dream", "Torgersen")
SEXES = ("female", "male")
# How a missing sex arrives upstream: the course's data writes ".", the package's CSV "NA" or nothing.
MISSING_SEX = frozenset({"", ".", "NA", "na", "nan", "NaN", "None"})

MEASUREMENTS = (
    Feature("bill_length_mm", "float32", "Length of the bill (culmen), millimetres."),
    Feature("bill_depth_mm", "float32", "Depth of the bill (culmen), millimetres."),
    Feature("flipper_length_mm", "float32", "Length of the flipper, millimetres."),
    Feature("body_mass_g", "float32", "Body mass, grams."),
)
# Plausible bounds of each measurement: outside them a row is quarantined (a unit or typing error).
MEASUREMENT_BOUNDS = {
    "bill_length_mm": (20.0, 80.0),
    "bill_depth_mm": (10.0, 30.0),
    "flipper_length_mm": (150.0, 260.0),
    "body_mass_g": (2000.0, 7000.0),
}
INDICATORS = (
    *(Feature(f"island_{island.lower()}", "float32", f"1 when observed on {island} island, else 0.")
      for island in ISLANDS),
    *(Feature(f"sex_{sex}", "float32", f"1 when the penguin is {sex}, else 0 (both 0: sex unknown).")
      for sex in SEXES),
)
# In the feature service's order, which is the order of the model's input columns.
FEATURES = (*MEASUREMENTS, *INDICATORS)
FEATURE_NAMES = tuple(feature.name for feature in FEATURES)
MEASUREMENT_NAMES = tuple(feature.name for feature in MEASUREMENTS)

# The raw fields of a landed file and of an inline serving request (besides the key and timestamps).
RAW_FIELDS = (LABEL, "island", *MEASUREMENT_NAMES, "sex")


class UnknownCategory(ValueError):
    """An island or sex outside the contract's vocabulary."""


def normalise_sex(sex: object) -> str | None:
    """'female', 'male' or None (unknown); anything else raises UnknownCategory."""
    if sex is None or (isinstance(sex, float) and sex != sex) or str(sex).strip() in MISSING_SEX:
        return None
    value = str(sex).strip().lower()
    if value not in SEXES:
        raise UnknownCategory(f"sex must be one of {list(SEXES)} or missing, got {sex!r}")
    return value


def encode_categories(island: object, sex: object) -> dict[str, float]:
    """The indicator features of one penguin: one-hot island, one-hot sex (all zero when sex is unknown)."""
    name = str(island).strip() if island is not None else ""
    matches = [known for known in ISLANDS if known.lower() == name.lower()]
    if not matches:
        raise UnknownCategory(f"island must be one of {list(ISLANDS)}, got {island!r}")
    known_sex = normalise_sex(sex)
    return {**{f"island_{i.lower()}": float(i == matches[0]) for i in ISLANDS},
            **{f"sex_{s}": float(s == known_sex) for s in SEXES}}
