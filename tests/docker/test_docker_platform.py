"""The platform in containers, as a user runs it: `all up`, the demo, the drift scenario, a browser on
Airflow, restart, one stack down, and `all down --volumes` leaving nothing behind. In file order."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, eventually, secrets_on_command_lines
from tests.docker.browser import Browser, chromium_path
from tests.docker.conftest import PROJECT, docker, docker_sh, env_value, project_containers

SCREENSHOTS = REPO_ROOT / ".platform-test" / "screenshots"
OUR_IMAGES = ("ride-mlops/",)


def host_url(port_key: str, path: str = "") -> str:
    return f"http://127.0.0.1:{env_value(port_key)}{path}"


def get_json(url: str, token: str | None = None, body: dict | None = None,
             timeout: float = 15) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def compose_ps() -> dict[str, dict]:
    from mlops_platform.compose_project import container_states

    return container_states()


def test_all_up_starts_every_buildable_service_healthy_and_names_what_cannot_start(docker_platform):
    states = compose_ps()
    for name in ("postgres", "redis", "mlflow", "airflow-api-server", "airflow-scheduler", "kafka",
                 "stream-consumer", "serving", "prediction-logger", "prometheus", "monitoring-service"):
        assert states[name]["State"] == "running" and states[name]["Health"] == "healthy", (name, states.get(name))
    for one_shot in ("feast-init", "airflow-init"):
        assert states[one_shot]["State"] == "exited" and int(states[one_shot]["ExitCode"]) == 0, states[one_shot]
    # Grafana, ELK and Jenkins come from registries; where none answers, `up` says so and goes on.
    for name in ("grafana", "elasticsearch", "kibana", "filebeat", "jenkins"):
        if name not in states:
            assert f"{name}" in docker_platform.stdout and "cannot start" in docker_platform.stdout
    print(f"docker all up: {docker_platform.seconds:.0f}s")


def test_every_container_of_ours_runs_as_a_non_root_user(docker_platform):
    for container in project_containers(all_states=False):
        if not container["Image"].startswith(OUR_IMAGES):
            continue
        uid = docker("exec", container["Names"], "id", "-u").stdout.strip()
        assert uid and uid != "0", f"{container['Names']} runs as root"


def test_no_process_of_the_containers_shows_a_secret_on_its_command_line(docker_platform):
    keys = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_SECRET_KEY",
            "AIRFLOW_FERNET_KEY", "SERVING_API_TOKEN")
    assert not secrets_on_command_lines({key: env_value(key) for key in keys})


def test_status_shows_each_service_with_its_health_and_url(docker_platform):
    result = docker_sh("all", "status", check=False)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("SERVICE"))
    assert header.split() == ["SERVICE", "STACK", "STATE", "HEALTH", "URL"]
    # The API's replicas publish no port: HAProxy in front of them (serving-lb) holds SERVING_PORT.
    serving = next(line for line in lines if line.startswith("serving "))
    balancer = next(line for line in lines if line.startswith("serving-lb "))
    assert "healthy" in serving and "healthy" in balancer and host_url("SERVING_PORT") in balancer
    assert any(line.startswith("grafana ") for line in lines)


def test_urls_print_every_address_with_its_login_and_the_serving_token(docker_platform):
    out = docker_sh("urls").stdout
    for name, port_key in (("Grafana", "GRAFANA_PORT"), ("Kibana", "KIBANA_PORT"), ("Jenkins", "JENKINS_PORT"),
                           ("Airflow", "AIRFLOW_PORT"), ("Serving API", "SERVING_PORT")):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert host_url(port_key) in line, line
    assert env_value("SERVING_API_TOKEN") in out and env_value("GRAFANA_ADMIN_PASSWORD") in out


def test_demo_runs_in_a_container_and_prints_a_ranked_prediction(docker_platform):
    started = time.monotonic()
    result = docker_sh("demo", timeout=2400)
    print(f"docker demo: {time.monotonic() - started:.0f}s")
    out = result.stdout
    assert "DAG `data_ingestion`" in out and "rows loaded" in out
    assert "1. driver" in out and "best driver:" in out, out[-3000:]
    # The second project, trained by its own DAG and classified by its own route, in containers too.
    assert "DAG `penguin_training`" in out and "(model penguin_species v" in out, out[-3000:]
    assert "Where to look" in out and host_url("AIRFLOW_PORT") in out


def test_the_published_api_ranks_drivers_with_the_token_and_refuses_without_it(docker_platform):
    token = env_value("SERVING_API_TOKEN")
    status, _ = get_json(host_url("SERVING_PORT", "/predict"), body={"driver_ids": [1001, 1008]})
    assert status == 401
    status, body = get_json(host_url("SERVING_PORT", "/predict"), token, {"driver_ids": [1001, 1008, 1015]})
    assert status == 200, body
    assert sorted(body["ranking"]) == [1001, 1008, 1015] and body["best_driver_id"] == body["ranking"][0]


def test_landed_files_and_outputs_live_on_volumes(docker_platform):
    mounts = json.loads(docker("inspect", f"{PROJECT}-airflow-scheduler-1", "--format", "{{json .Mounts}}").stdout)
    by_target = {m["Destination"]: m for m in mounts}
    for target in ("/var/lib/platform/landing", "/var/lib/platform/training", "/var/lib/platform/batch_predictions"):
        assert by_target[target]["Type"] == "volume", by_target.get(target)
    listing = docker("exec", f"{PROJECT}-airflow-scheduler-1", "sh", "-c",
                     "ls /var/lib/platform/landing/driver_stats /var/lib/platform/batch_predictions").stdout
    assert "date=" in listing and ".parquet" in listing, listing


@pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_airflow_login_then_the_dag_list_in_a_real_browser(docker_platform):
    user, password = env_value("AIRFLOW_ADMIN_USER"), env_value("AIRFLOW_ADMIN_PASSWORD")
    with Browser() as page:
        page.goto(host_url("AIRFLOW_PORT", "/"))
        page.wait_for("!!document.querySelector('input[type=password]')", timeout=120, what="Airflow's login form")
        page.screenshot(SCREENSHOTS / "airflow-login.png")
        page.type_into("input[name=username], input[type=text]", user)
        page.type_into("input[type=password]", password)
        page.evaluate("document.querySelector('button[type=submit]').click()")
        page.wait_for("!document.querySelector('input[type=password]')", timeout=120, what="login")
        page.goto(host_url("AIRFLOW_PORT", "/dags"))
        page.wait_for("document.body.innerText.includes('data_ingestion')", timeout=120, what="the DAG list")
        text = page.text()
        shot = page.screenshot(SCREENSHOTS / "airflow-dags.png")
    for dag_id in ("data_ingestion", "feature_materialization", "training", "batch_serving"):
        assert dag_id in text, f"{dag_id} missing from the DAG list"
    assert "Import Error" not in text, "the DAG list shows import errors"
    print(f"screenshots: {shot.parent}")


def test_prometheus_finds_each_replica_of_the_scaled_services_through_dockers_dns(docker_platform):
    def replicated_jobs_up():
        _, body = get_json(host_url("PROMETHEUS_PORT", "/api/v1/targets"))
        health: dict[str, list[str]] = {}
        for target in body["data"]["activeTargets"]:
            health.setdefault(target["labels"]["job"], []).append(target["health"])
        jobs = ("serving", "stream-consumer")
        return all(health.get(job) and set(health[job]) == {"up"} for job in jobs) and health

    eventually(replicated_jobs_up, timeout=120, interval=5, what="the serving and stream-consumer targets up")


def test_drifted_scenario_puts_the_drift_alert_pending_in_the_containerised_prometheus(docker_platform):
    docker_sh("scenario", "--drifted", "--requests", "300", "--rate", "30", timeout=900)

    def alert_state():
        _, body = get_json(host_url("PROMETHEUS_PORT", "/api/v1/alerts"))
        states = {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}
        return states.get("DataDriftDetected") in ("pending", "firing") and states

    eventually(alert_state, timeout=300, interval=5, what="DataDriftDetected pending in Prometheus")
    with urllib.request.urlopen(host_url("MONITORING_SERVICE_PORT", "/reports/"), timeout=15) as response:
        assert response.status == 200 and b".html" in response.read(), "the monitoring service wrote no report"


def test_a_worse_challenger_canaried_in_containers_is_rolled_back_with_its_evidence(docker_platform):
    result = docker_sh("scenario", "--rollout", "worse", "--rate", "60", "--timeout", "600", timeout=900)
    summary = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert (summary["decision"], summary["decided_by"]) == ("rollback", "monitoring-service"), result.stdout
    status = json.loads(docker_sh("rollout", "status", "--json").stdout)
    assert status["mode"] == "champion" and status["aliases"]["champion"] == summary["champion_version"]
    last = status["events"][0]
    assert (last["action"], last["rollout_id"]) == ("rollback", summary["rollout_id"]) and last["evidence"]


def test_restart_of_a_stack_with_one_shots_reports_success(docker_platform):
    for stack in ("feast", "serving"):
        result = docker_sh(stack, "restart", timeout=1200)
        assert result.returncode == 0
    assert compose_ps()["serving"]["Health"] == "healthy"


def test_one_stack_down_stops_only_what_it_owns_and_keeps_what_others_use(docker_platform):
    result = docker_sh("mlflow", "down", timeout=600)
    states = compose_ps()
    assert "mlflow" not in states or states["mlflow"]["State"] != "running"
    assert states["postgres"]["State"] == "running", "mlflow down stopped the PostgreSQL that Airflow uses"
    assert states["airflow-api-server"]["Health"] == "healthy"
    result = docker_sh("feast", "down", timeout=600)
    assert "keeping postgres" in result.stdout and "airflow-scheduler" in result.stdout
    assert compose_ps()["postgres"]["State"] == "running"


def test_all_down_with_volumes_leaves_no_container_network_or_volume(docker_platform):
    docker_sh("all", "down", "--volumes", timeout=900)
    assert project_containers() == []
    networks = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert PROJECT not in networks
    volumes = docker("volume", "ls", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format",
                     "{{.Name}}").stdout.split()
    assert volumes == []
    if os.environ.get("TEST_KEEP_PLATFORM") == "1":
        pytest.skip("TEST_KEEP_PLATFORM=1 is ignored here: this test takes the platform down")
    assert Path(REPO_ROOT / ".env").is_file(), ".env (the secrets) stays"
