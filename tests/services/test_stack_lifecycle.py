"""restart keeps data, `down --volumes` deletes it, and a taken port is named in the error.

Runs on a second, private platform (own state folder and ports) so the session's platform is untouched.
"""

from __future__ import annotations

import socket

import psycopg2
import pytest
import redis

from mlops_platform import local
from mlops_platform.settings import load_settings
from tests.conftest import REPO_ROOT, run_sh

PRIVATE = {
    "PLATFORM_HOME": str(REPO_ROOT / ".platform-test-lifecycle"),
    "POSTGRES_PORT": "25432",
    "REDIS_PORT": "26379",
}


@pytest.fixture(scope="module")
def private_settings():
    settings = load_settings({**__import__("os").environ, **PRIVATE})
    yield settings
    run_sh("feast", "down", "--volumes", env=PRIVATE, check=False)


def write_marks(settings) -> None:
    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("create table if not exists lifecycle_mark (value text)")
        cur.execute("insert into lifecycle_mark values ('kept')")
    conn.close()
    redis.Redis(host=settings.redis_host, port=settings.redis_port, password=settings.redis_password).set(
        "lifecycle_mark", "kept")


def read_marks(settings) -> tuple[list[str], bytes | None]:
    conn = psycopg2.connect(settings.postgres_dsn(settings.feast_db))
    with conn.cursor() as cur:
        cur.execute("select to_regclass('lifecycle_mark') is not null")
        rows = []
        if cur.fetchone()[0]:
            cur.execute("select value from lifecycle_mark")
            rows = [r[0] for r in cur.fetchall()]
    conn.close()
    value = redis.Redis(host=settings.redis_host, port=settings.redis_port,
                        password=settings.redis_password).get("lifecycle_mark")
    return rows, value


def test_restart_keeps_data_and_down_volumes_deletes_it(private_settings):
    settings = private_settings
    run_sh("feast", "up", env=PRIVATE)
    write_marks(settings)

    run_sh("feast", "restart", env=PRIVATE)
    assert read_marks(settings) == (["kept"], b"kept")

    run_sh("feast", "down", env=PRIVATE)
    for port in (settings.postgres_port, settings.redis_port):
        assert not local.port_in_use(settings.listen_address, port)
    run_sh("feast", "up", env=PRIVATE)
    assert read_marks(settings) == (["kept"], b"kept")

    run_sh("feast", "down", "--volumes", env=PRIVATE)
    assert not (settings.home / "data" / "postgres").exists()
    run_sh("feast", "up", env=PRIVATE)
    assert read_marks(settings) == ([], None)


def test_up_fails_naming_a_port_that_is_taken(private_settings):
    run_sh("feast", "down", env=PRIVATE)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", private_settings.redis_port))
        squatter.listen()
        result = run_sh("feast", "up", env=PRIVATE, check=False)
    assert result.returncode != 0
    assert f"port {private_settings.redis_port}" in result.stderr
    assert "already in use" in result.stderr
