"""The front door's grammar, mode choice, .env creation, and what local mode derives from settings."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mlops_platform import local_prepare
from mlops_platform.services import SERVICES, STACKS, airflow_env, kafka_properties
from mlops_platform.settings import REPO_ROOT, read_env_file


def run(*args: str, cwd: Path = REPO_ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(cwd / "run.sh"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_help_lists_every_stack_and_verb():
    result = run("help")
    assert result.returncode == 0
    for word in (*STACKS, "up", "down", "restart", "status", "logs", "--volumes", "setup", "test", "demo"):
        assert word in result.stdout


@pytest.mark.parametrize("args", [("nosuchstack", "up"), ("feast", "explode"), ("feast",), ()])
def test_unknown_stack_or_verb_exits_nonzero_with_a_usage_line(args):
    result = run(*args)
    assert result.returncode != 0
    assert "usage: bash run.sh" in result.stderr


def test_volumes_only_goes_with_down():
    result = run("feast", "up", "--volumes", env={"PLATFORM_MODE": "local"})
    assert result.returncode != 0
    assert "--volumes goes with down" in result.stderr


def test_env_file_is_created_with_random_secrets_and_private_permissions(tmp_path: Path):
    shutil.copy(REPO_ROOT / "run.sh", tmp_path / "run.sh")
    shutil.copy(REPO_ROOT / ".env.example", tmp_path / ".env.example")
    result = run("feast", "status", "--mode", "docker", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    created = read_env_file(tmp_path / ".env")
    assert "created .env with random secrets" in result.stdout
    assert not any(v.startswith("__GENERATE") for v in created.values())
    assert len(created["POSTGRES_PASSWORD"]) >= 32  # Kibana needs 32-character keys
    assert created["POSTGRES_PASSWORD"] != created["REDIS_PASSWORD"]
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    before = (tmp_path / ".env").read_text()
    run("feast", "status", "--mode", "docker", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert (tmp_path / ".env").read_text() == before, "a second run must keep the secrets"


def test_mode_is_local_when_no_docker_engine_answers_and_can_be_forced():
    fake_bin = REPO_ROOT / ".platform-test" / "fake-bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    (fake_bin / "docker").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "docker").chmod(0o755)
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "PLATFORM_MODE": "auto"}
    assert "mode: local (no Docker engine answers `docker info`)" in run("feast", "status", env=env).stdout
    forced = run("feast", "status", "--mode", "docker", env=env)
    assert "mode: docker (forced by --mode)" in forced.stdout


def test_jenkinsfile_calls_only_run_sh_verbs_that_exist():
    jenkinsfile = (REPO_ROOT / "Jenkinsfile").read_text()
    steps = re.findall(r"sh\s+['\"]([^'\"]+)['\"]", jenkinsfile)
    assert steps, "the Jenkinsfile has no sh steps"
    help_text = run("help").stdout
    for step in steps:
        match = re.match(r"bash run\.sh (\S+)", step)
        assert match, f"Jenkins step does not call run.sh: {step!r}"
        assert re.search(rf"bash run\.sh {re.escape(match.group(1))}\b", help_text), step


def test_ci_runs_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert "bash run.sh test" in ci
    assert "bash run.sh test" in readme.split("\n## ", 1)[0]
    assert "bash run.sh demo" in readme.split("\n## ", 1)[0]


def test_every_long_running_local_service_has_a_health_check():
    from mlops_platform import health

    for service in SERVICES:
        if service.docker_only or service.one_shot:
            continue
        assert service.name in health.CHECKS, service.name


def test_derived_configuration_follows_the_settings(make_settings):
    settings = make_settings(AIRFLOW_PORT="18080", KAFKA_PORT="19092", PROMETHEUS_PORT="19090", MLFLOW_PORT="15000")
    env = airflow_env(settings)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@127.0.0.1:5432/airflow")
    assert env["AIRFLOW__API__PORT"] == "18080"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert "listeners=PLAINTEXT://127.0.0.1:19092," in kafka_properties(settings)
    rendered = local_prepare.render_prometheus_config(settings)
    assert "127.0.0.1:19090" in rendered and "prometheus:9090" not in rendered


def test_env_file_gains_variables_added_to_env_example_and_keeps_the_rest(tmp_path: Path):
    shutil.copy(REPO_ROOT / "run.sh", tmp_path / "run.sh")
    (tmp_path / ".env.example").write_text("OLD=1\nSECRET=__GENERATE__\n")
    run("feast", "status", "--mode", "docker", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    first = read_env_file(tmp_path / ".env")
    (tmp_path / ".env.example").write_text("OLD=1\nSECRET=__GENERATE__\nNEW_TOKEN=__GENERATE__\nNEW_PORT=7\n")
    result = run("feast", "status", "--mode", "docker", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    second = read_env_file(tmp_path / ".env")
    assert "added to .env: NEW_TOKEN, NEW_PORT" in result.stdout
    assert second["SECRET"] == first["SECRET"]
    assert second["NEW_PORT"] == "7" and len(second["NEW_TOKEN"]) >= 32


def test_local_status_of_a_stopped_platform_shows_restarts_and_starts_no_supervisor(tmp_path: Path):
    result = run("feast", "status", env={"PLATFORM_MODE": "local", "PLATFORM_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("SERVICE "))
    assert header.split() == ["SERVICE", "STACK", "MODE", "URL", "RESTARTS", "HEALTH"]
    assert re.search(r"^redis\s.*\s0\s+stopped$", result.stdout, re.MULTILINE), result.stdout
    assert not (tmp_path / "run" / "supervisor" / "supervisord.pid").exists()
