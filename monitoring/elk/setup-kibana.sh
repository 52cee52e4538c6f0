#!/usr/bin/env bash
# One-shot `kibana-setup` (docker-compose.yml, elk profile), run once Kibana is healthy: imports the
# saved objects of kibana/*.ndjson (the data view of the log indices and the saved searches) and makes
# that data view Kibana's default. Idempotent: the import overwrites objects with the same id.
# Needs ELASTIC_PASSWORD in its environment; it goes to curl on stdin, never on a command line.
set -euo pipefail

KIBANA_URL="${KIBANA_URL:-http://kibana:5601}"
ATTEMPTS="${SETUP_ATTEMPTS:-20}"
RETRY_SECONDS="${SETUP_RETRY_SECONDS:-3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_VIEW_ID="ride-mlops-logs"
: "${ELASTIC_PASSWORD:?ELASTIC_PASSWORD is not set}"

json_escape() { printf '%s' "$1" | sed 's/[\\"]/\\&/g'; }

kibana() {  # kibana METHOD PATH [curl args...]: prints the body, returns 0 only on a 2xx answer.
  local method="$1" path="$2" out code
  shift 2
  out="$(mktemp)"
  code="$(printf 'user = "elastic:%s"\n' "$(json_escape "$ELASTIC_PASSWORD")" \
    | curl -sS -K - -o "$out" -w '%{http_code}' -X "$method" -H 'kbn-xsrf: true' "$KIBANA_URL$path" "$@" || true)"
  cat "$out"; echo
  rm -f "$out"
  [[ "$code" == 2* ]]
}

import_objects() {
  local file="$1" body
  body="$(kibana POST '/api/saved_objects/_import?overwrite=true' --form "file=@$file")" || { echo "$body"; return 1; }
  # A 200 answer can still report objects that failed: "success" must be true.
  if ! grep -Eq '"success": *true' <<<"$body"; then echo "$body"; return 1; fi
}

shopt -s nullglob
files=("$HERE"/kibana/*.ndjson)
[[ ${#files[@]} -gt 0 ]] || { echo "kibana-setup: no saved objects in $HERE/kibana" >&2; exit 1; }
for file in "${files[@]}"; do
  for attempt in $(seq 1 "$ATTEMPTS"); do
    if out="$(import_objects "$file" 2>&1)"; then
      echo "kibana-setup: imported $(basename "$file")"
      break
    fi
    if [[ $attempt -eq $ATTEMPTS ]]; then
      echo "kibana-setup: could not import $(basename "$file"): ${out:0:1000}" >&2
      exit 1
    fi
    echo "kibana-setup: import of $(basename "$file"), attempt $attempt of $ATTEMPTS failed: ${out:0:300}"
    sleep "$RETRY_SECONDS"
  done
done

if ! out="$(kibana POST /api/data_views/default -H 'Content-Type: application/json' \
    -d "{\"data_view_id\":\"$DATA_VIEW_ID\",\"force\":true}")"; then
  echo "kibana-setup: could not make $DATA_VIEW_ID the default data view: $out" >&2
  exit 1
fi
echo "kibana-setup: default data view is $DATA_VIEW_ID"
