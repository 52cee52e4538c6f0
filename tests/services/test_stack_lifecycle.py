"""restart keeps data, `down --volumes` deletes it, and a taken port is named in the error.

Runs on a second, private platform (own state folder and ports) so the session's platform is untouched.
"""

from __future__ import annotations

import os
import socket

import pytest

from mlops_platform import local
from mlops_platform.postgres import open_connection
from mlops_platform.redis_client import redis_client
from mlops_platform.settings import load_settings
from tests.conftest import REPO_ROOT, free_port, run_sh


@pytest.fixture(scope="module")
def private():
    """The private platform's variables: its own state folder, and ports no other platform listens on."""
    return {"PLATFORM_HOME": str(REPO_ROOT / ".platform-test-lifecycle"),
            "POSTGRES_PORT": str(free_port()), "REDIS_PORT": str(free_port())}


@pytest.fixture(scope="module")
def private_settings(private):
    settings = load_settings({**os.environ, **private})
    yield settings
    run_sh("feast", "down", "--volumes", env=private, check=False)


def write_marks(settings) -> None:
    conn = open_connection(settings)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("create table if not exists lifecycle_mark (value text)")
        cur.execute("insert into lifecycle_mark values ('kept')")
    conn.close()
    redis_client(settings).set("lifecycle_mark", "kept")


def read_marks(settings) -> tuple[list[str], bytes | None]:
    conn = open_connection(settings)
    with conn.cursor() as cur:
        cur.execute("select to_regclass('lifecycle_mark') is not null")
        rows = []
        if cur.fetchone()[0]:
            cur.execute("select value from lifecycle_mark")
            rows = [r[0] for r in cur.fetchall()]
    conn.close()
    value = redis_client(settings).get("lifecycle_mark")
    return rows, value


def test_restart_keeps_data_and_down_volumes_deletes_it(private, private_settings):
    settings = private_settings
    run_sh("feast", "up", env=private)
    write_marks(settings)

    run_sh("feast", "restart", env=private)
    assert read_marks(settings) == (["kept"], b"kept")

    run_sh("feast", "down", env=private)
    for port in (settings.postgres_port, settings.redis_port):
        assert not local.port_in_use(settings.listen_address, port)
    run_sh("feast", "up", env=private)
    assert read_marks(settings) == (["kept"], b"kept")

    run_sh("feast", "down", "--volumes", env=private)
    assert not (settings.home / "data" / "postgres").exists()
    run_sh("feast", "up", env=private)
    assert read_marks(settings) == ([], None)


def test_up_fails_naming_a_port_that_is_taken(private, private_settings):
    run_sh("feast", "down", env=private)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", private_settings.redis_port))
        squatter.listen()
        result = run_sh("feast", "up", env=private, check=False)
    assert result.returncode != 0
    assert f"port {private_settings.redis_port}" in result.stderr
    assert "already in use" in result.stderr
