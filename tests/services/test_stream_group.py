"""Stream consumers as a group: `bash run.sh kafka up --consumers 2` runs two members of one consumer group.

Both members own partitions of driver_stats (the partitions each reports a lag for on its /metrics). One is
SIGKILLed while events stream in: its partitions move to the other member (a rebalance), supervision
restarts it, and every event still has its effect in both stores, the duplicates a rebalance re-reads
absorbed (one offline row per (driver, event time), the newest values online).
"""

from __future__ import annotations

import json
import os
import random
import signal
from datetime import UTC, datetime

import pytest

from data_pipeline.stream_topics import STATS_PARTITIONS
from mlops_platform import local
from mlops_platform.health import scrape_metrics
from mlops_platform.services import log_file
from tests.conftest import eventually, scaled_up
from tests.services.driver_stats_stream import Stream, offline_rows, wait_until_stored

CONSUMERS = 2
LAG = "driver_stats_consumer_lag"


@pytest.fixture(scope="module")
def group(kafka_up, settings):
    """Two stream consumers; afterwards the kafka stack is back to the one `kafka up` runs."""
    yield from scaled_up(settings, "kafka", "--consumers", "stream-consumer", CONSUMERS)


@pytest.fixture(scope="module")
def store(feast_up, settings):
    from mlops_platform.feature_store import feature_store

    return feature_store(settings)


def partitions_of(member, settings) -> set[int]:
    """The driver_stats partitions a member owns: those its /metrics reports a lag for."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(member.url(settings), timeout=5).text
    return {int(sample.labels["partition"]) for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == LAG and sample.labels.get("topic") == settings.driver_stats_topic}


def every_member_owns_partitions(members, settings) -> dict[str, set[int]] | None:
    """Member -> its partitions, once every member owns some and every partition has an owner."""
    owned = {member.name: partitions_of(member, settings) for member in members}
    return owned if all(owned.values()) and set().union(*owned.values()) == set(range(STATS_PARTITIONS)) else None


def assignments_since(settings, name: str, moment: datetime) -> list[list[int]]:
    """The partitions a member's log says it was assigned after `moment`, one list per rebalance."""
    lines = [json.loads(line) for line in log_file(settings, name).read_text().splitlines() if line.startswith("{")]
    return [line["partitions"] for line in lines if line.get("message") == "partitions assigned"
            and datetime.fromisoformat(line["timestamp"]) > moment]


def test_a_member_killed_mid_stream_hands_over_its_partitions_and_no_event_is_lost(group, settings, store):
    before = eventually(lambda: every_member_owns_partitions(group, settings), timeout=60,
                        what="both consumers own driver_stats partitions")
    assert not set.intersection(*before.values()), f"a partition owned twice: {before}"
    victim = group[-1]
    pid = local.main_pid(settings, victim.name)
    assert pid is not None, f"{victim.name} is not running"

    first = random.SystemRandom().randrange(10**9, 4 * 10**12)
    ids = list(range(first, first + 200))
    stream = Stream(settings, ids, count=3000, rate=500, seed=29)
    stream.start()
    eventually(lambda: len(offline_rows(settings, ids)) >= 300, timeout=60, what="the group mid-stream")
    killed_at = datetime.now(UTC)
    os.kill(pid, signal.SIGKILL)
    written_when_killed = len(offline_rows(settings, ids))
    sent = stream.finish()

    assert written_when_killed < len(sent.valid), "the kill came after the stream was fully consumed"
    wait_until_stored(settings, store, sent, timeout=180)  # exactly one row per event, newest values online
    eventually(lambda: local.main_pid(settings, victim.name) not in (None, pid), timeout=60,
               what=f"{victim.name} restarted by supervision")
    after = eventually(lambda: every_member_owns_partitions(group, settings), timeout=90,
                       what="the restarted member owns partitions again")
    assert not set.intersection(*after.values()), f"a partition owned twice: {after}"
    survivor = group[0]
    assert assignments_since(settings, survivor.name, killed_at), f"{survivor.name} took part in no rebalance"
    assert scrape_metrics(victim.url(settings))["driver_stats_consumer_ready"] == 1.0
