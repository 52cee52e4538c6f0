"""Jenkins as code: casc.yaml, plugins.txt, the job DSL script inside casc.yaml, and the Jenkinsfile's
stages, checked without a Jenkins. (tests/unit/test_compose_jenkins.py checks the container; test_run_sh.py
that every Jenkinsfile step is a `run.sh` verb.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
JENKINS_DIR = ROOT / "platform" / "jenkins"
JENKINSFILE = ROOT / "Jenkinsfile"
PIPELINE = [  # stage name -> its one step, in order
    ("Setup", "bash run.sh setup"),
    ("Lint", "bash run.sh lint"),
    ("Unit tests", "bash run.sh test unit"),
    ("Service tests", "bash run.sh test services"),
    ("Build images", "bash run.sh build"),
    ("Deploy", "bash run.sh deploy --mode docker"),
]


def groovy_code(text: str) -> str:
    """Groovy without comments and with string contents blanked, so brackets can be counted."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    text = re.sub(r"(?m)(^|\s)//.*$", r"\1", text)
    return re.sub(r"'''.*?'''|\"\"\".*?\"\"\"|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"", "''", text, flags=re.DOTALL)


def assert_balanced(code: str, what: str) -> None:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for number, line in enumerate(code.splitlines(), 1):
        assert "'" not in line.replace("''", ""), f"{what}:{number}: unterminated string"
        for char in line:
            if char in "([{":
                stack.append((char, number))
            elif char in pairs:
                assert stack and stack[-1][0] == pairs[char], f"{what}:{number}: unbalanced {char!r}"
                stack.pop()
    assert not stack, f"{what}: {stack[-1][0]!r} opened on line {stack[-1][1]} is never closed"


@pytest.fixture(scope="module")
def casc() -> dict:
    return yaml.safe_load((JENKINS_DIR / "casc.yaml").read_text())


@pytest.fixture(scope="module")
def job_dsl(casc) -> str:
    scripts = [job["script"] for job in casc["jobs"]]
    assert len(scripts) == 1, "one seed script, defining the pipeline job"
    return scripts[0]


def test_casc_yaml_configures_security_and_the_job(casc) -> None:
    assert casc["jenkins"]["securityRealm"]["local"]["allowsSignup"] is False
    strategy = casc["jenkins"]["authorizationStrategy"]["loggedInUsersCanDoAnything"]
    assert strategy["allowAnonymousRead"] is False
    assert "crumbIssuer" in casc["jenkins"], "CSRF protection must stay on"
    assert casc["unclassified"]["location"]["url"]


def test_job_dsl_script_is_well_formed_and_runs_the_repository_jenkinsfile(job_dsl) -> None:
    assert_balanced(groovy_code(job_dsl), "casc.yaml job DSL")
    assert re.search(r"^\s*pipelineJob\('ride-mlops'\)\s*\{", job_dsl, re.MULTILINE)
    script_path = re.search(r"scriptPath\('([^']+)'\)", job_dsl)
    assert script_path and (ROOT / script_path[1]).is_file(), f"the job runs {script_path and script_path[1]}"
    assert re.search(r"cpsScm\s*\{", job_dsl) and re.search(r"\bgit\s*\{", job_dsl), (
        "the job reads the Jenkinsfile from git")
    url = re.search(r"url\('([^']+)'\)", job_dsl)[1]
    assert url == "file:///srv/ride-mlops.git", f"the job clones {url}, not the mounted repository"
    branch = re.search(r"branch\('([^']+)'\)", job_dsl)[1]
    assert branch == "*/main"
    assert "scmpoll_spec(" in job_dsl, "the job polls the repository for changes"


def test_the_job_s_branch_exists() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", "refs/heads/main"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("this checkout has no local main branch (a CI clone)")
    assert result.stdout.strip()


def test_plugins_cover_what_the_configuration_and_pipeline_use() -> None:
    entries = [line.strip() for line in (JENKINS_DIR / "plugins.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    plugins = dict(entry.split(":", 1) for entry in entries)
    assert len(plugins) == len(entries), "a plugin is listed twice"
    # casc.yaml (configuration-as-code), its jobs: (job-dsl), the declarative Jenkinsfile
    # (workflow-aggregator) and the job's git checkout (git).
    assert {"configuration-as-code", "job-dsl", "workflow-aggregator", "git"} <= set(plugins)


def test_jenkinsfile_is_well_formed() -> None:
    code = groovy_code(JENKINSFILE.read_text())
    assert_balanced(code, "Jenkinsfile")
    assert re.match(r"\s*pipeline\s*\{", code), "a declarative pipeline"


def test_jenkinsfile_runs_the_stages_in_order_each_with_its_run_sh_verb() -> None:
    text = JENKINSFILE.read_text()
    stages = [(m.group(1), m.start()) for m in re.finditer(r"stage\('([^']+)'\)", text)]
    assert [name for name, _ in stages] == [name for name, _ in PIPELINE]
    bounds = [start for _, start in stages] + [len(text)]
    for (name, step), start, end in zip(PIPELINE, bounds, bounds[1:], strict=False):
        steps = re.findall(r"\bsh\s+'([^']+)'", text[start:end])
        assert steps == [step], f"stage {name!r} must run exactly `{step}`, runs {steps}"


def test_deploy_reaches_the_compose_platform_or_says_it_deployed_nothing() -> None:
    # Local mode inside the Jenkins container would start a second platform there, on Jenkins's own port.
    text = JENKINSFILE.read_text()
    deploy = text[text.index("stage('Deploy')"):]
    assert "fileExists('/var/run/docker.sock')" in deploy and "--mode docker" in deploy
    assert re.search(r"echo '[^']*nothing was deployed", deploy), "without an engine the stage must say so"
    assert "bash run.sh deploy'" not in deploy, "a deploy without --mode docker would run local mode in Jenkins"


def test_run_sh_has_every_verb_the_pipeline_calls() -> None:
    help_text = subprocess.run(["bash", str(ROOT / "run.sh"), "help"], capture_output=True, text=True,
                               timeout=60).stdout
    for _, step in PIPELINE:
        verb = step.split()[2]
        assert f"bash run.sh {verb}" in help_text, f"`bash run.sh help` does not list `{verb}`"
