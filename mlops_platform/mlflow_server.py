"""The MLflow tracking server's command: mlflow/server.toml for what is fixed, the settings for the rest.

Both run modes start the server through `server_command`: local mode as a process, docker mode in the
image's container (`python -m mlops_platform.exec mlflow`, the image holds the same file).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from mlops_platform.settings import REPO_ROOT, Settings

SERVER_CONFIG = REPO_ROOT / "mlflow" / "server.toml"


def server_config(path: Path = SERVER_CONFIG) -> dict[str, Any]:
    """The server's fixed options; see the comments in the file."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"expected the MLflow server's options in {path}, found no such file: "
                                "restore it with `git checkout -- mlflow/server.toml`") from None


def allowed_hosts(settings: Settings, hosts: list[str]) -> str:
    """The --allowed-hosts value: MLFLOW_HOST and the configured hosts, each bare and with any port."""
    names = sorted({settings.mlflow_host, *hosts})
    return ",".join([*names, *(f"{name}:*" for name in names)])


def state_folders(settings: Settings, config: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """(artifacts, Prometheus files): the server's folders under PLATFORM_HOME, deleted by `down --volumes`."""
    config = config or server_config()
    return settings.home / config["artifacts"]["destination"], settings.home / config["metrics"]["prometheus_dir"]


def server_command(settings: Settings, config: dict[str, Any] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of `mlflow server`; the folders it writes are created under PLATFORM_HOME."""
    config = config or server_config()
    artifacts, metrics = state_folders(settings, config)
    for folder in (artifacts, metrics):
        folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", str(artifacts)]
    if config["artifacts"]["serve"]:
        argv.append("--serve-artifacts")
    argv += ["--host", settings.listen_address, "--port", str(settings.mlflow_port),
             "--workers", str(settings.mlflow_workers), "--expose-prometheus", str(metrics),
             "--allowed-hosts", allowed_hosts(settings, config["hosts"]["allowed"])]
    # The store's URI holds the database password: the environment, never the command line.
    env = {**{key: str(value) for key, value in config["environment"].items()},
           "MLFLOW_BACKEND_STORE_URI": settings.postgres_url(settings.mlflow_db)}
    return argv, env
