#!/usr/bin/env bash
# Build the base image of clsact's images from Debian's archive, without any registry:
# `debootstrap --variant=minbase bookworm` + `docker import`. Python 3.11 and the few system
# libraries Paddle needs come from Debian's packages (see PACKAGES).
#
# Prints the image's tag on stdout. The tag carries a hash of this script, so editing the
# package list builds a new base; an existing tag is reused. Needs root and a running Docker
# engine (docker/dockerd.sh); installs debootstrap when missing.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DOCKER (client binary).
set -euo pipefail

SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-/usr/bin/docker}"
# python3 + venv: the image's interpreter (3.11, Paddle's cp311 wheels); libgomp1: OpenMP of
# opencv/scikit-learn; ca-certificates: TLS to S3 endpoints; passwd: the non-root user.
PACKAGES=python3,python3-venv,libgomp1,ca-certificates,passwd
KEY="$(sha256sum "$0" | cut -c1-10)"
TAG="clsact-base:$SUITE-$KEY"
log() { echo "base-image.sh: $*" >&2; }

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    log "error: building the base image needs root (debootstrap); or pass BASE_IMAGE=python:3.11-slim-bookworm"
    exit 1
fi
command -v debootstrap >/dev/null || bash "$(dirname "$0")/apt.sh" install debootstrap
ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/clsact-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT
log "debootstrap $SUITE ($PACKAGES) from $MIRROR (about a minute)"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
        > "$ROOTFS.log" 2>&1; then
    tail -20 "$ROOTFS.log" >&2
    log "error: debootstrap failed (log: $ROOTFS.log)"
    exit 1
fi
rm -f "$ROOTFS.log"
# What a container never needs: package caches and lists, docs.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE" - "$TAG" >/dev/null
log "built $TAG"
echo "$TAG"
