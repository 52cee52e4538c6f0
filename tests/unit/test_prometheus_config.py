"""Prometheus's configuration and alert rules (monitoring/prometheus/), in both run modes.

promtool (Debian package `prometheus`, installed by `bash run.sh setup`) checks the docker-mode file and
the file local mode renders from it, checks the rules, and runs the rules' unit tests
(monitoring/prometheus/tests/*.yml); every alert must have a test where it fires and one where it
does not.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_platform.errors import PlatformError
from mlops_platform.local_prepare import (
    drop_docker_only_blocks,
    prepare_prometheus,
    render_prometheus_config,
    scrape_targets_file,
    write_scrape_targets,
)
from mlops_platform.services import BY_NAME
from tests.conftest import build_settings
from tests.monitoring_config import (
    PROMETHEUS_CONFIG,
    REPO_ROOT,
    RULE_TESTS_DIR,
    RULES_DIR,
    alert_rules,
    promtool,
    rule_files,
)

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SEVERITIES = {"critical", "warning", "info"}
# Scrape jobs and the compose service behind each; `docker_only` ones are not scraped in local mode.
EXPECTED_JOBS = {
    "prometheus": "prometheus", "serving": "serving", "stream-consumer": "stream-consumer",
    "prediction-logger": "prediction-logger", "monitoring": "monitoring-service", "mlflow": "mlflow",
    "node": "node-exporter",
}
DOCKER_ONLY_JOBS = {"node"}
REPLICATED_JOBS = ("serving", "stream-consumer")  # found by DNS in docker mode, one target per replica
PRIVATE_PORTS = {
    "PROMETHEUS_PORT": "26090", "MLFLOW_PORT": "26500", "SERVING_PORT": "26800", "STREAM_CONSUMER_PORT": "26108",
    "PREDICTION_LOGGER_PORT": "26109", "MONITORING_SERVICE_PORT": "26110",
}


def require_promtool() -> str:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `bash run.sh setup` installs it)")
    return tool


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([require_promtool(), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture()
def local_settings(tmp_path: Path):
    return build_settings(tmp_path / "home", **PRIVATE_PORTS)


def jobs_of(config: dict[str, Any]) -> dict[str, list[str]]:
    """Job -> its targets: static ones, `name:port` of a DNS lookup, `file:<path>` of a targets file."""
    jobs = {}
    for job in config["scrape_configs"]:
        targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        targets += [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]]
        targets += [f"file:{path}" for sd in job.get("file_sd_configs", []) for path in sd["files"]]
        jobs[job["job_name"]] = targets
    return jobs


# ---------------------------------------------------------------------------------------------
# Configuration, docker mode and local mode
# ---------------------------------------------------------------------------------------------
def test_promtool_accepts_the_docker_mode_configuration() -> None:
    run_promtool("check", "config", str(PROMETHEUS_CONFIG))


def test_promtool_accepts_the_configuration_local_mode_renders(local_settings) -> None:
    prepare_prometheus(local_settings)  # what `bash run.sh monitoring up` writes
    rendered = local_settings.home / "prometheus" / "prometheus.yml"
    assert (rendered.parent / "rules").is_dir(), "local mode must copy the rules next to the configuration"
    run_promtool("check", "config", str(rendered))


def test_docker_targets_are_compose_services_on_their_container_ports() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    ports = compose["serving"]["environment"]
    container_port = {"serving": ports["SERVING_PORT"], "stream-consumer": ports["STREAM_CONSUMER_PORT"],
                      "prediction-logger": ports["PREDICTION_LOGGER_PORT"], "mlflow": ports["MLFLOW_PORT"],
                      "prometheus": ports["PROMETHEUS_PORT"], "node-exporter": "9100",
                      "monitoring-service": ports.get("MONITORING_SERVICE_PORT", "9110")}
    jobs = jobs_of(yaml.safe_load(PROMETHEUS_CONFIG.read_text()))
    assert set(jobs) == set(EXPECTED_JOBS), f"scrape jobs {sorted(jobs)}"
    for job, service in EXPECTED_JOBS.items():
        assert jobs[job] == [f"{service}:{container_port[service]}"], f"job {job} scrapes {jobs[job]}"
    assert "node-exporter" in compose and compose["node-exporter"]["profiles"] == ["monitoring"]
    assert not compose["node-exporter"].get("privileged")
    assert compose["node-exporter"]["healthcheck"]["test"]
    assert compose["node-exporter"]["build"]["target"] == "node-exporter", "built from Debian's package"


def test_local_rendering_uses_the_settings_ports_and_drops_docker_only_jobs(local_settings) -> None:
    jobs = jobs_of(yaml.safe_load(render_prometheus_config(local_settings)))
    assert set(jobs) == set(EXPECTED_JOBS) - DOCKER_ONLY_JOBS
    expected = {
        "prometheus": PRIVATE_PORTS["PROMETHEUS_PORT"], "mlflow": PRIVATE_PORTS["MLFLOW_PORT"],
        "prediction-logger": PRIVATE_PORTS["PREDICTION_LOGGER_PORT"],
        "monitoring": PRIVATE_PORTS["MONITORING_SERVICE_PORT"],
    }
    for job, port in expected.items():
        assert jobs[job] == [f"127.0.0.1:{port}"], f"local mode scrapes {job} at {jobs[job]}"
    for job in REPLICATED_JOBS:
        assert jobs[job] == [f"file:targets/{job}.json"], f"local mode scrapes {job} at {jobs[job]}"
    for job, targets in jobs.items():
        for target in targets:
            assert target.startswith(("127.0.0.1:", "file:")), f"{job}: {target} is a compose name local mode " \
                                                                "cannot reach"


def test_each_replica_is_a_target_of_its_own_and_a_new_count_rewrites_the_targets(local_settings) -> None:
    prepare_prometheus(local_settings)
    serving_base, consumer_base = int(PRIVATE_PORTS["SERVING_PORT"]), int(PRIVATE_PORTS["STREAM_CONSUMER_PORT"])
    assert targets_in(local_settings, "serving") == [f"127.0.0.1:{serving_base + 100}"]  # HAProxy has the base
    assert targets_in(local_settings, "stream-consumer") == [f"127.0.0.1:{consumer_base}"]
    three = build_settings(local_settings.home, SERVING_REPLICAS="3", STREAM_CONSUMERS="2", **PRIVATE_PORTS)
    for job in REPLICATED_JOBS:
        write_scrape_targets(three, BY_NAME[job])
    assert targets_in(three, "serving") == [f"127.0.0.1:{serving_base + 100 * i}" for i in (1, 2, 3)]
    assert targets_in(three, "stream-consumer") == [f"127.0.0.1:{consumer_base + 100 * i}" for i in (0, 1)]


def targets_in(settings, job: str) -> list[str]:
    return [target for group in json.loads(scrape_targets_file(settings, job).read_text())
            for target in group["targets"]]


def test_docker_only_blocks_are_whole_lines_and_must_be_balanced() -> None:
    text = "a: 1\n  # docker-only begin: why\n  - job_name: x\n  # docker-only end\nb: 2\n"
    assert drop_docker_only_blocks(text) == "a: 1\nb: 2\n"
    assert drop_docker_only_blocks("# docker-only begin\nx\n# docker-only end") == ""
    # A mention inside a comment is not a marker.
    assert drop_docker_only_blocks("# see `# docker-only begin`\n") == "# see `# docker-only begin`\n"
    with pytest.raises(PlatformError):
        drop_docker_only_blocks("  # docker-only begin\n  - job_name: x\n")
    with pytest.raises(PlatformError):
        drop_docker_only_blocks("  - job_name: x\n  # docker-only end\n")


# ---------------------------------------------------------------------------------------------
# Alert rules
# ---------------------------------------------------------------------------------------------
def test_promtool_accepts_the_rules() -> None:
    files = [str(path) for path in rule_files()]
    assert files, f"no rule file in {RULES_DIR.relative_to(REPO_ROOT)}"
    run_promtool("check", "rules", *files)


def test_promtool_rule_unit_tests_pass() -> None:
    files = sorted(str(path) for path in RULE_TESTS_DIR.glob("*.yml"))
    assert files, f"no rule tests in {RULE_TESTS_DIR.relative_to(REPO_ROOT)}"
    run_promtool("test", "rules", *files)


def test_every_alert_has_a_duration_a_severity_and_annotations_with_its_value() -> None:
    alerts = alert_rules()
    names = [rule["alert"] for _, rule in alerts]
    assert len(names) == len(set(names)), "alert names must be unique"
    for path, rule in alerts:
        where = f"{path.name}: {rule['alert']}"
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{where} needs a `for:` duration"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{where}: severity must be one of {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), f"{where}: summary and description"
        assert "$value" in annotations["summary"] + annotations["description"], f"{where}: annotations omit the value"


def rule_test_cases() -> dict[str, dict[str, int]]:
    """alertname -> number of test cases where it fires and where it does not, over every rule test file."""
    cases: dict[str, dict[str, int]] = {}
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        document = yaml.safe_load(path.read_text())
        for rule_file in document.get("rule_files", []):
            assert (path.parent / rule_file).resolve().is_file(), f"{path.name} tests missing {rule_file}"
        for test in document.get("tests", []):
            for case in test.get("alert_rule_test", []):
                counts = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
                counts["firing" if case.get("exp_alerts") else "quiet"] += 1
    return cases


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = rule_test_cases()
    alerts = {rule["alert"] for _, rule in alert_rules()}
    for alert in sorted(alerts):
        counts = cases.get(alert, {"firing": 0, "quiet": 0})
        assert counts["firing"], f"{alert} has no promtool test where it fires"
        assert counts["quiet"], f"{alert} has no promtool test where it stays quiet"
    unknown = set(cases) - alerts
    assert not unknown, f"rule tests name alerts that do not exist: {sorted(unknown)}"


def test_every_rule_file_is_covered_by_a_test_file() -> None:
    tested = set()
    for path in RULE_TESTS_DIR.glob("*.yml"):
        tested |= {(path.parent / f).resolve() for f in yaml.safe_load(path.read_text()).get("rule_files", [])}
    for path in rule_files():
        assert path.resolve() in tested, f"{path.name} is loaded by no promtool test"
