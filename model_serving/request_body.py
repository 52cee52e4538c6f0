"""Strict JSON parsing of request bodies: any body that is not JSON the schema can describe is a 422.

Starlette's `json.loads` lets three kinds of body through the wrong door. Bytes that are not UTF-8, an
integer of more than 4,300 digits and nesting deep enough to exhaust the parser end as FastAPI's bare
400 "There was an error parsing the body", a status the API's schema does not document. `NaN`,
`Infinity` and `1e400` are not JSON numbers, yet Python parses them to floats that no JSON response
can echo back, so the 422 naming them failed as a 500. Here every such body raises
`json.JSONDecodeError`, which FastAPI answers with its documented 422 (`type` `json_invalid`, `loc`
`["body", <position>]`, `ctx.error` naming the problem), like any other malformed JSON.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _NotJSON(ValueError):
    """A number or constant Python's parser accepts but JSON (RFC 8259) does not."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"number {text} is out of range: JSON numbers must fit a 64-bit float")
    return value


def _no_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value: numbers must be finite")


def loads(body: bytes) -> Any:
    """`json.loads`, raising `json.JSONDecodeError` for every body that is not plain JSON."""
    try:
        # Integers are left to the C parser (a hook would cost a Python call per id); floats are rare.
        return json.loads(body, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}",
                                   body.decode("utf-8", "replace"), exc.start) from None
    except _NotJSON as exc:
        raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from None
    except ValueError:  # the only other failure: an integer of more digits than Python converts
        raise json.JSONDecodeError(f"an integer of more than {sys.get_int_max_str_digits()} digits is out of range",
                                   body.decode("utf-8", "replace"), 0) from None
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects are nested too deeply", body.decode("utf-8", "replace"),
                                   0) from None


class StrictJSONRequest(Request):
    """A request whose `json()` is `loads` above."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies are parsed by StrictJSONRequest (set as the router's `route_class`).

    A POST route also lists `refusals` among its responses: statuses that come from around the handler
    (the body-size limit, the token check), which FastAPI cannot see in the handler's signature.
    """

    refusals: ClassVar[Mapping[int, dict[str, Any]]] = {}

    @classmethod
    def documenting(cls, refusals: Mapping[int, dict[str, Any]]) -> type[StrictJSONRoute]:
        return type("StrictJSONRoute", (cls,), {"refusals": dict(refusals)})

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if "POST" in (kwargs.get("methods") or ()):
            kwargs["responses"] = {**self.refusals, **(kwargs.get("responses") or {})}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_json_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_json_handler
