"""The projects the platform serves and watches: one declaration each, read by every shared component.

A project is a model with its entity, its feature service and its label. The online API
(`POST /models/{name}/predict`), batch scoring, the prediction log and feedback, monitoring and the
training DAG factory iterate over `PROJECTS`; none of them names a project. Adding one means a feature
contract in feast_repo/, its Feast objects in definitions.py, a trainer and one entry here.

This module is plain Python, cheap to import (no Feast, no Keras).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from feast_repo import features as driver_contract
from feast_repo import penguin_features as penguin_contract

Kind = Literal["score", "classifier"]


@dataclass(frozen=True)
class Project:
    """What the shared components need to know of a project; nothing here is a setting."""

    name: str  # short, used in CLI flags, DAG ids and file names: "drivers", "penguins"
    model_name: str  # the registered MLflow model, and the {name} of /models/{name}/predict
    kind: Kind  # "score": one probability per entity; "classifier": one of `classes` with their probabilities
    entity: str
    join_key: str  # the entity's key, an integer id
    feature_view: str
    feature_service: str
    features: tuple[str, ...]  # the model's input columns, in order (all numbers)
    offline_table: str  # validated rows with their event timestamps: batch scoring reads the latest per key
    label: str  # the ground truth's field in feedback and in the offline store
    classes: tuple[str, ...] = ()  # a classifier's labels, in the order of its probability columns
    training_dag: str = "training"
    description: str = ""

    @property
    def is_classifier(self) -> bool:
        return self.kind == "classifier"


DRIVERS = Project(
    name="drivers",
    model_name="driver_trip_completion",
    kind="score",
    entity=driver_contract.ENTITY,
    join_key=driver_contract.JOIN_KEY,
    feature_view=driver_contract.FEATURE_VIEW,
    feature_service=driver_contract.FEATURE_SERVICE,
    features=driver_contract.FEATURE_NAMES,
    offline_table=driver_contract.OFFLINE_TABLE,
    label="trip_completed",
    training_dag="training",
    description="Ranks drivers by how likely they are to complete a trip (ElasticNet on hourly driver stats).",
)

PENGUINS = Project(
    name="penguins",
    model_name=penguin_contract.MODEL_NAME,
    kind="classifier",
    entity=penguin_contract.ENTITY,
    join_key=penguin_contract.JOIN_KEY,
    feature_view=penguin_contract.FEATURE_VIEW,
    feature_service=penguin_contract.FEATURE_SERVICE,
    features=penguin_contract.FEATURE_NAMES,
    offline_table=penguin_contract.OFFLINE_TABLE,
    label=penguin_contract.LABEL,
    classes=penguin_contract.CLASSES,
    training_dag="penguin_training",
    description="Classifies Palmer penguins into species from body measurements (Keras MLP on JAX).",
)

PROJECTS: dict[str, Project] = {project.name: project for project in (DRIVERS, PENGUINS)}


class UnknownProject(LookupError):
    """No declared project has this name or model name; the message lists the known ones."""


def project(name: str) -> Project:
    """The project called `name` ("penguins"); UnknownProject names the known ones."""
    try:
        return PROJECTS[name]
    except KeyError:
        raise UnknownProject(f"unknown project {name!r}: expected one of {sorted(PROJECTS)}") from None


def by_model(model_name: str) -> Project:
    """The project whose registered model is `model_name` ("penguin_species")."""
    for candidate in PROJECTS.values():
        if candidate.model_name == model_name:
            return candidate
    known = sorted(p.model_name for p in PROJECTS.values())
    raise UnknownProject(f"unknown model {model_name!r}: expected one of {known}")
