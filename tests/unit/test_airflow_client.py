"""The Airflow client's token: renewed before its `exp`, and once after a 401, against a tiny real HTTP server."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops_platform import airflow_client
from mlops_platform.airflow_client import AirflowClient, AirflowError, renewal_time, token_expiry

ADMIN_PASSWORD = "af-password"


def jwt(claims: dict) -> str:
    """A JWT-shaped token (unpadded base64url parts), as Airflow's /auth/token returns."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS512', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeAirflow(ThreadingHTTPServer):
    """/auth/token hands out tokens valid for `lifetime` seconds; other paths answer 401 to a token
    that is past its `exp` or that the server was told to treat as expired, as Airflow does."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lifetime = 3600.0
        self.issued: list[str] = []
        self.expired: set[str] = set()
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status)
        self.runs: list[dict] = []
        self.slow_answers = 0  # how many GETs to answer only after the client gave up

    def expire_all(self) -> None:
        """Airflow's clock says every token handed out so far has expired."""
        self.expired.update(self.issued)


class Handler(BaseHTTPRequestHandler):
    server: FakeAirflow

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/auth/token":
            if body != {"username": "platform-admin", "password": ADMIN_PASSWORD}:
                return self.answer(401, {"detail": "Invalid credentials"})
            now = time.time()
            token = jwt({"sub": "1", "n": len(self.server.issued), "iat": int(now), "exp": now + self.server.lifetime})
            self.server.issued.append(token)
            return self.answer(201, {"access_token": token})
        if self.authorized():
            self.server.runs.append(body)
            self.answer(200, {"dag_run_id": f"run-{len(self.server.runs)}"})

    def do_GET(self) -> None:
        if self.server.slow_answers > 0:
            self.server.slow_answers -= 1
            time.sleep(1.0)
        if self.authorized():
            self.answer(200, {"state": "success"})

    def do_PATCH(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.authorized():
            self.answer(200, {"is_paused": False})

    def authorized(self) -> bool:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.server.issued:
            self.answer(403, {"detail": "Invalid JWT token"})
            return False
        if token in self.server.expired or token_expiry(token) < time.time():
            self.answer(401, {"detail": "Token Expired"})
            return False
        return True

    def answer(self, status: int, body: dict) -> None:
        self.server.seen.append((self.command, self.path, status))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def airflow(make_settings):
    server = FakeAirflow()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = make_settings(AIRFLOW_ADMIN_PASSWORD=ADMIN_PASSWORD, AIRFLOW_HOST="127.0.0.1",
                             AIRFLOW_PORT=str(server.server_port))
    yield server, AirflowClient(settings)
    server.shutdown()
    server.server_close()


def test_a_401_fetches_a_new_token_once_and_the_call_starts_one_run(airflow):
    server, client = airflow
    assert client.run_state("training", "run-0") == "success"
    server.expire_all()  # e.g. Airflow's clock runs ahead of ours

    assert client.trigger("training", note="retrain") == "run-1"
    assert len(server.issued) == 2 and len(server.runs) == 1
    assert [status for *_, status in server.seen].count(401) == 1, server.seen


def test_a_token_still_refused_after_its_renewal_is_an_error_not_a_loop(airflow):
    server, client = airflow
    server.lifetime = -60.0  # every token it hands out has already expired

    with pytest.raises(AirflowError, match="answered 401") as refused:
        client.run_state("training", "run-0")
    assert refused.value.status == 401
    assert len(server.issued) == 2, "one token, then exactly one more"


def test_the_token_is_renewed_before_its_exp_so_no_call_meets_a_401(airflow, monkeypatch):
    server, client = airflow
    server.lifetime = 30.0
    assert client.run_state("training", "run-0") == "success"
    first = server.issued[0]

    later = token_expiry(first) - 1.0  # inside the last tenth of its lifetime, still valid for Airflow
    monkeypatch.setattr(airflow_client.time, "time", lambda: later)
    assert client.run_state("training", "run-0") == "success"
    assert len(server.issued) == 2 and client.token() == server.issued[1]
    assert 401 not in [status for *_, status in server.seen]


def test_a_token_is_good_until_a_tenth_of_its_lifetime_before_exp_at_most_a_minute():
    now = 1_800_000_000.0
    assert token_expiry(jwt({"exp": now + 30})) == now + 30
    assert renewal_time(jwt({"exp": now + 30}), now) == pytest.approx(now + 27)
    assert renewal_time(jwt({"exp": now + 86400}), now) == now + 86400 - 60
    for unreadable in ("not-a-jwt", jwt({"sub": "1"}), "a.%%%.c", jwt({"exp": "soon"})):
        assert token_expiry(unreadable) is None
        assert renewal_time(unreadable, now) == math.inf, "no readable exp: kept until a 401"


def test_waiting_for_a_run_outlasts_an_api_server_that_is_slow_to_answer(airflow):
    # A busy api-server that misses the client's timeout does not end the wait: the run goes on.
    server, client = airflow
    client.timeout = 0.3
    server.slow_answers = 2
    assert client.wait("training", "run-0", timeout=30, poll=0.05) == "success"
    server.lifetime = -60.0
    client._token = None
    with pytest.raises(AirflowError, match="answered 401"):
        client.wait("training", "run-0", timeout=30, poll=0.05)  # a refusal is an answer: it ends the wait
