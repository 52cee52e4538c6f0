"""The servers the serving benchmark (benchmarks.bench_serving) starts fresh for each cell: our API, Feast's
feature server and MLflow's model server, each on a port of its own on 127.0.0.1, with its log in a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlops_platform.settings import REPO_ROOT, Settings

START_TIMEOUT_SECONDS = 180.0
STABLE_SECONDS = 3.0
HOST = "127.0.0.1"
PORTS = {"ours": 24880, "feast": 24881, "mlflow": 24882}


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    cwd: Path = REPO_ROOT
    process: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, log_dir: Path, attempts: int = 3) -> None:
        """Start and wait until ready and still up a few seconds later: `feast serve --workers N` sometimes
        loses a worker at boot (its registry connection is shared across the fork) and then exits."""
        for attempt in range(1, attempts + 1):
            self._start_once(log_dir)
            time.sleep(STABLE_SECONDS)
            if self.process is not None and self.process.poll() is None and _answers(self.ready_url):
                return
            print(f"  {self.name} did not stay up after start (attempt {attempt}); see {self.log}", flush=True)
            self.stop()
        raise RuntimeError(f"{self.name} did not stay up after {attempts} starts; see {self.log}")

    def _start_once(self, log_dir: Path) -> None:
        self.log = log_dir / f"{self.name}.log"
        # The venv's bin first: `mlflow models serve` runs `uvicorn` found on the PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env={**os.environ, "PATH": path, **self.env},
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} during start-up; see {self.log}")
            if _answers(self.ready_url):
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.ready_url} within {START_TIMEOUT_SECONDS:.0f}s; "
                           f"see {self.log}")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        self.process = None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def our_server(settings: Settings, workers: int, home: Path) -> Server:
    port = PORTS["ours"]
    env = {"SERVING_PORT": str(port), "SERVING_WORKERS": str(workers), "SERVING_AUTH": "off",
           "PLATFORM_HOME": str(home), "LOG_LEVEL": "WARNING", "LISTEN_ADDRESS": HOST,
           "PYTHONPATH": str(REPO_ROOT)}
    return Server(f"ours-{workers}w", [sys.executable, "-m", "model_serving.api"], env,
                  f"http://{HOST}:{port}/ready")


def feast_server(settings: Settings, tuned: bool) -> Server:
    port = PORTS["feast"]
    argv = [str(Path(sys.executable).parent / "feast"), "-c", str(REPO_ROOT / "feast_repo"), "serve",
            "-h", HOST, "-p", str(port)]
    if tuned:
        argv += ["--workers", str(os.cpu_count() or 1), "--no-access-log", "--max-requests", "0"]
    return Server(f"feast-serve{'-tuned' if tuned else ''}", argv, settings.feast_environment(),
                  f"http://{HOST}:{port}/health")


def mlflow_server(settings: Settings, workers: int) -> Server:
    port = PORTS["mlflow"]
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", settings.model_uri, "--env-manager", "local",
            "-h", HOST, "-p", str(port), "-w", str(workers)]
    return Server(f"mlflow-serve-{workers}w", argv, {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri},
                  f"http://{HOST}:{port}/ping")
