"""Health as a column of the service table: one check reads each service's ready gauge and summary from its
real /metrics, served here from the service's own metrics classes on a free port."""

from __future__ import annotations

import string
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from data_pipeline.stream_metrics import ConsumerMetrics
from mlops_platform import health
from mlops_platform.services import BY_NAME, SERVICES
from model_serving.prediction_logger_metrics import LoggerMetrics
from monitoring_service.metrics import MonitoringMetrics
from tests.conftest import build_settings


def consumer_metrics(registry):
    metrics = ConsumerMetrics(registry)
    metrics.consumed.inc(5)
    metrics.lag.labels("driver_stats", "0").set(2)
    return metrics


def logger_metrics(registry):
    metrics = LoggerMetrics(registry, topics=("predictions", "ground_truth"))
    metrics.consumed.labels("predictions").inc(3)
    metrics.consumed.labels("ground_truth").inc(2)
    metrics.lag.labels("predictions", "1").set(4)
    return metrics


def monitoring_metrics(registry):
    metrics = MonitoringMetrics(registry)
    metrics.window_has_data.set(1)
    return metrics


# Each service whose health is a gauge: its metrics as the running service exports them, and the detail shown.
EXPORTED = {
    "stream-consumer": (consumer_metrics, "ready, 5 messages consumed, lag 2"),
    "prediction-logger": (logger_metrics, "ready, 5 messages consumed, lag 4"),
    "monitoring-service": (monitoring_metrics, "ready, window has data: 1.0"),
}


@pytest.fixture
def serve():
    """serve(service name) -> (its metrics, the service's row pointing at them)."""
    servers = []

    def start(name: str):
        registry = CollectorRegistry()
        metrics = EXPORTED[name][0](registry)
        server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        return metrics, replace(BY_NAME[name], url=lambda settings: url)

    yield start
    for server in servers:
        server.shutdown()


def test_every_service_with_a_health_column_is_checked_by_it():
    assert {service.name for service in SERVICES if service.health} == set(EXPORTED)
    for name in EXPORTED:
        assert health.CHECKS[name].args == (BY_NAME[name],)


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_a_ready_service_is_healthy_and_summarized_from_its_own_samples(serve, name):
    metrics, service = serve(name)
    metrics.ready.set(1)
    assert health.metrics_health(service, build_settings()) == EXPORTED[name][1]
    scraped = health.scrape_metrics(service.url(None))
    named = {field for _, field, _, _ in string.Formatter().parse(service.health.summary) if field}
    assert service.health.ready_gauge in scraped and named <= set(scraped), named - set(scraped)


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_a_service_not_ready_says_what_that_means(serve, name):
    _metrics, service = serve(name)
    with pytest.raises(health.Unhealthy, match=f"{service.health.ready_gauge} is 0, expected 1: "):
        health.metrics_health(service, build_settings())


def test_another_service_on_the_port_is_named(serve):
    _metrics, monitoring = serve("monitoring-service")
    consumer = replace(BY_NAME["stream-consumer"], url=monitoring.url)
    with pytest.raises(health.Unhealthy, match="without driver_stats_consumer_ready: is this the stream consumer"):
        health.metrics_health(consumer, build_settings())


def test_a_service_that_does_not_answer_is_unhealthy_and_says_where():
    settings = build_settings(STREAM_CONSUMER_PORT="1")
    healthy, detail = health.check("stream-consumer", settings)
    assert not healthy and detail.startswith(f"{settings.stream_consumer_url}/metrics does not answer")
