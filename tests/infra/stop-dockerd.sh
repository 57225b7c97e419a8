#!/usr/bin/env bash
# Stop the dockerd that tests/infra/cpu-image.sh started for `make test`, if any.
CACHE="${CLSACT_CACHE:-$HOME/.cache/clsact}"
PIDFILE="$CACHE/dockerd.make.pid"
[ -f "$PIDFILE" ] || exit 0
pid="$(cat "$PIDFILE")"
rm -f "$PIDFILE"
kill "$pid" 2>/dev/null || exit 0
for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
kill -9 "$pid" 2>/dev/null || true
