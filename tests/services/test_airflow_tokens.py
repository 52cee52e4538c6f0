"""The Airflow client outlives its token, against a real api-server whose tokens expire in seconds.

The platform's own api-server keeps the default lifetime (other tests hold one token for minutes);
this module starts a second api-server on the same Airflow database and home, configured by
`airflow_env` from settings with AIRFLOW_JWT_EXPIRATION_SECONDS=30, on a port of its own.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from mlops_platform import airflow_client
from mlops_platform.airflow_client import AirflowClient
from mlops_platform.services import airflow_env, merged_env
from tests.conftest import REPO_ROOT, eventually, free_port

LIFETIME_SECONDS = 30
PROBE = "/api/v2/dags?limit=1"


def status_with(settings, token: str) -> int:
    """What the api-server answers PROBE when `token` is presented as is."""
    request = urllib.request.Request(f"{settings.airflow_url}{PROBE}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def answers(settings) -> bool:
    try:
        with urllib.request.urlopen(f"{settings.airflow_url}/api/v2/monitor/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def short_lived_tokens(airflow_up, settings, tmp_path_factory):
    """Settings that point at an api-server whose tokens expire after LIFETIME_SECONDS."""
    short = replace(settings, airflow_port=free_port(), airflow_jwt_expiration_seconds=LIFETIME_SECONDS)
    log = tmp_path_factory.mktemp("airflow-short-tokens") / "api-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "airflow", "api-server"], cwd=REPO_ROOT,
                                   env=merged_env(airflow_env(short)), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        eventually(lambda: answers(short), timeout=300, interval=1.0,
                   what=f"second api-server answering (log: {log})")
        yield short
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_a_client_keeps_working_after_airflow_expired_its_token(short_lived_tokens, monkeypatch):
    client = AirflowClient.from_settings(short_lived_tokens)
    lagging = AirflowClient.from_settings(short_lived_tokens)  # its clock will run behind Airflow's
    client.request("GET", PROBE)
    lagging.request("GET", PROBE)
    first, stale = client.token(), lagging.token()
    assert claims(first)["exp"] - claims(first)["iat"] == LIFETIME_SECONDS, "the setting reached Airflow"

    eventually(lambda: status_with(short_lived_tokens, stale) == 401, timeout=LIFETIME_SECONDS + 90, interval=1.0,
               what="Airflow refusing its tokens once their exp (and its leeway) passed")

    assert "dags" in client.request("GET", PROBE), "renewed before use"
    assert client.token() != first

    # A clock behind Airflow's holds the token for fresh; Airflow's 401 makes the client renew it.
    monkeypatch.setattr(airflow_client.time, "time", lambda: float(claims(stale)["iat"]))
    assert "dags" in lagging.request("GET", PROBE)
    assert lagging.token() != stale
