"""A small client for Airflow's REST API (v2): trigger a DAG run and follow it to its end.

Used by the demo and by the retraining trigger, so both start runs the way a person would from the
UI: the run shows up in Airflow with its conf, its logs and its state.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from mlops_platform.settings import Settings, get_settings

FINISHED = {"success", "failed"}


class AirflowError(RuntimeError):
    """Airflow refused or could not be reached; the message says which call and why."""


@dataclass
class AirflowClient:
    settings: Settings
    timeout: float = 10.0
    _token: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> AirflowClient:
        return cls(settings or get_settings())

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        """One REST call (JSON in, JSON out); raises AirflowError naming the call and the answer."""
        request = urllib.request.Request(f"{self.settings.airflow_url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise AirflowError(f"{method} {path} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AirflowError(f"Airflow at {self.settings.airflow_url} does not answer {method} {path}: {exc}"
                               ) from None

    def token(self) -> str:
        if self._token is None:
            self._token = self.request("POST", "/auth/token", {"username": self.settings.airflow_admin_user,
                                                            "password": self.settings.airflow_admin_password},
                                     auth=False)["access_token"]
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
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
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
