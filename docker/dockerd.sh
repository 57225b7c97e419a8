#!/usr/bin/env bash
# Make a Docker engine answer on $DOCKER_HOST (default unix:///var/run/docker.sock).
#
# Uses the engine already running there if any; otherwise installs Debian's docker.io (root,
# once) and starts dockerd in the background with its data under $CLSACT_CACHE/docker, so
# images and build layers survive between runs. Prints "started PID" when this call started
# the daemon (the caller stops it: kill PID) or "running" when one was already there.
# Exits 1 with one line on stderr when no engine can be had.
set -euo pipefail

CACHE="${CLSACT_CACHE:-$HOME/.cache/clsact}"
SOCK="${DOCKER_HOST:-unix:///var/run/docker.sock}"
DOCKER=/usr/bin/docker   # Debian's client; another `docker` may come first on PATH
log() { echo "dockerd.sh: $*" >&2; }

if [ -x "$DOCKER" ] && DOCKER_HOST="$SOCK" "$DOCKER" info >/dev/null 2>&1; then
    echo running
    exit 0
fi
if ! command -v dockerd >/dev/null || [ ! -x "$DOCKER" ]; then
    if [ "$(id -u)" != 0 ]; then
        log "error: no Docker engine at $SOCK and no dockerd to start: install docker.io (needs root) or set DOCKER_HOST"
        exit 1
    fi
    bash "$(dirname "$0")/apt.sh" install docker.io
fi
if [ "$(id -u)" != 0 ]; then
    log "error: no Docker engine at $SOCK; starting dockerd needs root (or set DOCKER_HOST to a running engine)"
    exit 1
fi
case "$SOCK" in
    unix://*) ;;
    *) log "error: DOCKER_HOST=$SOCK does not answer and is not a local socket this script can serve"; exit 1 ;;
esac
mkdir -p "$CACHE/docker"
dockerd --data-root "$CACHE/docker" -H "$SOCK" --pidfile "$CACHE/dockerd.pid" \
    >"$CACHE/dockerd.log" 2>&1 &
PID=$!
for _ in $(seq 1 60); do
    if DOCKER_HOST="$SOCK" "$DOCKER" info >/dev/null 2>&1; then
        echo "started $PID"
        exit 0
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
        tail -5 "$CACHE/dockerd.log" >&2
        log "error: dockerd exited at start (log: $CACHE/dockerd.log)"
        exit 1
    fi
    sleep 0.5
done
kill "$PID" 2>/dev/null || true
log "error: dockerd did not answer within 30 s (log: $CACHE/dockerd.log)"
exit 1
