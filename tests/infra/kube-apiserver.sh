#!/usr/bin/env bash
# Build (once) a real kube-apiserver 1.20.2 from Debian bookworm's source package and make
# etcd available, for the launcher tests. See ../shared/notes/TEST-INFRA.md.
#
# Prints the path of the cached kube-apiserver binary on stdout (everything else on stderr).
# The binary is cached outside the checkout, in $CLSACT_CACHE (default ~/.cache/clsact), and
# rebuilt only when missing. Needs root (apt) the first time.
set -euo pipefail

CACHE="${CLSACT_CACHE:-$HOME/.cache/clsact}"
BIN="$CACHE/kube-apiserver-1.20.2"
log() { echo "kube-apiserver.sh: $*" >&2; }

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
if [ ! -x "$BIN" ]; then
    command -v go >/dev/null || need_apt+=(golang-go)
    command -v rsync >/dev/null || need_apt+=(rsync)
    [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] \
        || need_apt+=(golang-github-modern-go-reflect2-dev)
fi
if [ ${#need_apt[@]} -gt 0 ] || { [ ! -x "$BIN" ] && ! grep -rqs deb-src /etc/apt/sources.list.d/ /etc/apt/sources.list; }; then
    if [ "$(id -u)" != 0 ]; then
        log "error: need root to apt-get install ${need_apt[*]} (or put etcd and a kube-apiserver 1.20 binary at $BIN)"
        exit 1
    fi
    if ! grep -rqs deb-src /etc/apt/sources.list.d/ /etc/apt/sources.list; then
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
        else
            echo "deb-src http://deb.debian.org/debian bookworm main" \
                > /etc/apt/sources.list.d/clsact-src.list
        fi
    fi
    log "apt-get install ${need_apt[*]:-(sources only)}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    if [ ${#need_apt[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
    fi
fi

if [ ! -x "$BIN" ]; then
    mkdir -p "$CACHE"
    WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    log "building kube-apiserver 1.20.2 from Debian's source in $WORK (about 5 minutes)"
    (cd "$WORK" && apt-get source --download-only kubernetes >&2)
    tar -C "$WORK" -xzf "$WORK"/kubernetes_*.orig.tar.gz
    SRC="$(find "$WORK" -maxdepth 1 -mindepth 1 -type d | head -1)"
    # The vendored reflect2 v1.0.1 crashes under Go >= 1.18 on the first custom-resource create.
    rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$SRC/vendor/github.com/modern-go/"
    grep -rl 'modern-go/reflect2 v1.0.1' "$SRC/go.mod" "$SRC/vendor/modules.txt" "$SRC"/staging/src/k8s.io/*/go.mod \
        | xargs sed -i 's#modern-go/reflect2 v1.0.1#modern-go/reflect2 v1.0.2#'
    mkdir -p "$CACHE/gohome"
    if ! (cd "$SRC" && HOME="$CACHE/gohome" GOCACHE="$CACHE/gocache" CGO_ENABLED=0 \
            make WHAT=cmd/kube-apiserver) > "$CACHE/build.log" 2>&1; then
        tail -40 "$CACHE/build.log" >&2
        log "error: the build failed (full log: $CACHE/build.log)"
        exit 1
    fi
    install -m 0755 "$SRC/_output/bin/kube-apiserver" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
    log "cached $BIN"
fi
echo "$BIN"
