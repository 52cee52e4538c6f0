"""docker-compose.yml passes only declared configuration, spelled as mlops_platform.settings declares it.

Settings are declared once (mlops_platform/settings.py) and documented once (.env.example). Compose
repeats their names in its environment blocks and `${VAR:-default}` references; a misspelled name
there is silently ignored by the container (it falls back to its local-mode default) and a second
default drifts from the documented one. These checks read the file as YAML, anchors and merges resolved
(the `raw` fixture of tests/unit/conftest.py).
tests/unit/test_compose.py checks that our services get every setting; this file checks the converse.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest

from mlops_platform.settings import declared_variables, read_env_file, setting_variables
from tests.compose_file import ENV_EXAMPLE, environment

# Variables a service's own (third-party) image reads, which are none of our settings: by service, with why.
KAFKA_BROKER = ("the Apache Kafka image turns each KAFKA_<PROPERTY> into server.properties; CLUSTER_ID names "
                "the KRaft cluster its storage is formatted for; KAFKA_HEAP_OPTS sizes the JVM")
IMAGE_VARIABLES: dict[str, tuple[str, set[str]]] = {
    "kafka": (KAFKA_BROKER, {
        "KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_INTER_BROKER_LISTENER_NAME", "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_CONTROLLER_QUORUM_VOTERS", "CLUSTER_ID", "KAFKA_LOG_DIRS", "KAFKA_NUM_PARTITIONS",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE", "KAFKA_LOG_RETENTION_HOURS", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "KAFKA_HEAP_OPTS"}),
    "grafana": ("Grafana reads GF_<SECTION>_<KEY> as grafana.ini settings", {
        "GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD", "GF_AUTH_ANONYMOUS_ENABLED", "GF_USERS_ALLOW_SIGN_UP",
        "GF_ANALYTICS_REPORTING_ENABLED", "GF_ANALYTICS_CHECK_FOR_UPDATES", "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES",
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"}),
    "elasticsearch": ("the Elasticsearch image reads dotted names as elasticsearch.yml settings, ES_JAVA_OPTS as "
                      "JVM options", {
        "discovery.type", "cluster.name", "xpack.security.enabled", "xpack.security.http.ssl.enabled",
        "xpack.security.transport.ssl.enabled", "xpack.license.self_generated.type", "ES_JAVA_OPTS"}),
    "kibana": ("the Kibana image maps upper-case names to kibana.yml settings (SERVER_NAME -> server.name)", {
        "SERVER_NAME", "ELASTICSEARCH_HOSTS", "ELASTICSEARCH_USERNAME", "ELASTICSEARCH_PASSWORD",
        "XPACK_SECURITY_ENCRYPTIONKEY", "XPACK_ENCRYPTEDSAVEDOBJECTS_ENCRYPTIONKEY", "XPACK_REPORTING_ENCRYPTIONKEY",
        "TELEMETRY_OPTIN"}),
    "jenkins": ("the Jenkins image reads JAVA_OPTS and CASC_JENKINS_CONFIG; casc.yaml reads JENKINS_PUBLIC_URL", {
        "JAVA_OPTS", "CASC_JENKINS_CONFIG", "JENKINS_PUBLIC_URL"}),
}
# Referenced by compose outside any environment block and declared nowhere else, with why.
COMPOSE_ONLY_VARIABLES = {"PLATFORM_VERSION": "the tag of the images we build; its default is the release"}

REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def environment_blocks(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, block) for the shared x- blocks of variables and each service's `environment:`."""
    for name, block in compose.items():
        if name.startswith("x-") and isinstance(block, dict) and all(VARIABLE_NAME.fullmatch(k) for k in block):
            yield name, block
    for name, service in compose["services"].items():
        yield name, environment(service)


def strings(node: Any) -> Iterator[str]:
    """Every string value in the file, however deep."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def problems(compose: dict[str, Any]) -> list[str]:
    """Every name compose passes or references that settings do not declare, spell or default the same way."""
    declared, defaults = declared_variables(), read_env_file(ENV_EXAMPLE)
    found = []
    for where, block in environment_blocks(compose):
        own_image = IMAGE_VARIABLES.get(where, ("", set()))[1]
        for key, value in block.items():
            if key not in declared and key not in own_image:
                found.append(f"{where}: {key} is not a declared setting (mlops_platform/settings.py) nor a variable "
                             f"its image reads (IMAGE_VARIABLES)")
            referenced = [m["name"] for m in REFERENCE.finditer(str(value))]
            if key in declared and referenced and referenced != [key] * len(referenced):
                found.append(f"{where}: {key} is set from ${{{', '.join(referenced)}}}: pass a setting under its own "
                             "name")
    for match in (m for text in strings(compose) for m in REFERENCE.finditer(text)):
        name, op, arg = match["name"], match["op"], match["arg"]
        if name not in declared and name not in COMPOSE_ONLY_VARIABLES:
            found.append(f"${{{name}}} is not a declared setting: fix its spelling or declare it")
        elif op == ":-" and defaults.get(name) and arg != defaults[name]:  # empty: the reader picks a fallback
            found.append(f"${{{name}:-{arg}}}: .env.example's default is {defaults[name]!r}, the one place for it")
    return sorted(set(found))


def test_compose_passes_only_declared_settings_spelled_and_defaulted_as_declared(raw: dict[str, Any]) -> None:
    found = problems(raw)
    assert not found, "docker-compose.yml and mlops_platform/settings.py disagree:\n" + "\n".join(found)


def test_the_shared_platform_environment_holds_only_what_our_services_read(raw: dict[str, Any]) -> None:
    """Our Python services read Settings only: a docker-only variable in their block would be a secret for nothing."""
    extra = set(raw["x-platform-env"]) - set(setting_variables())
    assert not extra, f"x-platform-env passes {sorted(extra)}, which no Settings field reads"


def test_every_image_variable_listed_is_still_passed(raw: dict[str, Any]) -> None:
    """The exceptions stay exact: a variable removed from compose leaves the list too."""
    for service, (reason, variables) in IMAGE_VARIABLES.items():
        passed = set(raw["services"][service].get("environment") or {})
        assert variables <= passed, f"{service}: {sorted(variables - passed)} listed ({reason}) but not passed"
        assert not variables & declared_variables(), f"{service}: a declared setting is listed as the image's own"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["x-platform-env"].update(POSTGRES_PASWORD="x"), "x-platform-env: POSTGRES_PASWORD is not"),
    (lambda c: c["x-platform-env"].update(SERVING_PORT="${SERVING_PROT:-8000}"), "${SERVING_PROT} is not a declared"),
    (lambda c: c["services"]["postgres"]["environment"].update(FEAST_DB="${MLFLOW_DB:-mlflow}"),
     "postgres: FEAST_DB is set from ${MLFLOW_DB}"),
    (lambda c: c["x-platform-env"].update(MODEL_ALIAS="${MODEL_ALIAS:-production}"),
     "${MODEL_ALIAS:-production}: .env.example's default is 'champion'"),
    (lambda c: c["services"]["grafana"]["environment"].update(GF_SERVER_ROOT_URL="/"),
     "grafana: GF_SERVER_ROOT_URL is not"),
])
def test_a_misspelled_or_redefaulted_setting_is_found(raw: dict[str, Any], change, expected: str) -> None:
    changed = copy.deepcopy(raw)
    change(changed)
    assert any(problem.startswith(expected) for problem in problems(changed)), problems(changed)
