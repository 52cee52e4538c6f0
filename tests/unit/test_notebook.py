"""The committed POC notebook and `bash run.sh notebook` (mlops_platform/notebook.py).

The server test starts JupyterLab for real (a few seconds, no platform service needed) and reads the
kernel's table of listening sockets: the only acceptable address is 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mlops_platform import notebook
from tests.conftest import REPO_ROOT, build_settings, eventually, free_port

NOTEBOOK = REPO_ROOT / "notebooks" / "driver_poc.ipynb"
TOKEN = "unit-test-notebook-token"


def test_the_committed_notebook_is_valid_and_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code), \
        "clear the outputs before committing: jupyter nbconvert --clear-output --inplace notebooks/driver_poc.ipynb"
    assert nb.metadata.kernelspec.name == notebook.KERNEL_NAME
    assert 'os.environ.get("POC_MODEL_NAME", settings.model_name)' in code[0].source


def test_the_server_binds_loopback_on_exactly_its_port_and_keeps_the_token_off_the_command_line():
    command = notebook.server_command(8899)
    assert "--ServerApp.ip=127.0.0.1" in command and "--ServerApp.port=8899" in command
    assert "--ServerApp.port_retries=0" in command and not any("token" in part.lower() for part in command)


def test_the_kernel_sees_the_platform_settings_and_imports_the_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_PORT", "15123")
    settings = build_settings(home=tmp_path)
    env = notebook.notebook_environment(settings)
    assert env["MLFLOW_PORT"] == "15123" and env["PLATFORM_HOME"] == str(tmp_path)
    assert str(REPO_ROOT) in env["PYTHONPATH"].split(os.pathsep)
    kernel = notebook.install_kernel(settings)
    assert kernel.parent == Path(env["JUPYTER_PATH"]) / "kernels"
    assert json.loads((kernel / "kernel.json").read_text())["argv"][0] == sys.executable


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on `port`, from /proc/net/tcp and tcp6 (state 0A = LISTEN)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else f"[{address}]")
    return found


@pytest.fixture
def notebook_env(tmp_path):
    return {**os.environ, "PLATFORM_HOME": str(tmp_path / "home"), "PLATFORM_MODE": "local", "JUPYTER_TOKEN": TOKEN}


def test_run_sh_notebook_listens_on_127_0_0_1_only(notebook_env):
    port = free_port()
    server = subprocess.Popen(["bash", "run.sh", "notebook", "--port", str(port)], cwd=REPO_ROOT, env=notebook_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        eventually(lambda: _listening_addresses(port) or server.poll() is not None, timeout=90,
                   what=f"JupyterLab listening on port {port}")
        assert server.poll() is None, "`bash run.sh notebook` exited before listening"
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/lab?token={TOKEN}" in output, output[-3000:]


def test_run_sh_notebook_says_which_port_is_taken(notebook_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(["bash", "run.sh", "notebook", "--port", str(port)], cwd=REPO_ROOT, env=notebook_env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"JupyterLab needs port {port} on 127.0.0.1, but another process listens there" in result.stderr
    assert "--port P" in result.stderr
