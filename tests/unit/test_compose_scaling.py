"""docker-compose.yml's scaled services: API replicas behind HAProxy (serving-lb), stream consumers as a group.

`docker compose up --scale serving=N` and `--scale stream-consumer=N` only work for a service without a
fixed container name or host port; HAProxy must publish the serving port, find the replicas through
Docker's DNS and be built like our other images. Checked on the file, no Docker engine needed.
"""

from __future__ import annotations

from typing import Any

import pytest

from mlops_platform import haproxy
from tests.compose_file import ROOT, environment, read_env_example

SCALED = {"serving": "SERVING_REPLICAS", "stream-consumer": "STREAM_CONSUMERS"}


@pytest.mark.parametrize("name", sorted(SCALED))
def test_a_scaled_service_has_no_fixed_name_or_host_port_and_follows_its_setting(name, raw, compose) -> None:
    service = raw["services"][name]
    assert "container_name" not in service, f"{name}: a fixed container name allows one container only"
    assert not service.get("ports"), f"{name}: a host port allows one container only"
    assert service["deploy"]["replicas"] == f"${{{SCALED[name]}:-{read_env_example()[SCALED[name]]}}}"
    assert environment(compose["services"][name])[SCALED[name]] == read_env_example()[SCALED[name]]


def test_haproxy_publishes_the_serving_port_and_waits_for_a_healthy_replica(raw: dict[str, Any]) -> None:
    lb = raw["services"]["serving-lb"]
    assert lb["ports"] == ["${BIND_ADDRESS:-127.0.0.1}:${SERVING_PORT:-8000}:8000"]
    assert lb["depends_on"] == {"serving": {"condition": "service_healthy"}}
    assert lb["profiles"] == ["serving"]
    assert lb["build"]["context"] == "platform/haproxy"
    assert lb["image"].startswith("ride-mlops/haproxy:${PLATFORM_VERSION:-")
    assert "http://127.0.0.1:8000/health" in lb["healthcheck"]["test"], "healthy when a replica answers through it"


def test_every_client_goes_through_haproxy_and_a_replica_checks_itself(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = environment(service)
        if "SERVING_HOST" in env:
            expected = "127.0.0.1" if name == "serving" else "serving-lb"
            assert env["SERVING_HOST"] == expected, f"{name}: SERVING_HOST={env['SERVING_HOST']}"


def test_the_haproxy_image_holds_the_rendered_configuration() -> None:
    dockerfile = (ROOT / "platform" / "haproxy" / "Dockerfile").read_text()
    assert "COPY haproxy.cfg /etc/haproxy/haproxy.cfg" in dockerfile
    assert "haproxy" in dockerfile.split("apt-get install", 1)[1].splitlines()[0]
    assert (ROOT / "platform" / "haproxy" / "haproxy.cfg").read_text() == haproxy.docker_config()
    assert "serving:8000 check resolvers docker" in haproxy.docker_config()
