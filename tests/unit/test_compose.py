"""Static checks of docker-compose.yml as a whole: the Compose Specification, stacks, images, start-up order,
commands and configuration of our services, ports and network.

The file is validated against the Compose Specification's JSON schema (tests/data/compose-spec.json: the
compose-spec project's schema/compose-spec.json, the copy that Docker Compose v2.40.3 validates with).
Secrets: test_compose_secrets.py; volumes and mounted configuration: test_compose_mounts.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mlops_platform import health, services
from mlops_platform.settings import load_settings, setting_variables
from tests.compose_file import (
    COMPOSE_FILE,
    COMPOSE_NAME,
    JENKINS_DIR,
    PYTHON_DOCKERFILE,
    ROOT,
    SCHEMA_FILE,
    STACKS,
    STACKS_NOT_YET_IN_COMPOSE,
    MissingVariable,
    dockerfile_targets,
    env_for_compose,
    environment,
    generated_secrets,
    interpolate_tree,
    is_one_shot,
    python_services,
    read_env_example,
)


# ---------------------------------------------------------------------------------------------
# The file as a whole
# ---------------------------------------------------------------------------------------------
def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(
        f"  {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors
    )


def test_every_secret_must_come_from_env_or_compose_refuses_to_start(raw: dict[str, Any]) -> None:
    # With a .env that lacks a secret, compose must stop with a message rather than start a
    # service with an empty password.
    for key in sorted(generated_secrets()):
        env = env_for_compose()
        del env[key]
        with pytest.raises(MissingVariable):
            interpolate_tree(raw, env)


def test_every_service_is_in_a_stack_profile(compose: dict[str, Any]) -> None:
    used: set[str] = set()
    for name, service in compose["services"].items():
        profiles = set(service.get("profiles") or [])
        assert profiles, f"{name} has no profile: it would start with every stack"
        assert profiles <= STACKS | {"demo"}, f"{name} has profiles {sorted(profiles - STACKS)} that are not stacks"
        used |= profiles
    missing = STACKS - STACKS_NOT_YET_IN_COMPOSE - used
    assert not missing, f"stacks with no service in docker-compose.yml: {sorted(missing)}"


def test_compose_services_match_the_platform_service_table(compose: dict[str, Any]) -> None:
    # mlops_platform/services.py drives local mode; both modes must agree on stacks and start order.
    for svc in services.SERVICES:
        name = COMPOSE_NAME.get(svc.name, svc.name)
        if svc.stack in STACKS_NOT_YET_IN_COMPOSE:
            continue
        assert name in compose["services"], f"{svc.name} ({svc.stack}) is missing from docker-compose.yml"
        service = compose["services"][name]
        assert svc.stack in service.get("profiles", []), f"{name} is not in the {svc.stack} profile"
        assert is_one_shot(service) == svc.one_shot, f"{name}: one-shot in one mode but not the other"
        waits_for = set(service.get("depends_on") or {})
        for required in svc.requires:
            assert COMPOSE_NAME.get(required, required) in waits_for, f"{name} does not wait for {required}"


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    return name, tag


def test_every_image_is_pinned(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "image" in service, f"{name} has no image: a built image needs an explicit tag"
        image_name, tag = split_image(service["image"])
        assert tag and tag != "latest", f"{name}: image {service['image']!r} is not pinned to a version"
        if "build" in service:
            assert image_name.startswith("ride-mlops/"), f"{name}: built image should be ride-mlops/<name>"
            assert "${PLATFORM_VERSION:-" in raw["services"][name]["image"], (
                f"{name}: built image must be tagged with ${{PLATFORM_VERSION}}"
            )
        else:
            assert re.search(r"\d+\.\d+", tag), f"{name}: tag {tag!r} of {image_name} is not a specific version"


OUR_DOCKERFILES = [PYTHON_DOCKERFILE, *(ROOT / "platform" / d / "Dockerfile" for d in ("postgres", "redis",
                                                                                      "prometheus", "kafka",
                                                                                      "haproxy"))]


@pytest.mark.parametrize("dockerfile", OUR_DOCKERFILES, ids=lambda p: p.parent.name)
def test_our_images_build_from_the_one_debian_base(dockerfile: Path) -> None:
    # Every image we build starts from BASE_IMAGE (debootstrap can make it where no registry answers).
    text = dockerfile.read_text()
    assert re.search(r"(?m)^ARG BASE_IMAGE=debian:bookworm-slim$", text), f"{dockerfile}: ARG BASE_IMAGE"
    stages = set(re.findall(r"(?mi)^FROM\s+\S+\s+AS\s+(\S+)", text))
    for base in re.findall(r"(?m)^FROM\s+(\S+)", text):
        assert base == "${BASE_IMAGE}" or base in stages, f"{dockerfile}: FROM {base} is neither BASE_IMAGE nor a stage"
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile}: the service must not run as root"


def test_downloads_trust_the_build_ca_secret_and_never_keep_it(compose: dict[str, Any]) -> None:
    assert compose["secrets"]["build-ca"]["file"].endswith("no-extra-ca.pem") or "BUILD_CA_BUNDLE" in str(
        compose["secrets"]["build-ca"])
    for dockerfile in (PYTHON_DOCKERFILE, ROOT / "platform" / "kafka" / "Dockerfile"):
        text = dockerfile.read_text()
        assert "--mount=type=secret,id=build-ca" in text, f"{dockerfile} downloads without the build-ca secret"
        assert not re.search(r"(?m)^(COPY|ADD)\b.*ca", text.replace("kafka-libs", "")), (
            f"{dockerfile} copies a CA file into a layer")
    for name, service in compose["services"].items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("dockerfile", "Dockerfile") in ("platform/docker/Dockerfile",) \
                or name == "kafka":
            assert "build-ca" in build.get("secrets", []), f"{name} builds without the build-ca secret"


def test_only_upstream_only_software_is_pulled(compose: dict[str, Any]) -> None:
    pulled = {name: s["image"] for name, s in compose["services"].items() if not s.get("build")}
    assert {image.split(":")[0].rsplit("/", 1)[-1] for image in pulled.values()} <= {
        "grafana", "elasticsearch", "kibana", "filebeat"}, pulled
    stale = {"grafana/grafana:11.", "elasticsearch:8.", "kibana:8.", "filebeat:8."}
    assert not [image for image in pulled.values() for old in stale if old in image], pulled
    jenkins_from = re.findall(r"(?m)^FROM\s+(\S+)", (JENKINS_DIR / "Dockerfile").read_text())
    assert jenkins_from and all(re.fullmatch(r"jenkins/jenkins:2\.(\d+)\.\d+-lts-jdk21", f) for f in jenkins_from), (
        f"Jenkins base image must be a pinned, maintained LTS: {jenkins_from}"
    )
    assert int(re.search(r"2\.(\d+)\.", jenkins_from[0])[1]) > 528, "Jenkins 2.528.x is end-of-life"


def test_python_image_installs_the_same_lock_as_local_mode() -> None:
    dockerfile = PYTHON_DOCKERFILE.read_text()
    run_sh_uv = re.search(r'(?m)^UV_VERSION="([^"]+)"', (ROOT / "run.sh").read_text())
    image_uv = re.search(r"(?m)^ARG UV_VERSION=(\S+)$", dockerfile)
    assert run_sh_uv and image_uv and run_sh_uv[1] == image_uv[1], (
        f"uv in the image ({image_uv and image_uv[1]}) differs from run.sh ({run_sh_uv and run_sh_uv[1]})"
    )
    assert re.search(r"COPY\s+pyproject\.toml\s+uv\.lock\s", dockerfile)
    assert re.search(r"uv sync --locked --no-dev --no-install-project --compile-bytecode", dockerfile), (
        "the image must install uv.lock as is")
    users = re.findall(r"(?m)^USER\s+(\S+)", dockerfile)
    assert users and users[-1] not in ("root", "0"), "our services must not run as root"
    for package in ("mlops_platform", "data_pipeline", "training_pipeline", "model_serving", "feast_repo",
                    "airflow", "monitoring"):
        assert re.search(rf"(?m)^COPY\s+{package}\s", dockerfile), (
            f"the image does not copy {package}/"
        )
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for pattern in (".env", ".venv", ".git", ".platform*", "**/target", "**/__pycache__"):
        assert pattern in ignored, f".dockerignore must exclude {pattern}"


def test_built_services_use_existing_dockerfile_targets(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if not build:
            continue
        build = {"context": build} if isinstance(build, str) else build
        dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile.relative_to(ROOT)} does not exist"
        if "target" in build:
            assert build["target"] in dockerfile_targets(dockerfile), (
                f"{name}: target {build['target']!r} is not a stage of {dockerfile.relative_to(ROOT)}"
            )


# ---------------------------------------------------------------------------------------------
# Health and start-up order
# ---------------------------------------------------------------------------------------------
def test_long_running_services_have_a_healthcheck_and_one_shots_none(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck") or {}
        if is_one_shot(service):
            assert not check, f"{name} runs once (restart: no) and must not have a healthcheck"
            continue
        test = check.get("test")
        assert not check.get("disable") and test and test not in (["NONE"], "NONE"), (
            f"{name} runs for good but has no healthcheck"
        )
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1 and all(test[1:]), f"{name}: bad test {test}"


def test_dependencies_wait_for_health_or_completion(compose: dict[str, Any]) -> None:
    all_services = compose["services"]
    for name, service in all_services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on must use the long form with a condition"
        for target, spec in depends_on.items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            expected = ("service_completed_successfully" if is_one_shot(all_services[target])
                        else "service_healthy")
            assert (spec or {}).get("condition") == expected, (
                f"{name} -> {target}: condition must be {expected}, got {(spec or {}).get('condition')}"
            )
            if expected == "service_healthy":
                assert all_services[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"


def test_dependencies_are_in_every_profile_of_their_dependents(compose: dict[str, Any]) -> None:
    # `docker compose --profile mlflow up` only starts services of that profile: postgres must be in it.
    all_services = compose["services"]
    for name, service in all_services.items():
        for target in service.get("depends_on") or {}:
            missing = set(service.get("profiles", [])) - set(all_services[target].get("profiles", []))
            assert not missing, f"{name} needs {target}, which is not in profile(s) {sorted(missing)}"


def test_our_services_run_exactly_the_local_mode_commands(compose: dict[str, Any]) -> None:
    expected_names = set()
    for svc in python_services():
        name = COMPOSE_NAME.get(svc.name, svc.name)
        expected_names.add(name)
        service = compose["services"][name]
        assert service.get("command") == ["python", "-m", "mlops_platform.exec", svc.name], (
            f"{name} must run `python -m mlops_platform.exec {svc.name}`, got {service.get('command')}"
        )
        if svc.one_shot:
            assert is_one_shot(service), f"{name} is a one-shot: restart must be \"no\""
        else:
            assert svc.name in health.CHECKS, f"mlops_platform.health has no check for {svc.name}"
            assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "mlops_platform.health", svc.name], (
                f"{name} must be checked with `python -m mlops_platform.health {svc.name}`"
            )
        build = service.get("build") or {}
        assert build.get("dockerfile") == "platform/docker/Dockerfile", f"{name} must use our Python image"
    built_with_python_image = {
        name for name, s in compose["services"].items()
        if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "platform/docker/Dockerfile"
    } - {"demo"}
    assert built_with_python_image == expected_names


def test_the_python_image_holds_every_package_our_services_run() -> None:
    """Each of our top-level packages (but tests and benchmarks) is copied into the image: a container
    whose command imports a package left out would only fail when it starts."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    copied = {re.sub(r"\[(\w)\]", r"\1", source) for source in
              re.findall(r"(?m)^COPY\s+(?!--)(\S+)\s+\./\S+/$", PYTHON_DOCKERFILE.read_text())}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"airflow", "feast_repo", "monitoring"} <= copied  # DAGs, feature repo, rules and dashboards


def settings_variables() -> set[str]:
    """Every variable mlops_platform.settings reads."""
    return set(setting_variables())


# A replica's own health check asks the replica, not the balancer every other service goes through.
SELF_ADDRESSED = {("serving", "SERVING_HOST")}


def test_our_services_get_the_whole_platform_configuration(compose: dict[str, Any]) -> None:
    service_names = set(compose["services"]) | {"serving"}
    read = settings_variables()
    assert {"POSTGRES_HOST", "POSTGRES_PASSWORD", "LISTEN_ADDRESS"} <= read
    for svc in python_services():
        name = COMPOSE_NAME.get(svc.name, svc.name)
        env = environment(compose["services"][name])
        missing = read - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}: settings would fall back to local-mode values"
        assert env["PLATFORM_MODE"] == "docker"
        assert env["PLATFORM_HOME"] == "/var/lib/platform"
        assert env["LISTEN_ADDRESS"] == "0.0.0.0", f"{name} must listen on every interface of its network"
        for key, value in env.items():
            if key.endswith("_HOST") and (name, key) not in SELF_ADDRESSED:
                assert value in service_names, f"{name}: {key}={value} is not a compose service name"
        # The container's settings load from its environment alone (no .env inside the image).
        loaded = load_settings(environ={k: str(v) for k, v in env.items()}, env_file=ROOT / "no-such.env")
        assert loaded.postgres_host == "postgres" and loaded.mlflow_tracking_uri == "http://mlflow:5000"


def test_container_side_ports_are_the_ones_services_listen_on(compose: dict[str, Any], raw: dict[str, Any]) -> None:
    # Inside the network the container port counts, not the host port chosen in .env.
    env_of_ours = environment(compose["services"]["mlflow"])
    checked = 0
    for name, service in raw["services"].items():
        for port in service.get("ports") or []:
            match = re.fullmatch(r"\$\{BIND_ADDRESS:-[^}]*\}:\$\{([A-Z_]+_PORT):-\d+\}:(\d+)", str(port))
            if not match:
                continue
            variable, container_port = match[1], match[2]
            if name == "kafka":  # containers use the internal listener, the host one is separate
                listeners = environment(compose["services"]["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
                container_port = re.search(r"PLAINTEXT://kafka:(\d+)", listeners)[1]
            assert env_of_ours.get(variable) == container_port, (
                f"{variable} in our services' environment is {env_of_ours.get(variable)}, "
                f"but {name} listens on {container_port} in its container"
            )
            checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------------------------
# Network exposure
# ---------------------------------------------------------------------------------------------
def test_host_ports_bind_loopback_with_the_env_example_defaults(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    example = read_env_example()
    for name, service in raw["services"].items():
        for port in service.get("ports") or []:
            assert isinstance(port, str), f"{name}: use the short syntax with ${{BIND_ADDRESS}} for ports"
            match = re.fullmatch(r"\$\{BIND_ADDRESS:-([^}]*)\}:\$\{([A-Z_]+_PORT):-(\d+)\}:(\d+)", port)
            assert match, f"{name}: port {port!r} must be \"${{BIND_ADDRESS:-127.0.0.1}}:${{X_PORT:-n}}:n\""
            assert match[1] == "127.0.0.1", f"{name}: the BIND_ADDRESS default must be 127.0.0.1"
            assert example.get(match[2]) == match[3], (
                f"{name}: default of {match[2]} is {match[3]}, .env.example says {example.get(match[2])}"
            )
        for port in compose["services"][name].get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from outside this machine"


def test_host_ports_are_distinct(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            host_port = str(port).split(":")[1]
            assert host_port not in seen, f"{name} and {seen[host_port]} both publish host port {host_port}"
            seen[host_port] = name


def test_services_share_one_network_and_reach_each_other_by_name(raw: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    assert "host.docker.internal" not in text and "host-gateway" not in text
    networks = list((raw.get("networks") or {}).keys())
    assert len(networks) == 1, f"expected one user-defined network, found {networks}"
    for name, service in raw["services"].items():
        assert "network_mode" not in service, f"{name} must not leave the platform network"
        assert service.get("networks") == networks, f"{name} must be on the {networks[0]} network only"
        for key, value in environment(service).items():
            assert "localhost" not in str(value) or key.endswith("_OPTS"), (
                f"{name}: {key} points at localhost, which inside a container is the container itself"
            )
