"""The Jenkins container of docker-compose.yml, its pinned plugins, and the Jenkinsfile's steps, which are all
`run.sh` verbs (tests/unit/test_jenkins.py checks the job and the stages as Groovy).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.compose_file import JENKINS_DIR, JENKINSFILE, RUN_SH_VERBS, environment, mounts


def test_jenkins_configuration_as_code(compose: dict[str, Any]) -> None:
    jenkins = compose["services"]["jenkins"]
    env = environment(jenkins)
    casc_text = (JENKINS_DIR / "casc.yaml").read_text()
    casc_code = re.sub(r"(?m)^\s*#.*$", "", casc_text)
    casc = yaml.safe_load(casc_text)
    realm = casc["jenkins"]["securityRealm"]["local"]
    assert realm["allowsSignup"] is False, "anyone could sign up to Jenkins"
    assert realm["users"] == [{**realm["users"][0], "id": "${JENKINS_ADMIN_USER}",
                               "password": "${JENKINS_ADMIN_PASSWORD}"}], "the admin must come from .env"
    # Every variable casc.yaml needs without a default is set on the container.
    for variable in re.findall(r"\$\{([A-Z0-9_]+)\}", casc_code):
        assert variable in env, f"casc.yaml uses ${{{variable}}}, which the jenkins service does not set"
    assert "-Djenkins.install.runSetupWizard=false" in env["JAVA_OPTS"], "Jenkins would start its setup wizard"
    targets = {t: s for s, t, _ in mounts(jenkins)}
    assert targets.get(env["CASC_JENKINS_CONFIG"]) == "./platform/jenkins/casc.yaml"
    job = casc["jobs"][0]["script"]
    assert "pipelineJob('ride-mlops')" in job and "scriptPath('Jenkinsfile')" in job
    repo = re.search(r"url\('file://([^']+)'\)", job)[1]
    assert targets.get(repo) == "./.git", f"the job clones {repo}, which is not the mounted repository"
    assert compose["services"]["jenkins"]["ports"] == ["127.0.0.1:8081:8080"]


def test_jenkins_plugins_are_pinned() -> None:
    lines = [line.strip() for line in (JENKINS_DIR / "plugins.txt").read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    for entry in entries:
        assert ":" in entry, f"plugins.txt: {entry!r} must be name:version"
    plugins = dict(entry.split(":", 1) for entry in entries)
    for plugin, version in plugins.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", plugin), f"bad plugin name {plugin!r}"
        assert re.fullmatch(r"\d[\w.-]*", version) and version not in ("latest", "experimental"), (
            f"{plugin} is not pinned to a version: {version!r}"
        )
    assert {"configuration-as-code", "job-dsl", "workflow-aggregator", "git"} <= set(plugins)
    dockerfile = (JENKINS_DIR / "Dockerfile").read_text()
    assert re.search(r"jenkins-plugin-cli --plugin-file \S*plugins\.txt --latest false", dockerfile), (
        "dependencies must not float to their latest versions"
    )


def jenkinsfile_code() -> str:
    text = re.sub(r"/\*.*?\*/", "", JENKINSFILE.read_text(), flags=re.DOTALL)
    return re.sub(r"(?m)(^|\s)//.*$", r"\1", text)


SH_STEP = re.compile(
    r"""(?<![\w.$])sh\s*\(?\s*(?:script\s*:\s*)?(?P<q>'''|\"\"\"|'|")(?P<cmd>.*?)(?P=q)""", re.DOTALL
)
SH_WORD = re.compile(r"(?<![\w.$])sh\b(?!\.)(?=\s*[\('\"]|\s+script\s*:)")


def test_jenkinsfile_steps_are_run_sh_verbs() -> None:
    code = jenkinsfile_code()
    steps = [m["cmd"].strip() for m in SH_STEP.finditer(code)]
    assert len(steps) == len(SH_WORD.findall(code)), "an sh step is written in a form this test cannot read"
    assert not re.search(r"(?<![\w.])(bat|powershell|pwsh)\s*[\('\"]", code), "steps must be sh steps"
    assert steps, "the Jenkinsfile has no sh step"
    for command in steps:
        match = re.fullmatch(r"bash run\.sh (\w+)(?: [\w .=/-]+)?", command)
        assert match, f"step {command!r} must be `bash run.sh <verb> [args]`"
        assert match[1] in RUN_SH_VERBS, f"step {command!r} calls an unknown run.sh verb"
    for wanted in ("bash run.sh setup", "bash run.sh lint", "bash run.sh test unit",
                   "bash run.sh test services", "bash run.sh build"):
        assert wanted in steps, f"the pipeline never runs `{wanted}`"
