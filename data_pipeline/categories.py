"""The category columns of landed rows (the penguins' species, island and sex) and the indicator columns
the offline store keeps beside them, computed with the contract's `encode_categories` (as serving does).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from feast_repo import penguin_features as penguin

# Category kinds: their vocabulary, and whether a missing value is allowed (a species not known yet, a sex not
# recorded). Values are compared without case and surrounding blanks, and stored in the vocabulary's spelling.
CATEGORIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "species": (penguin.CLASSES, True),
    "island": (penguin.ISLANDS, False),
    "sex": (penguin.SEXES, True),
}

def _category_text(value: object, kind: str) -> str | None:
    """None for a missing value (for sex also the contract's missing spellings), else the stripped text."""
    if value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value))):
        return None
    text = str(value).strip()
    if text == "" or (kind == "sex" and text in penguin.MISSING_SEX):
        return None
    return text


def parse_category(raw: pd.Series, kind: str) -> tuple[pd.Series, np.ndarray]:
    """Values in the vocabulary's spelling (None when missing), and which values are outside the vocabulary."""
    vocabulary = {known.lower(): known for known in CATEGORIES[kind][0]}
    texts = [_category_text(value, kind) for value in raw.astype(object).to_numpy()]
    known = [None if text is None else vocabulary.get(text.lower()) for text in texts]
    unknown = np.array([text is not None and value is None for text, value in zip(texts, known, strict=True)],
                       dtype=bool)
    return pd.Series(known, index=raw.index, dtype=object), unknown


def with_indicators(valid: pd.DataFrame) -> pd.DataFrame:
    """Valid penguin rows with the contract's indicator columns (encode_categories, the encoding serving uses)."""
    encoded = [penguin.encode_categories(island, sex) for island, sex in zip(valid["island"], valid["sex"],
                                                                            strict=True)]
    names = [feature.name for feature in penguin.INDICATORS]
    indicators = pd.DataFrame(encoded, index=valid.index, columns=names, dtype="float64")
    return pd.concat([valid, indicators], axis=1)
