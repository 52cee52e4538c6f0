"""Scaled services in local mode: instance names, the port arithmetic, each instance's settings and launch."""

from __future__ import annotations

import subprocess

import pytest

from mlops_platform import instances
from mlops_platform.services import BY_NAME, instance_port, local_launch
from tests.conftest import REPO_ROOT

SERVING, CONSUMER = BY_NAME["serving"], BY_NAME["stream-consumer"]


def test_one_instance_is_the_service_as_it_always_was_but_behind_haproxy(make_settings):
    settings = make_settings(SERVING_PORT="8000", INSTANCE_PORT_STEP="100")
    [serving] = instances.planned(SERVING, settings)
    [consumer] = instances.planned(CONSUMER, settings)
    assert (serving.name, consumer.name) == ("serving", "stream-consumer")  # same pid file, log and program
    assert serving.port(settings) == 8100, "SERVING_PORT is HAProxy's: the replica listens one step above"
    assert consumer.port(settings) == settings.stream_consumer_port


def test_replicas_and_consumers_get_names_and_ports_a_step_apart(make_settings):
    settings = make_settings(SERVING_PORT="27800", STREAM_CONSUMER_PORT="27108", INSTANCE_PORT_STEP="100",
                             SERVING_REPLICAS="3", STREAM_CONSUMERS="2")
    replicas = instances.planned(SERVING, settings)
    consumers = instances.planned(CONSUMER, settings)
    assert [(r.name, r.port(settings)) for r in replicas] == [("serving", 27900), ("serving-2", 28000),
                                                               ("serving-3", 28100)]
    assert [(c.name, c.port(settings)) for c in consumers] == [("stream-consumer", 27108),
                                                                ("stream-consumer-2", 27208)]
    assert consumers[1].url(settings) == "http://127.0.0.1:27208/metrics"
    assert all(r.instance_of == "serving" and r.scaling is None for r in replicas)


def test_an_instance_runs_the_service_with_its_own_port_in_its_environment(make_settings):
    settings = make_settings(SERVING_PORT="8000", SERVING_REPLICAS="2")
    second = instances.instance(SERVING, settings, 2)
    command = local_launch(second, settings)
    assert command.argv[-2:] == ["mlops_platform.exec", "serving"]
    assert command.env["SERVING_PORT"] == "8200"
    seen = instances.with_variables(settings, second.instance_variables)
    assert (seen.serving_port, seen.serving_url) == (8200, "http://127.0.0.1:8200")
    assert settings.serving_port == 8000, "the platform's settings are left as they were"


def test_a_port_past_65535_is_refused_with_what_to_change():
    assert instance_port(9108, 100, 2) == 9308
    with pytest.raises(ValueError, match="INSTANCE_PORT_STEP"):
        instance_port(65000, 1000, 1)


def test_down_and_status_also_see_instances_an_earlier_larger_count_started(make_settings):
    settings = make_settings(SERVING_REPLICAS="2")
    run = settings.home / "run"
    run.mkdir(parents=True)
    for name in ("serving.pid", "serving-4.pid", "serving-lb.pid", "serving-x.pid"):
        (run / name).write_text("1\n")
    assert [s.name for s in instances.every(SERVING, settings)] == ["serving", "serving-2", "serving-4"]
    assert [s.name for s in instances.surplus(SERVING, settings)] == ["serving-4"]
    assert instances.every(BY_NAME["redis"], settings) == [BY_NAME["redis"]]


def test_the_balancer_is_started_after_the_replicas_and_only_for_serving():
    assert instances.front_of(SERVING) is BY_NAME["serving-lb"]
    assert instances.front_of(CONSUMER) is None
    order = [s.name for s in BY_NAME.values()]
    assert order.index("serving-lb") > order.index("serving")
    assert BY_NAME["serving-lb"].requires == ("serving",)


def test_the_stream_topic_has_a_partition_for_each_default_consumer():
    from data_pipeline.stream_topics import STATS_PARTITIONS

    assert STATS_PARTITIONS >= 2, "a group of two consumers on fewer partitions leaves one idle"


@pytest.mark.parametrize("args, expected", [
    (["serving", "up", "--replicas", "0"], "--replicas needs a positive number of instances, got '0'"),
    (["serving", "up", "--replicas"], "--replicas needs a positive number of instances, got ''"),
    (["kafka", "up", "--replicas", "2"], "--replicas scales the serving API: use it with serving or all"),
    (["serving", "up", "--consumers", "2"], "--consumers scales the stream consumer: use it with kafka or all"),
    (["kafka", "down", "--consumers", "2"], "--consumers goes with up or restart"),
])
def test_run_sh_refuses_a_scaling_flag_it_cannot_apply(args, expected):
    result = subprocess.run(["bash", str(REPO_ROOT / "run.sh"), *args], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=30)
    assert result.returncode != 0
    assert expected in result.stderr
