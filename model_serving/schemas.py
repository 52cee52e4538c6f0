"""Request and response bodies of the online API: what a client may send and what it gets back.

The models are the OpenAPI schema clients read, so they accept exactly what that schema (JSON Schema)
calls valid. Driver ids are JSON integers in 1..2^53-1: inside Feast's int64 entity key, and exact in
every JSON parser (larger integers become floats in JavaScript). JSON Schema counts `432.0` as the
integer 432 (a number, however written), so it is accepted as 432; strings, booleans and fractions are
not integers and are refused. A request naming the same driver twice is refused, and the schema says so
(`uniqueItems`): the response lists scores in request order, and a duplicate usually means a bug on the
client's side.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, field_validator
from pydantic_core import PydanticCustomError

MAX_DRIVER_ID = 2**53 - 1
# Visible ASCII only: the id travels as an HTTP header, a Kafka key and a PostgreSQL text value.
REQUEST_ID_PATTERN = r"^[!-~]+$"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value!r}"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _json_number(value: object) -> object:
    """Let through what JSON Schema's `integer` may be: a number; 432.0 becomes 432. Pydantic's int then
    refuses 432.5 ("fractional part"); without this it would also take "432" and true."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be an integer (a JSON number), got {found}",
                                  {"found": _json_kind(value)})
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The bounds before the validator, so that the schema states them as `minimum` and `maximum`.
DriverId = Annotated[int, Field(ge=1, le=MAX_DRIVER_ID), BeforeValidator(_json_number)]
RequestId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=REQUEST_ID_PATTERN)]


def predict_request_model(max_drivers: int) -> type[BaseModel]:
    """The /predict body, with the configured limit on the number of drivers."""

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        request_id: RequestId | None = Field(
            default=None, description="Your id for this request (1-64 visible ASCII characters); generated if absent.")
        customer_id: RequestId | None = Field(
            default=None, description="Who the request is for (1-64 visible ASCII characters). During a canary or "
                                      "A/B rollout it picks the model variant, the same one on every request; "
                                      "without it, the request id does.")
        driver_ids: list[DriverId] = Field(
            min_length=1, max_length=max_drivers, json_schema_extra={"uniqueItems": True},
            description=f"Drivers to rank: 1 to {max_drivers} distinct integer ids.")

        @field_validator("driver_ids")
        @classmethod
        def _distinct(cls, ids: list[int]) -> list[int]:
            if len(set(ids)) != len(ids):
                seen: set[int] = set()
                duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
                raise ValueError(f"each driver id may appear once; repeated: {duplicates[:10]}")
            return ids

    return PredictRequest


class ModelRef(BaseModel):
    name: str
    version: str
    run_id: str
    variant: Literal["champion", "challenger"] = Field(
        description="Which side of a rollout answered: the champion (always, outside a rollout) or the challenger.")


class DriverScore(BaseModel):
    driver_id: int
    score: float


class PredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    scores: list[DriverScore] = Field(description="Scored drivers, in request order.")
    ranking: list[int] = Field(description="Scored driver ids, best score first; ties by smaller id.")
    best_driver_id: int | None = Field(description="The first of `ranking`; null when no driver could be scored.")
    missing_driver_ids: list[int] = Field(description="Drivers without (fresh) online features: not scored.")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    driver_id: DriverId
    trip_completed: Literal[0, 1] = Field(description="1 if the driver completed the trip, else 0.")

    @field_validator("trip_completed", mode="before")
    @classmethod
    def _strict_flag(cls, value: object) -> object:
        if isinstance(value, float) and value in (0, 1):
            return int(value)  # 1.0 is the JSON number 1, as JSON Schema's enum compares numbers
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"trip_completed must be the integer 0 or 1, got {value!r}")
        return value


class ErrorDetail(BaseModel):
    """Every error but a 422: what was wrong and, where it helps, what to do."""

    detail: str


class FeedbackResponse(BaseModel):
    request_id: str
    driver_id: int
    accepted: bool


class Ready(BaseModel):
    ready: bool
    model: ModelRef | None = None
    reason: str | None = None


class Health(BaseModel):
    alive: bool
