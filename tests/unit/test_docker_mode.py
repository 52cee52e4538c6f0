"""Docker-mode control without an engine: ownership of services, what `down` keeps, which images are
pulled, the mode reaching every process run.sh starts, and MLflow's allowed hosts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mlops_platform import compose_project, docker_images
from mlops_platform.services import BY_NAME, python_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def project() -> dict[str, compose_project.ComposeService]:
    """The compose file as `docker compose config` would give it, near enough for these checks."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = {}
    for name, spec in raw["services"].items():
        volumes = [{"type": "volume", "source": v.split(":")[0]} for v in spec.get("volumes", [])
                   if isinstance(v, str) and not v.startswith(".")]
        services[name] = {**spec, "volumes": volumes,
                          "depends_on": spec.get("depends_on", {}) if isinstance(spec.get("depends_on"), dict)
                          else {d: {} for d in spec.get("depends_on", [])}}
        if isinstance(spec.get("build"), dict):
            context = str(ROOT / spec["build"].get("context", "."))
            services[name]["build"] = {**spec["build"], "args": {}, "context": context}
    return compose_project.load_project({"services": services})


def test_a_service_belongs_to_the_stack_local_mode_gives_it(project):
    for name, service in project.items():
        known = BY_NAME.get(name) or BY_NAME.get({"feast-init": "feast-apply"}.get(name, ""))
        if known:
            assert service.stack == known.stack, f"{name}: compose's first profile {service.stack} != {known.stack}"


def test_shared_services_stay_while_another_stack_needs_them(project):
    # `mlflow down` must not take Airflow's PostgreSQL with it: postgres belongs to feast and airflow needs it.
    assert project["postgres"].stack == "feast" and project["mlflow"].stack == "mlflow"
    needed_by_airflow = compose_project.with_dependencies(project, ["airflow-scheduler"])
    assert "postgres" in needed_by_airflow and "mlflow" not in needed_by_airflow
    assert compose_project.dependents(project, {"elasticsearch"}) >= {"kibana", "filebeat", "elk-setup", "kibana-setup"}


def test_images_we_build_need_only_the_base_image_and_the_rest_are_named(project):
    base = "debian:bookworm-slim"
    for name in ("postgres", "redis", "kafka", "prometheus", "node-exporter", "mlflow", "serving"):
        assert docker_images.external_images(project[name]) == [base], name
    assert docker_images.external_images(project["jenkins"])[0].startswith("jenkins/jenkins:")
    assert docker_images.external_images(project["grafana"])[0].startswith("grafana/grafana:")


def test_a_service_that_cannot_start_names_the_dependency_it_waits_for(monkeypatch):
    def service(name, image, *depends_on):
        return compose_project.ComposeService(name, ("elk",), image, None, depends_on, False, (), False)

    project = {"search": service("search", "upstream/search:9"), "ui": service("ui", "ours/ui:1", "search"),
               "ui-setup": service("ui-setup", "ours/ui:1", "ui")}
    monkeypatch.setattr(docker_images, "image_present", lambda image: image.startswith("ours/"))
    monkeypatch.setattr(docker_images, "pull", lambda image: f"{image} cannot be pulled: no such host")
    blocked = docker_images.unavailable_images(project, set(project))
    assert blocked["search"] == "upstream/search:9 cannot be pulled: no such host"
    assert blocked["ui"] == "needs search, which cannot start"
    assert blocked["ui-setup"] == "needs ui, which cannot start"


def test_dockerfile_bases_skip_stages_and_expand_build_args(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE} AS jre\nFROM jre AS jars\n"
                          "FROM jre\nFROM other/image:1.2\n")
    assert docker_images.dockerfile_bases(dockerfile, {}) == ["debian:bookworm-slim", "other/image:1.2"]
    assert docker_images.dockerfile_bases(dockerfile, {"BASE_IMAGE": "mirror/debian:12"})[0] == "mirror/debian:12"


def test_compose_ps_output_is_read_in_both_formats():
    line = '{"Service": "redis", "State": "running"}'
    assert compose_project.parse_json_lines(f"{line}\n{line}\n")[0]["Service"] == "redis"
    assert compose_project.parse_json_lines(f"[{line}]")[0]["State"] == "running"
    assert compose_project.parse_json_lines("") == []


def test_builds_trust_the_host_ca_bundle_unless_one_is_given(monkeypatch, tmp_path):
    monkeypatch.delenv("BUILD_CA_BUNDLE", raising=False)
    monkeypatch.setattr(compose_project, "ENV_FILE", tmp_path / ".env")
    expected = "/etc/ssl/certs/ca-certificates.crt" if Path("/etc/ssl/certs/ca-certificates.crt").is_file() \
        else str(compose_project.NO_EXTRA_CA)
    assert compose_project.compose_env()["BUILD_CA_BUNDLE"] == expected
    (tmp_path / ".env").write_text("BUILD_CA_BUNDLE=/srv/proxy-ca.pem\n")
    assert compose_project.compose_env()["BUILD_CA_BUNDLE"] == "/srv/proxy-ca.pem"
    monkeypatch.setenv("BUILD_CA_BUNDLE", "/tmp/mine.pem")
    assert compose_project.compose_env()["BUILD_CA_BUNDLE"] == "/tmp/mine.pem"


def test_mlflow_accepts_the_host_through_any_published_port(make_settings):
    from mlflow.server.security_utils import is_allowed_host_header

    settings = make_settings(MLFLOW_HOST="mlflow", LISTEN_ADDRESS="0.0.0.0", MLFLOW_PORT="5000")
    argv = python_command("mlflow", settings).argv
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    for host in ("127.0.0.1:15000", "localhost:5000", "mlflow:5000", "127.0.0.1"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "evil.example:5000")


def fake_docker(tmp_path: Path) -> dict[str, str]:
    """A `docker` that answers `info` and records the PLATFORM_MODE each compose call sees."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "modes"
    (bin_dir / "docker").write_text(f"""#!/bin/sh
if [ "$1" = compose ]; then
  echo "${{PLATFORM_MODE:-unset}}" >> {record}
  case "$*" in *config*) echo '{{"services": {{}}}}' ;; esac
fi
exit 0
""")
    (bin_dir / "docker").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "RECORD": str(record)}


def test_the_mode_run_sh_picks_reaches_every_process_it_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PLATFORM_MODE"} | fake_docker(tmp_path)
    result = subprocess.run(["bash", str(ROOT / "run.sh"), "feast", "status"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "mode: docker (`docker info` answers)" in result.stdout, result.stdout + result.stderr
    modes = Path(env["RECORD"]).read_text().split()
    assert modes and set(modes) == {"docker"}, f"compose ran with PLATFORM_MODE={modes} after auto picked docker"


def test_auto_mode_needs_no_timeout_command(tmp_path):
    # macOS has no coreutils `timeout`: auto mode must decide without it.
    env = {k: v for k, v in os.environ.items() if k != "PLATFORM_MODE"} | fake_docker(tmp_path)
    bin_dir = Path(env["PATH"].split(":")[0])
    (bin_dir / "timeout").write_text("#!/bin/sh\necho 'timeout: command not found' >&2\nexit 127\n")
    (bin_dir / "timeout").chmod(0o755)
    result = subprocess.run(["bash", str(ROOT / "run.sh"), "feast", "status"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "timeout: command not found" not in result.stderr
    assert "mode: docker (`docker info` answers)" in result.stdout, result.stdout + result.stderr


def test_urls_name_every_address_with_its_login_and_the_serving_token(tmp_path):
    env = {**os.environ, "SERVING_API_TOKEN": "token-123", "GRAFANA_ADMIN_PASSWORD": "g-pass",
           "JENKINS_ADMIN_PASSWORD": "j-pass", "ELASTIC_PASSWORD": "e-pass", "GRAFANA_PORT": "3333"}
    out = subprocess.run(["bash", str(ROOT / "run.sh"), "urls"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ")}
    assert "http://127.0.0.1:3333" in lines["Grafana"] and "g-pass" in lines["Grafana"]
    assert "j-pass" in lines["Jenkins"] and "e-pass" in lines["Kibana"]
    assert "token-123" in lines["Serving"]


def test_setup_for_docker_as_a_normal_user_prints_the_commands_instead_of_running_them(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 1\n")  # a client, no engine
    for tool in ("id", "docker"):
        (bin_dir / tool).chmod(0o755)
    path = ":".join(p for p in os.environ["PATH"].split(":") if not Path(p, "dockerd").exists())
    env = {**os.environ, "PATH": f"{bin_dir}:{path}"}
    result = subprocess.run(["bash", str(ROOT / "run.sh"), "setup", "--mode", "docker"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "sudo apt-get install -y docker.io" in result.stderr, result.stderr


def test_a_service_configured_with_no_replicas_is_known_as_such():
    """`up` leaves such a service at 0 (naming it to `compose up` would start one): the count must be read."""
    config = {"services": {
        "airflow-worker": {"profiles": ["airflow"], "image": "w", "deploy": {"replicas": 0}},
        "serving": {"profiles": ["serving"], "image": "s", "deploy": {"replicas": 2}},
        "redis": {"profiles": ["feast"], "image": "r"},
    }}
    services = compose_project.load_project(config)
    assert {name: svc.replicas for name, svc in services.items()} == {"airflow-worker": 0, "serving": 2,
                                                                     "redis": None}
