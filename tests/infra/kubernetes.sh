#!/usr/bin/env bash
# Build (once) the Kubernetes 1.20.2 components the tests run, from Debian bookworm's source
# package, and make etcd available. See ../shared/notes/TEST-INFRA.md.
#
#   kube-apiserver-1.20.2           the API server (every cluster test)
#   kube-controller-manager-1.20.2  the real controllers (CronJob, Job, garbage collector, ...)
#   kube-scheduler-1.20.2           the real scheduler
#   kubelet-1.20.2-oom0             the kubelet (dockershim) with its two negative
#                                   oom_score_adj constants set to 0: these machines cannot set
#                                   a negative one (no CAP_SYS_RESOURCE) and every pod sandbox
#                                   would fail to start
#
# Prints the cache folder on stdout (everything else on stderr). The binaries live outside the
# checkout in $CLSACT_CACHE (default ~/.cache/clsact) and only missing ones are built (all in
# one `make`, ~5 min for the API server alone, ~10 min for all on 2 cores). Needs root (apt)
# the first time.
set -euo pipefail

CACHE="${CLSACT_CACHE:-$HOME/.cache/clsact}"
VERSION=1.20.2
declare -A TARGETS=(
    [kube-apiserver]="kube-apiserver-$VERSION"
    [kube-controller-manager]="kube-controller-manager-$VERSION"
    [kube-scheduler]="kube-scheduler-$VERSION"
    [kubelet]="kubelet-$VERSION-oom0"
)
log() { echo "kubernetes.sh: $*" >&2; }

missing=()
for cmd in "${!TARGETS[@]}"; do
    [ -x "$CACHE/${TARGETS[$cmd]}" ] || missing+=("$cmd")
done

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
if [ ${#missing[@]} -gt 0 ]; then
    command -v go >/dev/null || need_apt+=(golang-go)
    command -v rsync >/dev/null || need_apt+=(rsync)
    [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] \
        || need_apt+=(golang-github-modern-go-reflect2-dev)
fi
# Every apt step goes through docker/apt.sh (one lock for every caller, one `apt-get update`).
APT="$(cd "$(dirname "$0")/../.." && pwd)/docker/apt.sh"
if [ ${#need_apt[@]} -gt 0 ]; then
    bash "$APT" install "${need_apt[@]}"
fi

if [ ${#missing[@]} -gt 0 ]; then
    mkdir -p "$CACHE"
    WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    log "building ${missing[*]} $VERSION from Debian's source in $WORK (5-10 minutes)"
    bash "$APT" source kubernetes "$WORK"
    tar -C "$WORK" -xzf "$WORK"/kubernetes_*.orig.tar.gz
    SRC="$(find "$WORK" -maxdepth 1 -mindepth 1 -type d | head -1)"
    # The vendored reflect2 v1.0.1 crashes under Go >= 1.18 on the first custom-resource create.
    rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$SRC/vendor/github.com/modern-go/"
    grep -rl 'modern-go/reflect2 v1.0.1' "$SRC/go.mod" "$SRC/vendor/modules.txt" "$SRC"/staging/src/k8s.io/*/go.mod \
        | xargs sed -i 's#modern-go/reflect2 v1.0.1#modern-go/reflect2 v1.0.2#g'
    # The kubelet patch (only the kubelet's packages; the other binaries do not link them).
    sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' \
        "$SRC/pkg/kubelet/dockershim/docker_sandbox.go"
    sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' \
        "$SRC/pkg/kubelet/qos/policy.go"
    grep -q 'defaultSandboxOOMAdj int = 0' "$SRC/pkg/kubelet/dockershim/docker_sandbox.go"
    grep -q 'guaranteedOOMScoreAdj int = 0' "$SRC/pkg/kubelet/qos/policy.go"
    what=""
    for cmd in "${missing[@]}"; do what="$what cmd/$cmd"; done
    mkdir -p "$CACHE/gohome"
    if ! (cd "$SRC" && HOME="$CACHE/gohome" GOCACHE="$CACHE/gocache" CGO_ENABLED=0 \
            make WHAT="${what# }") > "$CACHE/build.log" 2>&1; then
        tail -40 "$CACHE/build.log" >&2
        log "error: the build failed (full log: $CACHE/build.log)"
        exit 1
    fi
    for cmd in "${missing[@]}"; do
        install -m 0755 "$SRC/_output/bin/$cmd" "$CACHE/${TARGETS[$cmd]}.tmp"
        mv "$CACHE/${TARGETS[$cmd]}.tmp" "$CACHE/${TARGETS[$cmd]}"
        log "cached $CACHE/${TARGETS[$cmd]}"
    done
fi
echo "$CACHE"
