#!/usr/bin/env bash
# One-shot `elk-setup` (docker-compose.yml, elk profile), run once Elasticsearch is healthy and before
# Kibana and Filebeat start:
#   1. sets the password of the built-in kibana_system user, which Kibana logs in as;
#   2. puts the lifecycle policy of the log indices (ilm-policy.json: delete after 7 days);
#   3. puts the index template of the log indices (index-template.json).
# Idempotent: every step is a PUT/POST of the same content. Needs ELASTIC_PASSWORD and
# KIBANA_SYSTEM_PASSWORD in its environment; passwords go to curl on stdin, never on a command line.
set -euo pipefail

ES_URL="${ES_URL:-http://elasticsearch:9200}"
ATTEMPTS="${SETUP_ATTEMPTS:-20}"
RETRY_SECONDS="${SETUP_RETRY_SECONDS:-3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${ELASTIC_PASSWORD:?ELASTIC_PASSWORD is not set}"
: "${KIBANA_SYSTEM_PASSWORD:?KIBANA_SYSTEM_PASSWORD is not set}"

json_escape() { printf '%s' "$1" | sed 's/[\\"]/\\&/g'; }

# es METHOD PATH [curl args...]: prints the body, returns 0 only on a 2xx answer.
es() {
  local method="$1" path="$2" out code
  shift 2
  out="$(mktemp)"
  code="$(printf 'user = "elastic:%s"\n' "$(json_escape "$ELASTIC_PASSWORD")" \
    | curl -sS -K - -o "$out" -w '%{http_code}' -X "$method" -H 'Content-Type: application/json' \
        "$ES_URL$path" "$@" || true)"
  cat "$out"; echo
  rm -f "$out"
  [[ "$code" == 2* ]]
}

retry() {  # retry DESCRIPTION COMMAND...: Elasticsearch may still be electing itself or loading security
  local what="$1" attempt output
  shift
  output="$(mktemp)"
  for attempt in $(seq 1 "$ATTEMPTS"); do
    if "$@" >"$output" 2>&1; then
      echo "elk-setup: $what"
      rm -f "$output"
      return 0
    fi
    echo "elk-setup: $what: attempt $attempt of $ATTEMPTS failed: $(head -c 300 "$output")"
    [[ $attempt -eq $ATTEMPTS ]] || sleep "$RETRY_SECONDS"
  done
  rm -f "$output"
  echo "elk-setup: could not $what" >&2
  return 1
}

set_kibana_password() {
  local body status=0
  body="$(mktemp)"
  printf '{"password":"%s"}' "$(json_escape "$KIBANA_SYSTEM_PASSWORD")" >"$body"
  es POST /_security/user/kibana_system/_password --data-binary "@$body" || status=$?
  rm -f "$body"
  return "$status"
}

retry "set the kibana_system password" set_kibana_password
retry "put the lifecycle policy ride-mlops-logs" es PUT /_ilm/policy/ride-mlops-logs --data-binary "@$HERE/ilm-policy.json"
retry "put the index template ride-mlops-logs" es PUT /_index_template/ride-mlops-logs --data-binary "@$HERE/index-template.json"
