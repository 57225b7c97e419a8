#!/usr/bin/env bash
# The one way the Makefile's scripts install Debian packages on this machine (the image build
# installs into its own root file system with docker/system-packages.sh instead).
#
#   docker/apt.sh install PACKAGE...        install the packages not installed yet
#   docker/apt.sh source PACKAGE DIR        apt-get source --download-only PACKAGE into DIR
#                                           (adds the deb-src entries first when missing)
#
# Callers may run at once (`make test` sets up the venv, the test cluster and the CPU image in
# parallel): every apt step runs under one lock (flock on $CLSACT_APT_LOCK, waiting up to
# $CLSACT_APT_WAIT seconds, default 1800), and apt's own locks are waited for too
# (DPkg::Lock::Timeout), for an apt run outside clsact. `apt-get update` runs once: again only
# when the apt sources changed or the lists are older than a day (stamp: $CLSACT_APT_STAMP).
# A package the sources do not have ends in one line naming it. Needs root, except when
# nothing is missing.
set -euo pipefail

LOCK="${CLSACT_APT_LOCK:-/var/lock/clsact-apt.lock}"
WAIT="${CLSACT_APT_WAIT:-1800}"
STAMP="${CLSACT_APT_STAMP:-/var/lib/apt/clsact-updated}"
SOURCES="${CLSACT_APT_SOURCES:-/etc/apt}"
APT_OPTS=(-o DPkg::Lock::Timeout="$WAIT" -o Acquire::Retries=3)
export DEBIAN_FRONTEND=noninteractive
log() { echo "apt.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

installed() {  # installed PACKAGE: true when dpkg has it installed
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

sources_key() {  # a hash of the apt sources: a change (deb-src added) asks for a new update
    { cat "$SOURCES"/sources.list "$SOURCES"/sources.list.d/* 2>/dev/null || true; } \
        | sha256sum | cut -c1-16
}

update_once() {  # apt-get update, unless the stamp says the lists are current
    local key
    key="$(sources_key)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] \
            && [ -n "$(find "$STAMP" -mmin -1440 2>/dev/null)" ]; then
        return 0
    fi
    log "apt-get update"
    if ! apt-get "${APT_OPTS[@]}" update -qq >&2; then
        die "apt-get update failed: check the network and the mirrors in $SOURCES/sources.list*"
    fi
    mkdir -p "$(dirname "$STAMP")"
    echo "$key" > "$STAMP"
}

has_candidate() {  # has_candidate PACKAGE: the sources offer a version of it
    local candidate
    candidate="$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

has_src() { grep -rqs '^\(deb-src\|Types:.*deb-src\)' "$SOURCES"/sources.list "$SOURCES"/sources.list.d/; }

enable_src() {  # add deb-src next to every deb entry (Debian's deb822 file, or a .list line)
    has_src && return 0
    if [ -f "$SOURCES/sources.list.d/debian.sources" ]; then
        sed -i 's/^Types: deb$/Types: deb deb-src/' "$SOURCES/sources.list.d/debian.sources"
    fi
    if ! has_src; then
        local suite
        suite="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}")"
        echo "deb-src http://deb.debian.org/debian ${suite:-bookworm} main" \
            > "$SOURCES/sources.list.d/clsact-src.list"
    fi
    log "enabled deb-src in $SOURCES"
}

require_root() {
    [ "$(id -u)" = 0 ] || die "installing $* needs root: run as root, or install them by hand"
}

cmd_install() {
    local missing=() pkg
    for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    require_root "${missing[@]}"
    # Another caller may have installed them while this one waited for the lock.
    local still=()
    for pkg in "${missing[@]}"; do installed "$pkg" || still+=("$pkg"); done
    [ ${#still[@]} -eq 0 ] && return 0
    update_once
    for pkg in "${still[@]}"; do
        has_candidate "$pkg" || die "package $pkg cannot be had from the apt sources in $SOURCES (no candidate version): add a Debian bookworm mirror that has it, or install it by hand"
    done
    log "apt-get install ${still[*]}"
    if ! apt-get "${APT_OPTS[@]}" install -y -qq "${still[@]}" >&2; then
        die "apt-get install ${still[*]} failed (see apt's output above)"
    fi
}

cmd_source() {
    [ $# -eq 2 ] || { log "usage: apt.sh source PACKAGE DIR"; exit 2; }
    if ! has_src; then
        require_root "the deb-src entries"
        enable_src
    fi
    update_once
    (cd "$2" && apt-get "${APT_OPTS[@]}" source --download-only "$1" >&2) \
        || die "apt-get source $1 failed: check that a deb-src mirror is reachable"
}

[ $# -ge 1 ] || { log "usage: apt.sh install PACKAGE... | apt.sh source PACKAGE DIR"; exit 2; }
command="$1"
shift
case "$command" in
    install|source) ;;
    *) log "usage: apt.sh install PACKAGE... | apt.sh source PACKAGE DIR"; exit 2 ;;
esac
if [ "$command" = install ]; then
    all=1
    for pkg in "$@"; do installed "$pkg" || all=0; done
    [ "$all" = 1 ] && exit 0   # nothing to do: no lock, no root
fi
mkdir -p "$(dirname "$LOCK")"
exec 9>>"$LOCK"
if ! flock -w "$WAIT" 9; then
    die "another apt run held $LOCK for more than $WAIT s: wait for it, or raise CLSACT_APT_WAIT"
fi
"cmd_$command" "$@"
