"""Runs last (file order): `all down` stops every process of the session's platform and frees its ports."""

from __future__ import annotations

from pathlib import Path

from mlops_platform import local
from mlops_platform.services import SERVICES, pid_file
from tests.conftest import TEST_HOME, run_sh


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and not local._is_zombie(int(entry.name)):
                found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def test_deploy_rolls_serving_onto_the_checkout_and_keeps_the_platform_healthy(platform_up, settings):
    before = local.read_pid(settings, "serving")
    result = run_sh("deploy")
    for step in ("[deploy] feature repo", "[deploy] DAGs: reserializing", "[deploy] Prometheus", "[deploy] serving"):
        assert step in result.stdout, result.stdout
    after = local.read_pid(settings, "serving")
    assert after is not None and after != before, "the serving API was restarted on the new code"
    assert "unhealthy" not in run_sh("all", "status").stdout


def test_all_down_leaves_no_process_and_no_open_port(platform_up, settings):
    groups = {}
    for service in SERVICES:
        path = pid_file(settings, service.name)
        if path.exists():
            groups[service.name] = int(path.read_text())
    assert {"postgres", "redis", "mlflow", "airflow-api-server", "airflow-scheduler", "kafka",
            "prometheus"} <= groups.keys()

    run_sh("all", "down")

    still_alive = [name for name, pgid in groups.items() if local.group_alive(pgid)]
    assert still_alive == []
    assert processes_mentioning(str(TEST_HOME)) == []
    for service in SERVICES:
        for port in local.ports_of(service, settings):
            assert not local.port_in_use(settings.listen_address, port), f"{service.name} port {port}"
    status = run_sh("all", "status")
    assert "healthy:" not in status.stdout.replace("unhealthy", "")
