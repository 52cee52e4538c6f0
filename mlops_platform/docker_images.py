"""Docker mode's images: what is built here, what must be pulled, and whether a registry answers.

Standard library only, like all of docker mode (mlops_platform.docker_mode).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from mlops_platform.compose_project import ENV_FILE, ComposeService, DockerModeError, dependents, say
from mlops_platform.settings import REPO_ROOT, read_env_file

BASE_IMAGE_SCRIPT = REPO_ROOT / "platform" / "docker" / "make-base-image.sh"
DEFAULT_BASE_IMAGE = "debian:bookworm-slim"
PULL_TIMEOUT_SECONDS = 120


def dockerfile_bases(dockerfile: Path, build_args: dict[str, str]) -> list[str]:
    """The images a Dockerfile starts FROM, with ARG defaults and build args expanded; stages are skipped."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    for line in dockerfile.read_text().splitlines():
        if match := re.match(r"^ARG\s+(\w+)(?:=(\S*))?", line):
            args.setdefault(match[1], build_args.get(match[1], match[2] or ""))
        elif match := re.match(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], ""), match[1])
            if image not in stages:
                bases.append(image)
            if match[2]:
                stages.add(match[2])
    return list(dict.fromkeys(bases))


def external_images(service: ComposeService) -> list[str]:
    """Images the service needs from elsewhere: its base images when built here, else its image."""
    if service.build:
        context = Path(service.build.get("context", REPO_ROOT))
        dockerfile = context / service.build.get("dockerfile", "Dockerfile")
        return dockerfile_bases(dockerfile, service.build.get("args") or {})
    return [service.image]


def image_present(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def pull(image: str) -> str | None:
    """None when the image is here after pulling it, else why it is not."""
    try:
        result = subprocess.run(["docker", "pull", image], capture_output=True, text=True,
                                timeout=PULL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return f"no registry answered for {image} within {PULL_TIMEOUT_SECONDS}s"
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return f"{image} cannot be pulled: {lines[-1] if lines else 'no reason given'}"


def base_image() -> str:
    return os.environ.get("BASE_IMAGE") or read_env_file(ENV_FILE).get("BASE_IMAGE") or DEFAULT_BASE_IMAGE


def ensure_base_image() -> None:
    """The base of every image we build: here already, pulled, or made with debootstrap (as root)."""
    image = base_image()
    if image_present(image):
        return
    reason = pull(image)
    if reason is None:
        return
    if os.geteuid() != 0:
        raise DockerModeError(f"{reason}\nMake it from Debian's packages instead (needs root and debootstrap):\n"
                              f"    sudo apt-get install -y debootstrap && sudo bash {BASE_IMAGE_SCRIPT} {image}")
    say(f"==> {reason}; making {image} with debootstrap")
    if subprocess.run(["bash", str(BASE_IMAGE_SCRIPT), image]).returncode != 0:
        raise DockerModeError(f"making the base image {image} failed (see above)")


def unavailable_images(services: dict[str, ComposeService], names: set[str]) -> dict[str, str]:
    """Service name -> why it cannot start, for services whose images no registry gives."""
    ours = base_image()
    reasons_by_image: dict[str, str | None] = {}
    blocked: dict[str, str] = {}
    for name in sorted(names):
        for image in external_images(services[name]):
            if image == ours:
                continue
            if image not in reasons_by_image:
                reasons_by_image[image] = None if image_present(image) else pull(image)
            if reasons_by_image[image]:
                blocked[name] = reasons_by_image[image]
    cannot_start = set(blocked) | dependents(services, set(blocked))
    for name in (cannot_start - set(blocked)) & names:
        needed = sorted(set(services[name].depends_on) & cannot_start)
        blocked[name] = f"needs {', '.join(needed)}, which cannot start"
    return blocked
