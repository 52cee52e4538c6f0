"""`bash run.sh notebook [--port P]`: JupyterLab on the platform's notebooks (notebooks/), on 127.0.0.1 only.

The kernel is this environment's python (a kernel spec written under PLATFORM_HOME, so a machine with
only the .venv needs nothing installed elsewhere), started with the platform's settings in its
environment: a notebook calls `get_settings()` and imports the platform's modules like any service.
The token travels in JUPYTER_TOKEN (never on a command line, which `ps` shows to every user); one is
generated when unset and printed with the URL.

    bash run.sh notebook --port 8899
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

from mlops_platform.settings import REPO_ROOT, Settings, get_settings, read_env_file

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BIND_ADDRESS = "127.0.0.1"
KERNEL_NAME = "python3"  # the name notebooks record; ours comes first on JUPYTER_PATH


class PortTaken(RuntimeError):
    """Another process listens on the notebook's port."""


def jupyter_home(settings: Settings) -> Path:
    """Jupyter's data, runtime and config files: the platform's state folder, not the user's home."""
    return settings.home / "jupyter"


def install_kernel(settings: Settings) -> Path:
    """Write the kernel spec of this python (rewritten each time: the venv may have moved)."""
    from ipykernel.kernelspec import write_kernel_spec

    folder = jupyter_home(settings) / "kernels" / KERNEL_NAME
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    write_kernel_spec(folder, overrides={"display_name": "Python 3 (platform)"})
    return folder


def notebook_environment(settings: Settings) -> dict[str, str]:
    """The server's and its kernels' environment: the platform's settings (.env under this process's
    variables), the repository importable, and Jupyter's files under PLATFORM_HOME."""
    from mlops_platform.services import merged_env

    home = jupyter_home(settings)
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**read_env_file(REPO_ROOT / ".env"), **merged_env({
        "PLATFORM_HOME": str(settings.home),
        "PYTHONPATH": python_path,
        "JUPYTER_PATH": str(home),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    })}


def ensure_port_free(port: int, host: str = BIND_ADDRESS) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortTaken(
                f"JupyterLab needs port {port} on {host}, but another process listens there: stop it, or pick "
                "another port with `bash run.sh notebook --port P` or NOTEBOOK_PORT in .env") from None


def server_command(port: int) -> list[str]:
    """JupyterLab bound to 127.0.0.1 on exactly `port` (no retries on the next ports), serving notebooks/.
    As root (CI machines, containers) Jupyter refuses to start unless told: it is reachable from this host only."""
    root = ["--allow-root"] if os.geteuid() == 0 else []
    return [sys.executable, "-m", "jupyterlab", "--no-browser", *root, f"--ServerApp.ip={BIND_ADDRESS}",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={NOTEBOOK_DIR}"]


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bash run.sh notebook", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=settings.notebook_port,
                        help=f"port on {BIND_ADDRESS} (default NOTEBOOK_PORT, {settings.notebook_port})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    args = parse_args(argv, settings)
    try:
        ensure_port_free(args.port)
    except PortTaken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    install_kernel(settings)
    env = notebook_environment(settings)
    env["JUPYTER_TOKEN"] = token = env.get("JUPYTER_TOKEN") or secrets.token_urlsafe(24)
    print(f"JupyterLab on http://{BIND_ADDRESS}:{args.port}/lab?token={token}  (notebooks in {NOTEBOOK_DIR}, "
          f"platform state {settings.home}; Ctrl-C stops it)", flush=True)
    command = server_command(args.port)
    os.execve(command[0], command, env)
    return 0  # not reached: the server replaces this process


if __name__ == "__main__":
    sys.exit(main())
