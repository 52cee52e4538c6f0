"""HAProxy's configuration in front of the serving replicas: rendered for both modes, and run for real.

The last test starts Debian's haproxy (skipped where it is not installed: `bash run.sh setup` installs it)
on a rendered local configuration with one live replica (a small HTTP server) and one dead one (a port
nothing listens on): every request is answered, the dead replica is marked DOWN and the live one UP.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from mlops_platform import haproxy
from tests.conftest import eventually, free_port


def test_local_config_lists_each_replica_with_a_fast_health_check_and_retries(make_settings):
    settings = make_settings(SERVING_PORT="27800")
    text = haproxy.local_config(settings, {"serving": 27900, "serving-2": 28000})
    lines = [line.strip() for line in text.splitlines()]
    assert "bind 127.0.0.1:27800" in lines
    assert "server serving 127.0.0.1:27900 check" in lines
    assert "server serving-2 127.0.0.1:28000 check" in lines
    assert "option httpchk GET /health" in lines
    assert "retry-on conn-failure empty-response" in lines and "option redispatch 1" in lines
    assert "http-response set-header X-Served-By %[srv_name]" in lines
    assert f"stats socket {haproxy.stats_socket(settings)} mode 600 level admin" in lines


def test_no_replica_is_refused_with_what_to_set(make_settings):
    with pytest.raises(ValueError, match="SERVING_REPLICAS"):
        haproxy.local_config(make_settings(), {})


def test_docker_config_is_the_rendered_one_and_finds_replicas_through_dockers_dns():
    assert haproxy.DOCKER_CONFIG.read_text() == haproxy.docker_config(), (
        "platform/haproxy/haproxy.cfg is stale: write haproxy.docker_config() to it")
    lines = [line.strip() for line in haproxy.docker_config().splitlines()]
    assert "nameserver dns 127.0.0.11:53" in lines
    assert any(line.startswith("server-template serving- ") and " serving:8000 check resolvers docker " in f"{line} "
               for line in lines)


def test_write_config_reports_a_change_only_when_the_replicas_change(make_settings):
    settings = make_settings()
    assert haproxy.write_config(settings, {"serving": 8100})
    assert not haproxy.write_config(settings, {"serving": 8100})
    assert haproxy.write_config(settings, {"serving": 8100, "serving-2": 8200})


class Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def replica() -> ThreadingHTTPServer:
    """A stand-in replica answering 200 to every GET, in a thread of this process."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Health)
    server.handle_error = lambda *args: None  # HAProxy's checks hang up early: not an error here
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def server_states(settings) -> dict[str, str]:
    return {name: row["status"] for name, row in haproxy.server_states(haproxy.stats_socket(settings)).items()}


@pytest.mark.skipif(shutil.which(haproxy.binary()) is None,
                    reason="Debian's haproxy is not installed (bash run.sh setup installs it)")
def test_a_replica_that_dies_costs_no_later_request_and_is_marked_down(make_settings):
    replicas = {"first": replica(), "second": replica()}
    settings = make_settings(SERVING_PORT=str(free_port()))
    haproxy.write_config(settings, {name: server.server_address[1] for name, server in replicas.items()})
    process = subprocess.Popen(haproxy.command(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: server_states(settings) == {"first": "UP", "second": "UP"}, timeout=10,
                   what="both replicas UP")
        replicas["second"].shutdown()
        replicas["second"].server_close()  # its port now refuses connections, as a killed replica's does
        with httpx.Client(base_url=settings.serving_url, timeout=5) as client:  # round robin: one goes to it
            answers = [client.get("/health") for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20, "a request sent after the replica died was lost"
        assert {a.headers["x-served-by"] for a in answers} == {"first"}
        eventually(lambda: server_states(settings) == {"first": "UP", "second": "DOWN"}, timeout=10,
                   what="the dead replica DOWN")
    finally:
        process.terminate()
        process.wait(timeout=10)
        replicas["first"].shutdown()
