"""A small client for Airflow's REST API (v2): trigger a DAG run and follow it to its end.

Used by the demo and by the retraining trigger, so both start runs the way a person would from the
UI: the run shows up in Airflow with its conf, its logs and its state. A client lives as long as its
process (the monitoring service keeps one for days), so it renews its token before the token expires
(AIRFLOW_JWT_EXPIRATION_SECONDS) and once more after a 401.
"""

from __future__ import annotations

import base64
import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from mlops_platform.settings import Settings, get_settings

FINISHED = {"success", "failed"}
RENEW_MARGIN_SECONDS = 60.0


class AirflowError(RuntimeError):
    """Airflow refused or could not be reached; the message says which call and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def token_expiry(token: str) -> float | None:
    """The JWT's `exp` claim (epoch seconds), read without verifying it: only to renew the token in time."""
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def renewal_time(token: str, now: float) -> float:
    """When to fetch the next token: a tenth of this one's lifetime before its `exp`, at most a minute
    before; never for a token without a readable `exp` (a 401 says when then)."""
    expiry = token_expiry(token)
    if expiry is None:
        return math.inf
    return expiry - min(RENEW_MARGIN_SECONDS, max(0.0, expiry - now) / 10)


@dataclass
class AirflowClient:
    settings: Settings
    timeout: float = 10.0
    _token: str | None = field(default=None, repr=False)
    _renew_at: float = field(default=math.inf, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> AirflowClient:
        return cls(settings or get_settings())

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        """One REST call (JSON in, JSON out); raises AirflowError naming the call and the answer.

        A 401 means Airflow holds the token for expired (by its clock, which may run ahead of ours):
        the call is made once more with a new token. Airflow refused it before doing anything, so a
        retried POST does not start a second run.
        """
        if not auth:
            return self._call(method, path, body, None)
        token = self.token()
        try:
            return self._call(method, path, body, token)
        except AirflowError as exc:
            if exc.status != 401:
                raise
        self._token = None
        return self._call(method, path, body, self.token())

    def _call(self, method: str, path: str, body: dict | None, token: str | None) -> dict:
        request = urllib.request.Request(f"{self.settings.airflow_url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise AirflowError(f"{method} {path} answered {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise AirflowError(f"Airflow at {self.settings.airflow_url} does not answer {method} {path}: {exc}"
                               ) from None

    def token(self) -> str:
        """The bearer token, fetched anew shortly before the current one expires."""
        if self._token is None or time.time() >= self._renew_at:
            token = self._call("POST", "/auth/token", {"username": self.settings.airflow_admin_user,
                                                       "password": self.settings.airflow_admin_password},
                               None)["access_token"]
            self._token, self._renew_at = token, renewal_time(token, time.time())
        return self._token

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        """Stop the scheduler from starting or advancing runs of this DAG (`airflow dags test` needs that)."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})

    def trigger(self, dag_id: str, conf: dict | None = None, note: str | None = None) -> str:
        """Start a run now; returns its run id. The DAG is unpaused first, or the run would only queue."""
        self.unpause(dag_id)
        body: dict = {"logical_date": None, "conf": conf or {}}
        if note:
            body["note"] = note
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 900.0, poll: float = 2.0) -> str:
        """Block until the run finished; returns 'success' or 'failed', raises on timeout."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            try:
                state = self.run_state(dag_id, run_id)
            except AirflowError as exc:
                if exc.status is not None:
                    raise
                # No answer in time (a busy api-server, a restart): the run goes on; ask again.
                state = f"unknown: {exc}"
            if state in FINISHED:
                return state
            time.sleep(poll)
        raise AirflowError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s (last state: {state})")

    def runs(self, dag_id: str, state: str | None = None, limit: int = 100) -> list[dict]:
        query = f"?limit={limit}&order_by=-start_date" + (f"&state={state}" if state else "")
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns{query}")["dag_runs"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        """What a task of a run returned (its XCom), e.g. an ingestion's row counts."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.request("GET", path)["value"]
