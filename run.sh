#!/usr/bin/env bash
# The platform's front door. `bash run.sh help` lists everything it does.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

UV_VERSION="0.13.8"
TOOLS_DIR="$ROOT/.tools"
UV="$TOOLS_DIR/bootstrap/bin/uv"
VENV_PY="$ROOT/.venv/bin/python"
STACKS="feast mlflow airflow kafka monitoring elk jenkins serving"
STACK_VERBS="up down restart status logs"
DEBIAN_PACKAGES="postgresql redis-server prometheus haproxy"

usage() {
  cat <<EOF
usage: bash run.sh <command>

Platform
  bash run.sh <stack|all> <up|down|restart|status|logs> [--volumes] [--follow] [--mode local|docker]
      stacks: ${STACKS// /, }
      up       start the stack (and what it needs) and wait until every service is healthy
               serving up --replicas N: N API replicas behind HAProxy (SERVING_REPLICAS)
               kafka up --consumers N: N stream consumers in one consumer group (STREAM_CONSUMERS)
               airflow up --workers N: CeleryExecutor with N workers, kept for this platform (0: AIRFLOW_EXECUTOR)
      down     stop it, leaving no process behind; --volumes also deletes its data
      restart  down then up (data kept)
      status   table of service, stack, mode, URL, restarts and health (local mode restarts a crashed service)
      logs     last lines of each service's log; --follow keeps following
  bash run.sh setup [--mode docker]
                          local: install what local mode needs (venv from uv.lock, Debian packages, Kafka jars)
                          docker: also install and start a Docker engine and the compose plugin when missing
  bash run.sh demo        the whole story: up, land and ingest data, materialize, train and register,
                          batch-score, serve, send a real request, print the ranked answer and every URL
  bash run.sh urls        every URL with its login (from .env) and the serving API's token
  bash run.sh scenario --drifted|--normal [--requests N] [--rate R]
                          bookings through the running API, drifted or not, to watch the dashboards,
                          alerts and retraining trigger react
  bash run.sh scenario --rollout better|worse [--rate R]
                          plant a better or worse challenger, canary it at 10 % and send labelled traffic
                          until the monitoring service promotes or rolls it back; prints the evidence
  bash run.sh scenario --project penguins --drifted|--normal
                          penguin classifications through /models/penguin_species/predict, drifted or
                          not, with feedback, to watch that model's drift and quality react
  bash run.sh rollout start --mode canary|shadow|ab [--share S] [--version V] [--outcomes N] [--hours H]
  bash run.sh rollout status|promote|rollback [--reason TEXT] [--json]
                          try the challenger on live traffic; status shows the last comparison,
                          aliases and events; promote/rollback move @champion by hand
  bash run.sh notebook [--port P]
                          JupyterLab on 127.0.0.1 with the platform's settings (notebooks/driver_poc.ipynb)

Development
  bash run.sh test [unit|services|faults|docker|all] [pytest args]
                          run the tests (default: all = unit, services, then docker), starting services itself
  bash run.sh lint        static checks (ruff, shell syntax)
  bash run.sh build       build the platform's images (docker mode; makes the base image when no registry gives it)
  bash run.sh deploy      apply the feature repo, publish the DAGs, roll the serving API onto this checkout

Mode: docker when \`docker info\` answers, else local. --mode or PLATFORM_MODE forces one.
Configuration: .env (created from .env.example with random secrets on first use).
EOF
}

die() { echo "error: $*" >&2; exit 1; }
log() { echo "==> $*"; }

# ---------------------------------------------------------------------------------------------
# Configuration: .env with generated secrets
# ---------------------------------------------------------------------------------------------
ensure_env_file() {
  # Creates .env on first use; later, appends any variable .env.example gained since (upgrades).
  local output
  output="$(python3 - "$ROOT/.env.example" "$ROOT/.env" <<'PY'
import base64, os, secrets, sys
source, target = sys.argv[1], sys.argv[2]

def value(raw):
    if raw == "__GENERATE_FERNET__":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    if raw == "__GENERATE__":
        return secrets.token_urlsafe(32)
    return raw

existing = set()
if os.path.exists(target):
    existing = {line.split("=", 1)[0].strip() for line in open(target) if "=" in line and not line.startswith("#")}
lines, added = [], []
for line in open(source):
    key, sep, raw = line.rstrip("\n").partition("=")
    if sep and not line.startswith("#"):
        if key.strip() in existing:
            continue
        added.append(key.strip())
        line = f"{key}={value(raw.strip())}\n"
    lines.append(line)
if not existing:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(lines)
    print("created .env with random secrets (kept out of git)")
elif added:
    with open(target, "a") as out:
        out.write("\n# Added from .env.example\n")
        out.writelines(f"{line}" for line in lines if "=" in line and not line.startswith("#"))
    print(f"added to .env: {', '.join(added)}")
PY
)"
  [[ -z "$output" ]] || log "$output"
}

env_value() {  # env_value KEY DEFAULT: environment first, then .env
  local key="$1" default="$2" value
  if [[ -n "${!key:-}" ]]; then echo "${!key}"; return; fi
  value="$(grep -E "^${key}=" "$ROOT/.env" 2>/dev/null | tail -n1 | cut -d= -f2- || true)"
  echo "${value:-$default}"
}

# ---------------------------------------------------------------------------------------------
# Mode
# ---------------------------------------------------------------------------------------------
MODE_FLAG=""
docker_answers() {
  # `docker info` within 5 s, without coreutils' `timeout` (macOS has none): a hung engine is no engine.
  command -v docker >/dev/null 2>&1 || return 1
  docker info >/dev/null 2>&1 &
  local pid=$! tenths=0
  while kill -0 "$pid" 2>/dev/null; do
    if (( tenths >= 50 )); then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return 1; fi
    sleep 0.1; tenths=$((tenths + 1))
  done
  wait "$pid"
}

resolve_mode() {
  local wanted="${MODE_FLAG:-$(env_value PLATFORM_MODE auto)}" source="PLATFORM_MODE"
  [[ -n "$MODE_FLAG" ]] && source="--mode"
  case "$wanted" in
    local|docker) MODE="$wanted"; MODE_WHY="forced by $source" ;;
    auto)
      if docker_answers; then
        MODE=docker; MODE_WHY="\`docker info\` answers"
      else
        MODE=local; MODE_WHY="no Docker engine answers \`docker info\`"
      fi ;;
    *) die "unknown mode '$wanted' (expected local, docker or auto)" ;;
  esac
  # Every process started from here on sees the mode that was picked, not `auto` again: settings
  # that depend on it (the serving API's auth, for one) agree between the client and the server.
  export PLATFORM_MODE="$MODE"
  echo "mode: $MODE ($MODE_WHY)"
}

# ---------------------------------------------------------------------------------------------
# Setup (idempotent: each step checks before it works)
# ---------------------------------------------------------------------------------------------
apt_install() {  # apt_install PACKAGE...: Debian's packages, without recommends (as root)
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing_debian_packages() {
  local missing=()
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  [[ -x /usr/sbin/haproxy ]] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  echo "${missing[*]:-}"
}

setup_debian_packages() {
  local missing
  missing="$(missing_debian_packages)"
  [[ -z "$missing" ]] && return 0
  if [[ "$(id -u)" -ne 0 ]]; then
    die "missing Debian packages: $missing. Install them with:
    sudo apt-get update && sudo apt-get install -y $missing
then run \`bash run.sh setup\` again."
  fi
  log "installing Debian packages: $missing"
  # shellcheck disable=SC2086
  apt_install $missing
  # Debian starts nothing without systemd, but stop any cluster a package post-install may have started.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1, $2}' | while read -r v c; do
      pg_ctlcluster "$v" "$c" stop || true
    done
  fi
}

setup_uv() {
  if [[ -x "$UV" ]] && [[ "$("$UV" --version | awk '{print $2}')" == "$UV_VERSION" ]]; then return 0; fi
  log "installing uv $UV_VERSION into .tools/"
  python3 -m venv "$TOOLS_DIR/bootstrap"
  "$TOOLS_DIR/bootstrap/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
}

setup_venv() {
  local stamp="$ROOT/.venv/.synced-lock"
  if [[ -x "$VENV_PY" && -f "$stamp" ]] && cmp -s "$stamp" "$ROOT/uv.lock"; then return 0; fi
  log "creating .venv from uv.lock"
  [[ -x "$VENV_PY" ]] || "$UV" venv --seed --python 3.11 "$ROOT/.venv" >/dev/null
  UV_COMPILE_BYTECODE=1 "$UV" sync --frozen --compile-bytecode --quiet
  cp "$ROOT/uv.lock" "$stamp"
}

setup_kafka_jars() {
  local libs="$ROOT/platform/kafka/target/kafka-libs" stamp="$ROOT/platform/kafka/target/.resolved-pom"
  if [[ -d "$libs" && -f "$stamp" ]] && cmp -s "$stamp" "$ROOT/platform/kafka/pom.xml"; then return 0; fi
  log "resolving the Kafka broker's jars with Maven"
  rm -rf "$libs"
  mvn -q -B -Dstyle.color=never -f "$ROOT/platform/kafka/pom.xml" package
  cp "$ROOT/platform/kafka/pom.xml" "$stamp"
}

COMPOSE_VERSION="v2.40.3"
COMPOSE_PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"

setup_docker_engine() {
  # An engine and compose v2 where there are none: Debian's docker.io, the compose plugin built from
  # the Go module proxy (it is no bookworm package). As non-root, print the commands instead.
  local root=1
  [[ "$(id -u)" -eq 0 ]] || root=0
  if ! command -v dockerd >/dev/null 2>&1 && ! docker_answers; then
    if (( !root )); then
      die "no Docker engine here. Install and start one, then run this again:
    sudo apt-get update && sudo apt-get install -y docker.io && sudo systemctl start docker   # or: sudo dockerd &"
    fi
    log "installing Debian's Docker engine (docker.io)"
    apt_install docker.io debootstrap
  fi
  if ! docker_answers; then
    (( root )) || die "the Docker engine does not answer. Start it: sudo systemctl start docker   # or: sudo dockerd &"
    log "starting dockerd (log: $TOOLS_DIR/dockerd.log)"
    mkdir -p "$TOOLS_DIR"
    nohup dockerd >"$TOOLS_DIR/dockerd.log" 2>&1 &
    local tries=0
    until docker_answers; do
      (( tries++ < 60 )) || die "dockerd did not answer within 60 s; see $TOOLS_DIR/dockerd.log"
      sleep 1
    done
  fi
  if ! docker compose version >/dev/null 2>&1; then
    (( root )) || die "the docker compose v2 plugin is missing. Install it (Docker's docker-compose-plugin package),
    or as root run \`bash run.sh setup --mode docker\`, which builds it from source with Go."
    command -v go >/dev/null 2>&1 || die "the compose plugin is missing and Go is needed to build it: install Go 1.24+"
    log "building the docker compose plugin $COMPOSE_VERSION with Go (about 3 minutes)"
    local src
    src="$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    local work="$TOOLS_DIR/compose-src"
    rm -rf "$work" && mkdir -p "$TOOLS_DIR" "$COMPOSE_PLUGIN_DIR" && cp -r "$src" "$work" && chmod -R u+w "$work"
    (cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
       -o "$COMPOSE_PLUGIN_DIR/docker-compose" ./cmd)
    rm -rf "$work"
  fi
  if ! command -v debootstrap >/dev/null 2>&1 && (( root )); then
    apt_install debootstrap
  fi
  log "docker: $(docker version --format 'engine {{.Server.Version}}' 2>/dev/null), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')"
}

cmd_setup() {
  local started=$SECONDS
  ensure_env_file
  if [[ "${MODE_FLAG:-}" == docker ]]; then
    # Docker mode needs an engine, compose and python3 on the host; the images bring the rest.
    setup_docker_engine
    log "setup done in $((SECONDS - started))s"
    return 0
  fi
  setup_debian_packages
  setup_uv
  setup_venv
  setup_kafka_jars
  log "setup done in $((SECONDS - started))s"
}

# ---------------------------------------------------------------------------------------------
# Stacks
# ---------------------------------------------------------------------------------------------
compose_env() {
  # The build secret's CA bundle: BUILD_CA_BUNDLE, else the host's system bundle (mlops_platform/compose_project.py).
  if [[ -z "${BUILD_CA_BUNDLE:-}" ]]; then
    BUILD_CA_BUNDLE="$(env_value BUILD_CA_BUNDLE "")"
    [[ -n "$BUILD_CA_BUNDLE" ]] || { [[ -f /etc/ssl/certs/ca-certificates.crt ]] && BUILD_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt; } \
      || BUILD_CA_BUNDLE="$ROOT/platform/docker/no-extra-ca.pem"
    export BUILD_CA_BUNDLE
  fi
}
compose() { compose_env; docker compose --env-file "$ROOT/.env" -f "$ROOT/docker-compose.yml" "$@"; }

require_docker() {
  docker_answers || die "docker mode, but no Docker engine answers \`docker info\`: run \`bash run.sh setup --mode docker\`"
  docker compose version >/dev/null 2>&1 || die "docker mode needs the compose v2 plugin: run \`bash run.sh setup --mode docker\`"
  command -v python3 >/dev/null 2>&1 || die "docker mode needs python3 on the host"
}

stack_docker() {
  require_docker
  python3 -m mlops_platform.docker_mode "$@"
}

cmd_stack() {
  local stack="$1" verb="$2"; shift 2
  local extra=() WORKERS_FLAG=""
  while [[ $# -gt 0 ]]; do
    local arg="$1"; shift
    case "$arg" in
      # How many instances of a scaled service this `up` runs: exported, so both modes read the setting.
      --replicas|--consumers)
        [[ "$verb" == up || "$verb" == restart ]] || die "$arg goes with up or restart"
        [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] || die "$arg needs a positive number of instances, got '${1:-}'"
        if [[ "$arg" == --replicas ]]; then
          [[ "$stack" == serving || "$stack" == all ]] || die "--replicas scales the serving API: use it with serving or all"
          export SERVING_REPLICAS="$1"
        else
          [[ "$stack" == kafka || "$stack" == all ]] || die "--consumers scales the stream consumer: use it with kafka or all"
          export STREAM_CONSUMERS="$1"
        fi
        shift ;;
      # Airflow on Celery with N workers, remembered for this platform; 0 returns to AIRFLOW_EXECUTOR (docs/airflow.md).
      --workers)
        [[ "$verb" == up || "$verb" == restart ]] || die "--workers goes with up or restart"
        [[ "$stack" == airflow || "$stack" == all ]] || die "--workers scales Airflow's Celery workers: use it with airflow or all"
        [[ "${1:-}" =~ ^[0-9]+$ ]] || die "--workers needs a number of Celery workers (0 returns to AIRFLOW_EXECUTOR), got '${1:-}'"
        WORKERS_FLAG="$1"; extra+=(--workers "$1"); shift ;;
      --volumes) [[ "$verb" == down ]] || die "--volumes goes with down"; extra+=(--volumes) ;;
      --follow|-f) [[ "$verb" == logs ]] || die "--follow goes with logs"; extra+=(--follow) ;;
      *) usage >&2; die "unknown option '$arg'" ;;
    esac
  done
  ensure_env_file
  resolve_mode
  if [[ "$MODE" == docker ]]; then
    [[ -z "$WORKERS_FLAG" ]] || die "--workers is local mode's. In docker mode set AIRFLOW_EXECUTOR=CeleryExecutor in .env, then:
    docker compose --profile airflow up -d --scale airflow-worker=$WORKERS_FLAG"
    stack_docker "$stack" "$verb" "${extra[@]}"
  else
    [[ -x "$VENV_PY" ]] || cmd_setup
    "$VENV_PY" -m mlops_platform.cli "$stack" "$verb" "${extra[@]}"
  fi
}

# ---------------------------------------------------------------------------------------------
# Development verbs
# ---------------------------------------------------------------------------------------------
cmd_test() {
  local suite="all"
  if [[ $# -gt 0 && "$1" =~ ^(unit|services|faults|docker|all)$ ]]; then suite="$1"; shift; fi
  cmd_setup
  case "$suite" in
    unit) log "running the unit tests"; "$VENV_PY" -m pytest -m "not services and not docker" "$@" ;;
    services) log "running the service tests"; "$VENV_PY" -m pytest -m "services" "$@" ;;
    faults) log "running the fault-injection suite"; "$VENV_PY" -m pytest -m "faults" "$@" tests/services ;;
    docker) test_docker "$@" ;;
    all)
      log "running the unit and service tests"
      "$VENV_PY" -m pytest -m "not docker" "$@"
      test_docker "$@" ;;
  esac
}

test_docker() {
  # The docker suite runs the platform in containers: it needs an engine, which setup starts as root.
  if ! (MODE_FLAG=docker setup_docker_engine); then
    echo "SKIPPED docker suite: no Docker engine can be started here (see above); run as root or start one"
    return 0
  fi
  if ! command -v chromium >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]]; then
    log "installing Debian's chromium for the browser check"
    apt_install chromium
  fi
  log "running the docker tests"
  "$VENV_PY" -m pytest -m docker -p no:cacheprovider "$@" tests/docker
}

cmd_lint() {
  cmd_setup
  log "ruff"
  "$VENV_PY" -m ruff check "$ROOT"
  log "shell syntax"
  bash -n "$ROOT/run.sh" "$ROOT/.ci/run"
}

cmd_build() {
  ensure_env_file
  resolve_mode
  [[ "$MODE" == docker ]] || die "building images needs a Docker engine (docker mode); local mode runs the same code from .venv"
  stack_docker all build
}

cmd_deploy() {
  ensure_env_file
  resolve_mode
  if [[ "$MODE" == docker ]]; then
    stack_docker all build
    compose --profile feast run --rm feast-init
    # Recreated from the new image, the Airflow containers read the new DAGs.
    # The Celery workers only when there are any: naming a service with 0 replicas would start one.
    local workers=()
    [[ "$(env_value AIRFLOW_WORKERS 0)" == 0 ]] || workers=(airflow-worker)
    compose --profile airflow up -d --wait airflow-api-server airflow-scheduler airflow-dag-processor airflow-triggerer \
      "${workers[@]}"
    compose --profile monitoring exec -T prometheus wget -q -O- --post-data= http://127.0.0.1:9090/-/reload
    compose --profile serving up -d --no-deps --wait serving prediction-logger
  else
    [[ -x "$VENV_PY" ]] || cmd_setup
    "$VENV_PY" -m mlops_platform.deploy
  fi
}

platform_python() {  # platform_python MODULE ARGS...: a module of ours where the platform runs
  if [[ "$MODE" == docker ]]; then
    # Inside the monitoring service's container: our code, and the service names resolve.
    compose --profile monitoring exec -T monitoring-service python -m "$@"
  else
    [[ -x "$VENV_PY" ]] || cmd_setup
    "$VENV_PY" -m "$@"
  fi
}

cmd_scenario() {
  ensure_env_file
  resolve_mode
  local module=simulation.drift_scenario
  [[ " $* " == *" --rollout "* || " $* " == *" --rollout="* ]] && module=simulation.rollout_scenario
  [[ " $* " == *" --project penguins "* || " $* " == *" --project=penguins "* ]] && module=simulation.penguin_scenario
  platform_python "$module" "$@"
}

cmd_rollout() {
  ensure_env_file
  resolve_mode >&2  # stdout is the command's answer (`--json` prints one document)
  platform_python mlops_platform.rollout_cli "$@"
}

cmd_notebook() {
  ensure_env_file
  resolve_mode
  [[ -x "$VENV_PY" ]] || cmd_setup
  "$VENV_PY" -m mlops_platform.notebook "$@"
}

cmd_demo() {
  cmd_stack all up "$@"
  if [[ "$MODE" == docker ]]; then
    # The demo's driver runs in a container on the platform's network: the host needs no toolchain.
    compose --profile demo run --rm --no-deps demo
    cmd_urls
  else
    [[ -x "$VENV_PY" ]] || cmd_setup
    "$VENV_PY" -m simulation.demo
  fi
}

cmd_urls() {
  ensure_env_file
  python3 -m mlops_platform.docker_mode urls
}

# ---------------------------------------------------------------------------------------------
main() {
  local args=()
  local rollout=0
  while [[ $# -gt 0 ]]; do
    [[ ${#args[@]} -eq 0 && "$1" == rollout ]] && rollout=1
    if [[ $rollout == 1 ]]; then  # `rollout start --mode shadow|canary|ab` is the rollout's own mode
      case "$1 ${2:-}" in
        "--mode local" | "--mode docker" | "--mode=local "* | "--mode=docker "*) ;;  # the platform's
        --mode*) args+=("$1"); shift; continue ;;
      esac
    fi
    case "$1" in
      --mode) [[ $# -ge 2 ]] || die "--mode needs local or docker"; MODE_FLAG="$2"; shift 2 ;;
      --mode=*) MODE_FLAG="${1#--mode=}"; shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  set -- "${args[@]+"${args[@]}"}"
  [[ $# -ge 1 ]] || { usage >&2; exit 2; }
  case "$1" in
    help|-h|--help) usage ;;
    setup) cmd_setup ;;
    urls) cmd_urls ;;
    test) shift; cmd_test "$@" ;;
    lint) cmd_lint ;;
    build) cmd_build ;;
    deploy) cmd_deploy ;;
    demo) shift; cmd_demo "$@" ;;
    scenario) shift; cmd_scenario "$@" ;;
    rollout) shift; cmd_rollout "$@" ;;
    notebook) shift; cmd_notebook "$@" ;;
    *)
      local stack="$1" verb="${2:-}"
      if [[ "$stack" != all && " $STACKS " != *" $stack "* ]]; then
        usage >&2; echo "error: unknown stack or command '$stack'" >&2; exit 2
      fi
      if [[ " $STACK_VERBS " != *" $verb "* ]]; then
        usage >&2; echo "error: unknown verb '${verb}' for $stack (expected one of: $STACK_VERBS)" >&2; exit 2
      fi
      shift 2
      cmd_stack "$stack" "$verb" "$@" ;;
  esac
}

main "$@"
