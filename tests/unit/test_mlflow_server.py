"""The MLflow server's options come from mlflow/server.toml in both modes, and that folder never shadows the library."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from mlops_platform import mlflow_server
from mlops_platform.services import python_command
from mlops_platform.settings import REPO_ROOT

DOCKERFILE = REPO_ROOT / "platform" / "docker" / "Dockerfile"


def test_the_command_is_built_from_the_file_and_the_settings(make_settings, tmp_path):
    config = tomllib.loads(mlflow_server.SERVER_CONFIG.read_text())
    config["artifacts"]["destination"] = "elsewhere/artifacts"
    config["hosts"]["allowed"] = ["tracking.internal"]
    config["environment"]["MLFLOW_EXTRA"] = "1"
    settings = make_settings(MLFLOW_HOST="mlflow", MLFLOW_PORT="5123", MLFLOW_WORKERS="3",
                             POSTGRES_PASSWORD="store-password")
    argv, env = mlflow_server.server_command(settings, config)
    option = dict(zip(argv, argv[1:], strict=False))
    assert option["--artifacts-destination"] == str(settings.home / "elsewhere" / "artifacts")
    assert (settings.home / "elsewhere" / "artifacts").is_dir() and "--serve-artifacts" in argv
    assert (option["--port"], option["--workers"]) == ("5123", "3")
    assert option["--allowed-hosts"] == "mlflow,tracking.internal,mlflow:*,tracking.internal:*"
    assert env["MLFLOW_EXTRA"] == "1" and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_BACKEND_STORE_URI"] == settings.postgres_url(settings.mlflow_db)
    assert settings.postgres_password not in " ".join(argv), "the store's password stays off the command line"


def test_both_modes_start_the_server_from_the_repository_file(make_settings):
    settings = make_settings()
    argv = python_command("mlflow", settings).argv
    config = mlflow_server.server_config()
    assert argv[argv.index("--artifacts-destination") + 1] == str(settings.home / config["artifacts"]["destination"])
    assert argv[argv.index("--expose-prometheus") + 1] == str(settings.home / config["metrics"]["prometheus_dir"])
    written = (argv[argv.index("--artifacts-destination") + 1], argv[argv.index("--expose-prometheus") + 1])
    assert tuple(map(str, mlflow_server.state_folders(settings))) == written, "`down --volumes` deletes what it writes"


def test_the_image_holds_the_file_where_the_code_reads_it():
    """In the image the repository root is /app: the file must be copied to /app/<its path in the repository>."""
    text = DOCKERFILE.read_text()
    runtime = text.split("AS runtime", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r"(?m)^WORKDIR /app$", runtime)
    relative = mlflow_server.SERVER_CONFIG.relative_to(REPO_ROOT)
    copied = re.findall(r"(?m)^COPY (\S+) (\S+)$", runtime)
    assert any(source == str(relative) and destination.rstrip("/") in (f"./{relative.parent}", f"./{relative}")
               for source, destination in copied), f"{DOCKERFILE.name} does not copy {relative} into /app"
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert not {"mlflow", "mlflow/", "mlflow/server.toml", "*.toml"} & set(ignored)


def test_a_missing_file_is_named_with_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected the MLflow server's options in .*none\.toml.*git"):
        mlflow_server.server_config(tmp_path / "none.toml")


@pytest.mark.parametrize("cwd", [REPO_ROOT, REPO_ROOT / "mlflow", REPO_ROOT / "tests"], ids=lambda p: p.name)
def test_import_mlflow_finds_the_library_from_any_folder(cwd):
    """As local mode and the image run it: the repository first on the path (PYTHONPATH, the working folder)."""
    assert not (REPO_ROOT / "mlflow" / "__init__.py").exists()
    probe = "import importlib.util; print(importlib.util.find_spec('mlflow').origin)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    origin = result.stdout.strip()
    assert origin.endswith("mlflow/__init__.py") and "site-packages" in origin, origin
