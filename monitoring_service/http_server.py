"""One HTTP server for people and Prometheus: /metrics, and the reports under /reports/."""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from monitoring_service.reports import list_reports
from monitoring_service.rollout_report import list_rollout_reports


def _links(paths: list[Path]) -> str:
    return "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.stem)}</a></li>' for p in paths)


def index_page(folder: Path) -> bytes:
    drift = _links(list_reports(folder)) or ("<li>No report yet: a report is written for each window with "
                                             "enough predictions.</li>")
    rollouts = _links(list_rollout_reports(folder)) or ("<li>No rollout yet: `bash run.sh rollout start` begins "
                                                        "one.</li>")
    return (f"<!doctype html><title>Reports</title><h1>Drift reports (window end, UTC)</h1><ul>{drift}</ul>"
            f"<h1>Rollout reports (latest first)</h1><ul>{rollouts}</ul>").encode()


def make_handler(folder: Path, registry: CollectorRegistry = REGISTRY) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                return self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            if path in ("/", "/reports"):
                self.send_response(302)
                self.send_header("Location", "/reports/")
                self.end_headers()
                return None
            if path == "/reports/":
                return self._send(200, "text/html; charset=utf-8", index_page(folder))
            name = path.removeprefix("/reports/")
            if path.startswith("/reports/") and "/" not in name and name.endswith(".html"):
                file = folder / name
                if file.is_file():
                    return self._send(200, "text/html; charset=utf-8", file.read_bytes())
            return self._send(404, "text/plain", f"no such page: {path}; see /reports/ or /metrics\n".encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
            pass  # Prometheus scrapes every few seconds: no access log

    return Handler


def serve(address: str, port: int, folder: Path, registry: CollectorRegistry = REGISTRY) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; the caller shuts the returned server down."""
    server = ThreadingHTTPServer((address, port), make_handler(folder, registry))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
