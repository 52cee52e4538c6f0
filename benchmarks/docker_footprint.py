"""Docker mode against local mode, in one run: image builds, image sizes, start-up and idle memory.

Times `bash run.sh build --mode docker` (cold with --cold: our images and the build cache are deleted
first; the base image is kept unless --cold-base), lists the sizes of our images, times `all up --mode
docker` from nothing running to all healthy, and sums the idle memory (PSS, shared pages counted once)
of every process in every container. Then it does the same `all up` and measurement in local mode, so
the ratio compares the two on the same machine in the same hour. Run it with no platform running:

    .venv/bin/python -m benchmarks.docker_footprint [--cold] [--settle-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

from benchmarks.common import print_table
from benchmarks.platform_footprint import pss_kib
from mlops_platform import local, process_tree
from mlops_platform.services import SERVICES, pid_file
from mlops_platform.settings import REPO_ROOT, get_settings

PROJECT = "ride-mlops"


def run_sh(*args: str) -> float:
    began = time.perf_counter()
    subprocess.run(["bash", str(REPO_ROOT / "run.sh"), *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def our_images() -> list[tuple[str, int]]:
    names = sorted(set(docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()))
    return [(name, int(docker("image", "inspect", "--format", "{{.Size}}", name))) for name in names
            if name.startswith(f"{PROJECT}/")]


def container_pids(container_id: str) -> list[int]:
    """Host PIDs of every process of a container (its cgroup, as `docker top` lists them)."""
    lines = docker("top", container_id, "-eo", "pid").split()[1:]
    return [int(pid) for pid in lines if pid.isdigit()]


def docker_idle_pss() -> dict[str, int]:
    ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
    usage = {}
    for container in ids:
        name = json.loads(docker("inspect", container))[0]["Config"]["Labels"]["com.docker.compose.service"]
        usage[name] = sum(pss_kib(pid) for pid in container_pids(container))
    return usage


def local_idle_pss() -> dict[str, int]:
    settings = get_settings()
    usage = {}
    for service in SERVICES:
        path = pid_file(settings, service.name)
        if path.exists():
            usage[service.name] = sum(pss_kib(pid) for pid in process_tree.group_members(int(path.read_text())))
    return usage


def cold_start(cold_base: bool) -> None:
    for name, _ in our_images():
        subprocess.run(["docker", "image", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True)
    if cold_base:
        subprocess.run(["docker", "image", "rm", "-f", "debian:bookworm-slim"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="delete our images and the build cache first")
    parser.add_argument("--cold-base", action="store_true", help="with --cold: also the debootstrapped base image")
    parser.add_argument("--settle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    if docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").strip():
        raise SystemExit("stop the docker platform first (bash run.sh all down --mode docker)")
    if local.running_services(get_settings()):
        raise SystemExit("stop the local platform first (bash run.sh all down --mode local)")

    if args.cold:
        cold_start(args.cold_base)
    build = run_sh("build", "--mode", "docker")
    warm_build = run_sh("build", "--mode", "docker")
    docker_up = run_sh("all", "up", "--mode", "docker")
    time.sleep(args.settle_seconds)
    in_docker = docker_idle_pss()
    run_sh("all", "down", "--mode", "docker")
    local_up = run_sh("all", "up", "--mode", "local")
    time.sleep(args.settle_seconds)
    in_local = local_idle_pss()
    run_sh("all", "down", "--mode", "local")

    print_table("images we build", ("image", "MB"),
                [(name, f"{size / 1e6:,.0f}") for name, size in our_images()])
    docker_total, local_total = sum(in_docker.values()) / 1024, sum(in_local.values()) / 1024
    print_table(f"idle after {args.settle_seconds:.0f} s (PSS MiB)", ("service", "docker", "local"),
                [(name, f"{in_docker.get(name, 0) / 1024:,.0f}", f"{in_local.get(name, 0) / 1024:,.0f}")
                 for name in sorted(set(in_docker) | set(in_local))])
    print_table("docker mode against local mode", ("what", "local", "docker", "ratio"), [
        ("`build` " + ("cold" if args.cold else "first"), "-", f"{build:.0f} s", ""),
        ("`build` again (warm)", "-", f"{warm_build:.1f} s", ""),
        ("`all up` to all healthy", f"{local_up:.0f} s", f"{docker_up:.0f} s", f"{docker_up / local_up:.2f}x"),
        ("idle memory, PSS", f"{local_total:,.0f} MiB", f"{docker_total:,.0f} MiB",
         f"{docker_total / local_total:.2f}x"),
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
