"""The API's request middleware: every request counted and timed by endpoint, status, model version and model,
and a body over MAX_BODY_BYTES refused with 413 before any handler reads it.

The projects' routes count as endpoints `/models/{model_name}/predict` and `/models/{model_name}/feedback`
with the model in the `model` label (an unknown model name as "unknown", so no client can add label values);
the driver routes carry MODEL_NAME, the probes an empty model."""

import time
from typing import Any

from fastapi import status
from fastapi.responses import JSONResponse

from model_serving.worker import Serving

ENDPOINTS = frozenset({"/predict", "/feedback", "/health", "/ready", "/metrics", "/openapi.json", "/docs"})
MODEL_ENDPOINTS = frozenset({"/predict", "/feedback"})
MODEL_ACTIONS = frozenset({"predict", "feedback"})
MAX_BODY_BYTES = 1024 * 1024


class RequestMetrics:
    """Pure ASGI middleware: counts and times every request, refuses oversized bodies."""

    def __init__(self, app: Any, serving: Serving) -> None:
        self.app = app
        self.serving = serving

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        outcome = {"status": 500}

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > MAX_BODY_BYTES:
                response = JSONResponse({"detail": f"request body of {length} bytes exceeds the limit of "
                                                   f"{MAX_BODY_BYTES} bytes"}, status.HTTP_413_CONTENT_TOO_LARGE)
                await response(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            self._count(scope, str(outcome["status"]), time.perf_counter() - started)

    def _count(self, scope: dict, status_code: str, elapsed: float) -> None:
        path = scope.get("path", "")
        endpoint, model, slot = self._endpoint(path)
        version = scope.get("state", {}).get("model_version")  # the version that answered, set by the handler
        if version is None:
            current = slot.model if slot is not None else self.serving.models.current
            version = current.version if current else "none"
        labels = (endpoint, status_code, version, model)
        self.serving.metrics.requests.labels(*labels).inc()
        self.serving.metrics.latency.labels(*labels).observe(elapsed)


    def _endpoint(self, path: str) -> tuple[str, str, object | None]:
        """(endpoint, model, the project's slot) of a path."""
        if path in ENDPOINTS:
            return path, self.serving.settings.model_name if path in MODEL_ENDPOINTS else "", None
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "models" and parts[3] in MODEL_ACTIONS:
            slot = self.serving.projects.get(parts[2])
            return f"/models/{{model_name}}/{parts[3]}", parts[2] if slot is not None else "unknown", slot
        return "other", "", None


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
