#!/bin/sh
# Install the system packages the image needs when the base lacks them (apt bases only):
# python3 with venv, libgomp1 (OpenMP), ca-certificates. A no-op on docker/base-image.sh's
# base, which has them all; fills the gaps of python:3.11-slim or a CUDA runtime base.
set -eu
missing=""
python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$missing python3 python3-venv"
ldconfig -p 2>/dev/null | grep -q 'libgomp\.so\.1 ' || missing="$missing libgomp1"
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing="$missing ca-certificates"
command -v useradd >/dev/null || missing="$missing passwd"
if [ -n "$missing" ]; then
    if ! command -v apt-get >/dev/null; then
        echo "system-packages.sh: the base image lacks$missing and has no apt-get: use a Debian/Ubuntu base with Python >= 3.10" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    rm -rf /var/lib/apt/lists/*
fi
