#!/usr/bin/env bash
# `make test` builds the CPU image up front, while the Go build of the test cluster runs
# (the image build is mostly downloads and disk, the Go build CPU): the image tests then find
# it cached. Starts dockerd when none answers and records its pid in $CACHE/dockerd.make.pid
# so that `make test` stops it afterwards (tests/infra/stop-dockerd.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${CLSACT_CACHE:-$HOME/.cache/clsact}"
mkdir -p "$CACHE"
started="$(bash docker/dockerd.sh)"
case "$started" in started*) echo "${started#started }" > "$CACHE/dockerd.make.pid" ;; esac
bash docker/build.sh cpu >/dev/null
