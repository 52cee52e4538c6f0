"""Request and response bodies of the online API: what a client may send and what it gets back.

Driver ids are strict JSON integers (no strings, floats or booleans) in 1..2^53-1: inside Feast's int64
entity key, and exact in every JSON parser (larger integers become floats in JavaScript). A request
naming the same driver twice is rejected rather than silently de-duplicated: the response lists scores
in request order, and a duplicate usually means a bug on the client's side.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

MAX_DRIVER_ID = 2**53 - 1
# Visible ASCII only: the id travels as an HTTP header, a Kafka key and a PostgreSQL text value.
REQUEST_ID_PATTERN = r"^[!-~]+$"

DriverId = Annotated[StrictInt, Field(ge=1, le=MAX_DRIVER_ID)]
RequestId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=REQUEST_ID_PATTERN)]


def predict_request_model(max_drivers: int) -> type[BaseModel]:
    """The /predict body, with the configured limit on the number of drivers."""

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        request_id: RequestId | None = Field(
            default=None, description="Your id for this request (1-64 visible ASCII characters); generated if absent.")
        driver_ids: list[DriverId] = Field(
            min_length=1, max_length=max_drivers,
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
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"trip_completed must be the integer 0 or 1, got {value!r}")
        return value


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
