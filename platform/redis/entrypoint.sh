#!/bin/sh
# Starts redis-server with REDIS_PASSWORD from a mode-600 config file, so `ps` never shows it.
set -eu
: "${REDIS_PASSWORD:?}"
umask 077
conf="$(mktemp /tmp/redis.XXXXXX.conf)"
escaped="$(printf '%s' "$REDIS_PASSWORD" | sed 's/\\/\\\\/g; s/"/\\"/g')"
printf 'requirepass "%s"\n' "$escaped" > "$conf"
exec redis-server "$conf" "$@"
