"""Request bodies of the projects' routes, built per project from its declaration and feature contract.

    POST /models/{model_name}/predict   {"request_id"?: str, "instances": [{<join key>: int, ...raw fields?}]}
    POST /models/{model_name}/feedback  {"request_id": str, <join key>: int, "label": <class, or 0|1 for a score>}

An instance holding only the join key is scored with its features from the online store. An instance with
raw fields (a project whose contract declares them: RAW_FIELDS, MEASUREMENT_NAMES, encode_categories) is
encoded here, as ingestion encodes a landed row: every measurement is then required (finite, within the
contract's MEASUREMENT_BOUNDS), the island too, the sex may be missing; the label is refused (it is what the
model predicts; send it to /feedback). Every refusal is a 422 whose `loc` names the field and whose `msg` says
what was expected and found. Keys are integers 1..2^53-1 (as the driver route's), each at most once a request.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from mlops_platform.projects import Project
from model_serving.schemas import DriverId, RequestId, _json_number

# The feature contracts a project's raw fields may come from, matched on their feature view.
CONTRACT_MODULES = ("feast_repo.features", "feast_repo.penguin_features")
EntityId = DriverId  # the same integer rules for every join key


def contract(project: Project) -> ModuleType | None:
    """The project's feature contract module when it declares raw fields for inline instances, else None."""
    for name in CONTRACT_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "FEATURE_VIEW", None) == project.feature_view and hasattr(module, "encode_categories"):
            return module
    return None


class RawEncoder:
    """Turns an instance's raw fields into the model's features, in the project's feature order."""

    def __init__(self, project: Project, module: ModuleType) -> None:
        self.features = project.features
        self.label = module.LABEL
        self.measurements: tuple[str, ...] = tuple(module.MEASUREMENT_NAMES)
        self.bounds: dict[str, tuple[float, float]] = dict(getattr(module, "MEASUREMENT_BOUNDS", {}))
        self.categories = tuple(f for f in module.RAW_FIELDS if f != self.label and f not in self.measurements)
        self.required = (*self.categories[:1], *self.measurements)  # island and the measurements; sex may be missing
        self.fields = (*self.categories, *self.measurements)
        self._encode = module.encode_categories
        self.module_name = module.__name__
        self._unknown = module.UnknownCategory

    def encode(self, raw: dict[str, Any]) -> tuple[float, ...]:
        """The feature row; ValueError naming the field when a value is missing, out of bounds or unknown."""
        missing = [name for name in self.required if raw.get(name) is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: an instance with raw fields needs "
                             f"{', '.join(self.required)} (or only the key, to use the online store)")
        values: dict[str, float] = {}
        for name in self.measurements:
            value = float(raw[name])
            low, high = self.bounds.get(name, (-math.inf, math.inf))
            if not low <= value <= high:
                raise ValueError(f"{name} must be within [{low:g}, {high:g}], got {value:g}")
            values[name] = value
        try:
            values.update(self._encode(*(raw.get(name) for name in self.categories)))
        except self._unknown as exc:
            raise ValueError(str(exc)) from None
        return tuple(values[name] for name in self.features)


def _number(value: object) -> object:
    """A JSON number only: pydantic's float would also take "46.5" and true, which the schema refuses."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return value


class Instance(BaseModel):
    """An instance of any project; `_row` holds its features when it came with raw fields."""

    model_config = ConfigDict(extra="forbid")
    _row: tuple[float, ...] | None = PrivateAttr(default=None)


def instance_model(project: Project, encoder: RawEncoder | None) -> Any:
    """One instance: the join key alone, or (a project with raw fields) the key with its raw fields.

    The two shapes are two schemas (`oneOf` in OpenAPI), so the schema states what the API accepts: a
    measured instance needs the island and every measurement within the contract's bounds; sex may be
    missing. Which shape an instance is follows from its fields, so each refusal names one problem."""
    key_field = {project.join_key: (EntityId, Field(description=f"The {project.entity}'s id."))}
    label = encoder.label if encoder is not None else project.label

    def no_label(cls, data: Any) -> Any:
        if isinstance(data, dict) and label in data:
            raise ValueError(f"{label} is not an input: it is what the model predicts; send the true {label} "
                             f"to /models/{project.model_name}/feedback")
        return data

    checks = {"no_label": model_validator(mode="before")(classmethod(no_label))}
    keyed = create_model(f"{project.name.title()}KeyInstance", __base__=Instance, __validators__=checks,
                         **key_field)
    if encoder is None:
        return keyed

    module = importlib.import_module(encoder.module_name)
    fields: dict[str, Any] = dict(key_field)
    island, *others = encoder.categories
    fields[island] = (Literal[tuple(module.ISLANDS)], Field(description="Where the penguin was observed."))
    for name in others:  # the sex: known, or one of the ways a missing value arrives, or absent
        fields[name] = (Literal[(*module.SEXES, ".", "NA", "")] | None, None)
    for name in encoder.measurements:
        low, high = encoder.bounds.get(name, (None, None))
        fields[name] = (Annotated[float, BeforeValidator(_number)], Field(ge=low, le=high, allow_inf_nan=False))

    def raw_row(self) -> Any:
        self._row = encoder.encode({name: getattr(self, name) for name in encoder.fields})
        return self

    measured = create_model(f"{project.name.title()}MeasuredInstance", __base__=Instance,
                            __validators__={**checks, "raw_row": model_validator(mode="after")(raw_row)}, **fields)
    raw_names = set(encoder.fields)

    def shape(value: Any) -> str:
        given = value.keys() if isinstance(value, dict) else (n for n in raw_names if getattr(value, n, None))
        return "measured" if raw_names.intersection(given) else "key"

    return Annotated[Annotated[keyed, Tag("key")] | Annotated[measured, Tag("measured")], Discriminator(shape)]


def predict_request_model(project: Project, max_instances: int, instance: type[BaseModel]) -> type[BaseModel]:
    """The /models/{model_name}/predict body of one project."""
    key = project.join_key

    class ModelPredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        request_id: RequestId | None = Field(
            default=None, description="Your id for this request (1-64 visible ASCII characters); generated if absent.")
        instances: list[instance] = Field(  # type: ignore[valid-type]
            min_length=1, max_length=max_instances, json_schema_extra={"uniqueItems": True},
            description=f"1 to {max_instances} {project.entity}s, each {key} at most once.")

        @field_validator("instances")
        @classmethod
        def _distinct(cls, instances: list[Any]) -> list[Any]:
            keys = [getattr(i, key) for i in instances]
            if len(set(keys)) != len(keys):
                seen: set[int] = set()
                repeated = sorted({k for k in keys if k in seen or seen.add(k)})
                raise ValueError(f"each {key} may appear once; repeated: {repeated[:10]}")
            return instances

    ModelPredictRequest.__name__ = f"{project.name.title()}PredictRequest"
    return ModelPredictRequest


def feedback_request_model(project: Project) -> type[BaseModel]:
    """The /models/{model_name}/feedback body of one project: the true label of one predicted entity."""
    labels: Any = (Literal[project.classes] if project.is_classifier  # type: ignore[valid-type]
                   else Annotated[Literal[0, 1], BeforeValidator(_json_number)])  # no booleans; 1.0 is 1
    description = (f"The true {project.label}: one of {list(project.classes)}." if project.is_classifier
                   else f"The true {project.label}: 0 or 1.")
    model = create_model(f"{project.name.title()}FeedbackRequest", __config__=ConfigDict(extra="forbid"),
                         request_id=(RequestId, ...), label=(labels, Field(description=description)),
                         **{project.join_key: (EntityId, ...)})
    return model


def instance_row(instance: BaseModel) -> tuple[float, ...] | None:
    """The encoded features of an inline instance, or None when it asks for the online store."""
    return instance._row  # type: ignore[attr-defined]
