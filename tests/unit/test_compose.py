"""Static checks of docker-compose.yml and the files it uses (Dockerfiles, Jenkins, Grafana, ELK).

No Docker engine is needed: the compose file is read as YAML, interpolated the way compose does it
with the values of .env.example, validated against the Compose Specification's JSON schema
(tests/data/compose-spec.json: the compose-spec project's schema/compose-spec.json, the copy that
Docker Compose v2.40.3 validates with) and then held to the platform's rules: pinned images,
healthchecks, ordered start-up, loopback ports, no secret literal, and the same commands as local
mode.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mlops_platform import health, services
from mlops_platform.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
PYTHON_DOCKERFILE = ROOT / "platform" / "docker" / "Dockerfile"
JENKINS_DIR = ROOT / "platform" / "jenkins"
JENKINSFILE = ROOT / "Jenkinsfile"
GRAFANA_DIR = ROOT / "monitoring" / "grafana"
FILEBEAT_CONFIG = ROOT / "monitoring" / "elk" / "filebeat.yml"

STACKS = set(services.STACKS)
# Stacks whose services are not in docker-compose.yml yet.
STACKS_NOT_YET_IN_COMPOSE = {"serving"}
RUN_SH_VERBS = {"setup", "lint", "test", "build", "deploy", "demo"}
# Our Python services whose compose service is named differently from the exec/health name.
COMPOSE_NAME = {"feast-apply": "feast-init"}
WEAK_PASSWORDS = {"admin", "administrator", "changeme", "change-me", "password", "passw0rd", "secret",
                  "root", "default", "test", "123456", "platform", "jenkins", "airflow", "elastic"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|(?:^|_|\.)(?:[A-Z]*KEY)$", re.IGNORECASE)
MOUNT_DATA_PATHS = {  # where each stateful service keeps what must survive `down`
    "postgres": "/var/lib/postgresql/data",
    "redis": "/data",
    "mlflow": "/var/lib/platform/data/mlflow-artifacts",
    "airflow-api-server": "/var/lib/platform/airflow",
    "airflow-scheduler": "/var/lib/platform/airflow",
    "kafka": "/var/lib/kafka/data",
    "prometheus": "/prometheus",
    "grafana": "/var/lib/grafana",
    "elasticsearch": "/usr/share/elasticsearch/data",
    "kibana": "/usr/share/kibana/data",
    "filebeat": "/usr/share/filebeat/data",
    "jenkins": "/var/jenkins_home",
}


# ---------------------------------------------------------------------------------------------
# Reading and interpolating the compose file as compose does
# ---------------------------------------------------------------------------------------------
def read_env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def generated_secrets() -> set[str]:
    """Variables that `run.sh` fills with a random secret (marked __GENERATE...__ in .env.example)."""
    return {key for key, value in read_env_example().items() if value.startswith("__GENERATE")}


def env_for_compose() -> dict[str, str]:
    """What compose sees with a fresh .env: .env.example, each secret a distinct dummy value."""
    env = read_env_example()
    for key in generated_secrets():
        env[key] = f"dummy-{key.lower()}-0123456789abcdefghijklmnopqrstuvwxyz"
    return env


class MissingVariable(Exception):
    pass


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
    ${VAR?err}, ${VAR:+alt}, ${VAR+alt}."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        is_set = name in env
        is_non_empty = bool(env.get(name))
        if op in (":-", "-"):
            return env[name] if (is_non_empty if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if not (is_non_empty if op == ":?" else is_set):
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if (is_non_empty if op == ":+" else is_set) else ""
        return env.get(name, "")

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yml as written (YAML anchors and merges resolved, ${...} untouched)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as compose sees it with a fresh .env."""
    return interpolate_tree(raw, env_for_compose())


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume entry, short or long syntax."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))
        else:
            parts = str(entry).split(":")
            if len(parts) == 1:  # anonymous volume
                yield "", parts[0], False
            else:
                yield parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def command_text(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value or "")


def python_services() -> list[services.Service]:
    """Our services that `python -m mlops_platform.exec` runs, in both modes."""
    return [s for s in services.SERVICES if s.launch == "python" and not s.docker_only]


def dockerfile_targets(path: Path) -> set[str]:
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$", path.read_text()))


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
                                                                                      "prometheus", "kafka"))]


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
    source = (ROOT / "mlops_platform" / "settings.py").read_text()
    return set(re.findall(r'(?:text|integer|port|env\.get)\(\s*"([A-Z0-9_]+)"', source))


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
            if key.endswith("_HOST"):
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


def test_no_privileged_container_and_no_docker_socket(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        assert not service.get("privileged"), f"{name} must not be privileged"
        assert service.get("pid") != "host" and service.get("ipc") != "host", f"{name} shares a host namespace"
        assert not service.get("cap_add"), f"{name} adds capabilities"
        for source, target, _ in mounts(service):
            assert "docker.sock" not in source + target, f"{name} mounts the Docker socket"


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------
def test_secret_values_are_references_to_env(raw: dict[str, Any]) -> None:
    reference = re.compile(r"\$\{[A-Z0-9_]+(?::\?[^}]*|:-)?\}")
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert isinstance(value, str) and reference.fullmatch(value), (
                    f"{name}: {key} must be ${{VAR:?message}} (or an empty default), not {value!r}"
                )


def test_generated_secrets_are_required_and_never_defaulted() -> None:
    text = COMPOSE_FILE.read_text()
    assert "__GENERATE" not in text
    for key in generated_secrets():
        for match in re.finditer(rf"\$\{{{key}(?![A-Za-z0-9_])([^}}]*)\}}", text):
            assert match[1].startswith(":?"), f"${{{key}{match[1]}}} must be ${{{key}:?message}}: no default"


def test_no_weak_password_reaches_a_container(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key) and value:
                assert str(value).lower() not in WEAK_PASSWORDS, f"{name}: {key} is a guessable default"
                assert len(str(value)) >= 16, f"{name}: {key} is too short to be a generated secret"


def test_secrets_never_appear_on_a_command_line(raw: dict[str, Any]) -> None:
    # ${SECRET} would be written into the container's command (docker inspect, ps); $$SECRET is
    # expanded by the container's shell from its environment instead.
    secret_names = generated_secrets() | {k for k in read_env_example() if SECRET_KEY.search(k)}
    for name, service in raw["services"].items():
        texts = [command_text(service.get("command")), command_text(service.get("entrypoint")),
                 command_text((service.get("healthcheck") or {}).get("test"))]
        for text in texts:
            for secret in secret_names:
                assert not re.search(rf"(?<!\$)\$\{{?{secret}(?![A-Za-z0-9_])", text), (
                    f"{name} puts {secret} on a command line; use $${secret} and the environment"
                )


# ---------------------------------------------------------------------------------------------
# Data and mounted files
# ---------------------------------------------------------------------------------------------
def test_data_lives_on_declared_named_volumes(raw: dict[str, Any]) -> None:
    declared = set(raw.get("volumes") or {})
    used: set[str] = set()
    for name, service in raw["services"].items():
        for source, target, _ in mounts(service):
            assert source, f"{name}: anonymous volume at {target} would be lost on the next `up`"
            if not is_bind(source):
                assert source in declared, f"{name}: volume {source} is not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    for name, path in MOUNT_DATA_PATHS.items():
        targets = {t for s, t, _ in mounts(raw["services"][name]) if s and not is_bind(s)}
        assert path in targets, f"{name} keeps its data in {path}, which is not on a named volume"


def test_bind_mounts_exist_and_are_read_only(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        for source, target, read_only in mounts(service):
            if not is_bind(source):
                continue
            assert source.startswith("./"), f"{name}: bind mount {source} must be relative to the repository"
            assert (ROOT / source).exists(), f"{name}: {source} does not exist (docker would create an empty dir)"
            assert read_only, f"{name}: {source} -> {target} must be mounted read-only"


def test_every_volume_of_our_python_services_mounts_where_the_image_makes_a_folder_for_its_user(
        compose: dict[str, Any]) -> None:
    # A fresh named volume takes the owner of the folder it mounts on; a folder the image never made
    # is root's, and the service user cannot write its reports, outputs or landed files there.
    made = set(re.findall(r"/var/lib/platform[\w/-]*", PYTHON_DOCKERFILE.read_text().split("chown -R platform")[0]))
    for name, service in compose["services"].items():
        build = service.get("build")
        if not (isinstance(build, dict) and build.get("dockerfile") == "platform/docker/Dockerfile"):
            continue
        for source, target, _ in mounts(service):
            if not source.startswith((".", "/")):
                assert target in made, f"{name} mounts volume {source} on {target}, which the image does not create"


def test_postgres_creates_the_platform_databases(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    image_dir = ROOT / postgres["build"]["context"]
    entrypoint = (image_dir / "entrypoint.sh").read_text()
    assert "init-databases.sh" in entrypoint, "the entrypoint never creates the databases"
    script = image_dir / "init-databases.sh"
    assert os.access(script, os.X_OK), f"{script} must be executable"
    text = script.read_text()
    env = environment(postgres)
    for variable in ("FEAST_DB", "MLFLOW_DB", "AIRFLOW_DB"):
        assert variable in text, f"the init script ignores {variable}"
        assert variable in env, f"postgres does not pass {variable} to its init script"
    assert "pg_isready" in command_text(postgres["healthcheck"]["test"])


def test_prometheus_reads_the_repository_config(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    for source, target, _ in mounts(prometheus):
        if config.startswith(target.rstrip("/") + "/"):
            path = ROOT / source / config[len(target.rstrip("/")) + 1:]
            assert path.is_file(), f"prometheus reads {config}, but {path.relative_to(ROOT)} does not exist"
            break
    else:
        pytest.fail(f"{config} is not inside any mount of the prometheus service")


# ---------------------------------------------------------------------------------------------
# Grafana, ELK, Jenkins
# ---------------------------------------------------------------------------------------------
def test_grafana_is_provisioned_and_closed_to_anonymous_users(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false", "Grafana must not be open to anonymous users"
    targets = {t: s for s, t, _ in mounts(grafana)}
    assert targets.get("/etc/grafana/provisioning") == "./monitoring/grafana/provisioning"
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    prometheus = [d for d in datasources["datasources"] if d["uid"] == "prometheus"]
    assert prometheus, "no Grafana datasource with uid `prometheus` (dashboards refer to it)"
    assert prometheus[0]["url"] == "http://prometheus:9090", f"datasource url {prometheus[0]['url']}"
    assert "prometheus" in compose["services"]
    dashboards = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    path = dashboards["providers"][0]["options"]["path"]
    assert targets.get(path) == "./monitoring/grafana/dashboards", f"{path} is not where the dashboards are mounted"


def test_filebeat_ships_to_elasticsearch_with_credentials_from_env(compose: dict[str, Any]) -> None:
    filebeat = compose["services"]["filebeat"]
    config = yaml.safe_load(FILEBEAT_CONFIG.read_text())
    output = config["output.elasticsearch"] if "output.elasticsearch" in config else config["output"]["elasticsearch"]
    assert output["hosts"] == ["http://elasticsearch:9200"], f"filebeat ships to {output['hosts']}"
    assert output["password"] == "${ELASTIC_PASSWORD}", "filebeat's password must come from the environment"
    assert "ELASTIC_PASSWORD" in environment(filebeat), "the filebeat service does not set ELASTIC_PASSWORD"
    mounted = [t for _, t, _ in mounts(filebeat)]
    for log_input in config["filebeat.inputs"]:
        for path in log_input["paths"]:
            assert any(path.startswith(t.rstrip("/") + "/") for t in mounted), f"filebeat reads {path}, not mounted"


def test_jenkins_configuration_as_code(compose: dict[str, Any]) -> None:
    jenkins = compose["services"]["jenkins"]
    env = environment(jenkins)
    casc_text = (JENKINS_DIR / "casc.yaml").read_text()
    casc_code = re.sub(r"(?m)^\s*#.*$", "", casc_text)
    casc = yaml.safe_load(casc_text)
    realm = casc["jenkins"]["securityRealm"]["local"]
    assert realm["allowsSignup"] is False, "anyone could sign up to Jenkins"
    assert realm["users"] == [{**realm["users"][0], "id": "${JENKINS_ADMIN_USER}",
                               "password": "${JENKINS_ADMIN_PASSWORD}"}], "the admin must come from .env"
    # Every variable casc.yaml needs without a default is set on the container.
    for variable in re.findall(r"\$\{([A-Z0-9_]+)\}", casc_code):
        assert variable in env, f"casc.yaml uses ${{{variable}}}, which the jenkins service does not set"
    assert "-Djenkins.install.runSetupWizard=false" in env["JAVA_OPTS"], "Jenkins would start its setup wizard"
    targets = {t: s for s, t, _ in mounts(jenkins)}
    assert targets.get(env["CASC_JENKINS_CONFIG"]) == "./platform/jenkins/casc.yaml"
    job = casc["jobs"][0]["script"]
    assert "pipelineJob('ride-mlops')" in job and "scriptPath('Jenkinsfile')" in job
    repo = re.search(r"url\('file://([^']+)'\)", job)[1]
    assert targets.get(repo) == "./.git", f"the job clones {repo}, which is not the mounted repository"
    assert compose["services"]["jenkins"]["ports"] == ["127.0.0.1:8081:8080"]


def test_jenkins_plugins_are_pinned() -> None:
    lines = [line.strip() for line in (JENKINS_DIR / "plugins.txt").read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    for entry in entries:
        assert ":" in entry, f"plugins.txt: {entry!r} must be name:version"
    plugins = dict(entry.split(":", 1) for entry in entries)
    for plugin, version in plugins.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", plugin), f"bad plugin name {plugin!r}"
        assert re.fullmatch(r"\d[\w.-]*", version) and version not in ("latest", "experimental"), (
            f"{plugin} is not pinned to a version: {version!r}"
        )
    assert {"configuration-as-code", "job-dsl", "workflow-aggregator", "git"} <= set(plugins)
    dockerfile = (JENKINS_DIR / "Dockerfile").read_text()
    assert re.search(r"jenkins-plugin-cli --plugin-file \S*plugins\.txt --latest false", dockerfile), (
        "dependencies must not float to their latest versions"
    )


# ---------------------------------------------------------------------------------------------
# Jenkinsfile
# ---------------------------------------------------------------------------------------------
def jenkinsfile_code() -> str:
    text = re.sub(r"/\*.*?\*/", "", JENKINSFILE.read_text(), flags=re.DOTALL)
    return re.sub(r"(?m)(^|\s)//.*$", r"\1", text)


SH_STEP = re.compile(
    r"""(?<![\w.$])sh\s*\(?\s*(?:script\s*:\s*)?(?P<q>'''|\"\"\"|'|")(?P<cmd>.*?)(?P=q)""", re.DOTALL
)
SH_WORD = re.compile(r"(?<![\w.$])sh\b(?!\.)(?=\s*[\('\"]|\s+script\s*:)")


def test_jenkinsfile_steps_are_run_sh_verbs() -> None:
    code = jenkinsfile_code()
    steps = [m["cmd"].strip() for m in SH_STEP.finditer(code)]
    assert len(steps) == len(SH_WORD.findall(code)), "an sh step is written in a form this test cannot read"
    assert not re.search(r"(?<![\w.])(bat|powershell|pwsh)\s*[\('\"]", code), "steps must be sh steps"
    assert steps, "the Jenkinsfile has no sh step"
    for command in steps:
        match = re.fullmatch(r"bash run\.sh (\w+)(?: [\w .=/-]+)?", command)
        assert match, f"step {command!r} must be `bash run.sh <verb> [args]`"
        assert match[1] in RUN_SH_VERBS, f"step {command!r} calls an unknown run.sh verb"
    for wanted in ("bash run.sh setup", "bash run.sh lint", "bash run.sh test unit",
                   "bash run.sh test services", "bash run.sh build"):
        assert wanted in steps, f"the pipeline never runs `{wanted}`"
