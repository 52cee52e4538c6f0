#!/usr/bin/env bash
# Starts the broker from KAFKA_* variables (KAFKA_LISTENERS -> listeners=...), formatting the data
# folder with CLUSTER_ID on its first start. `healthcheck` runs the API-versions probe instead.
set -euo pipefail
java_run() {  # java_run HEAP MAIN_CLASS ARGS...
  local heap="$1"; shift
  exec java $heap -XX:+UseG1GC -Dlog4j2.configurationFile=/opt/kafka/log4j2.yaml -cp '/opt/kafka/libs/*' "$@"
}
if [[ "${1:-}" == healthcheck ]]; then
  (java_run "-Xmx128m" org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server 127.0.0.1:9092) >/dev/null
  exit $?
fi

props=/opt/kafka/config/server.properties
: > "$props"
while IFS='=' read -r key value; do
  [[ "$key" == KAFKA_* && "$key" != KAFKA_HEAP_OPTS ]] || continue
  name="${key#KAFKA_}"; name="${name,,}"; echo "${name//_/.}=$value" >> "$props"
done < <(env)
log_dir="$(sed -n 's/^log\.dirs=//p' "$props")"
if [[ ! -f "${log_dir:-/var/lib/kafka/data}/meta.properties" ]]; then
  (java_run "-Xmx256m" kafka.tools.StorageTool format -t "${CLUSTER_ID:?}" -c "$props" --ignore-formatted) >/dev/null
fi
java_run "${KAFKA_HEAP_OPTS:--Xmx512m}" kafka.Kafka "$props"
