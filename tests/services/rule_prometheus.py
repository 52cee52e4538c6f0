"""A real Prometheus of a test's own: the platform's rule files with every `for` cut short, scraping one
target every second, so an alert can be seen firing within seconds."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.conftest import eventually
from tests.monitoring_config import RULES_DIR


def query(url: str, expr: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10) as answer:
        return json.loads(answer.read())["data"]["result"]


def firing(url: str, name: str, **labels: str) -> list[dict]:
    """The firing alerts `name` whose labels include `labels`."""
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=10) as answer:
        found = json.loads(answer.read())["data"]["alerts"]
    return [a for a in found if a["state"] == "firing" and a["labels"].get("alertname") == name
            and all(a["labels"].get(key) == value for key, value in labels.items())]


@contextlib.contextmanager
def rule_prometheus(folder: Path, port: int, job: str, target: str, alert_for: str = "2s") -> Iterator[str]:
    """Prometheus on 127.0.0.1:`port` loading RULES_DIR with each `for` set to `alert_for`; yields its URL."""
    rules = folder / "rules"
    rules.mkdir(parents=True, exist_ok=True)
    for path in RULES_DIR.glob("*.yml"):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = alert_for
        (rules / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(rules / "*.yml")],
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    with open(folder / "prometheus.log", "w") as log:
        process = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                                    f"--config.file={folder / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={folder / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: query(url, f'up{{job="{job}"}} == 1'), 60,
                   what=f"Prometheus at {url} scraping {target} (log: {folder / 'prometheus.log'})")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
