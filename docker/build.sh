#!/usr/bin/env bash
# Build clsact's image: docker/build.sh gpu|cpu. Prints the image name on stdout.
#
# Name: [REGISTRY/]IMAGE:TAG[-cpu], TAG default <version>-<git sha>[-dirty].
# Environment:
#   IMAGE (default clsact; a full reference such as reg/clsact:v1 also sets TAG), REGISTRY, TAG
#   BASE_IMAGE       default: the Debian base docker/base-image.sh builds without a registry
#   EXTRAS           default: gpu,cuda-wheels,deploy (gpu) or cpu,deploy; with a CUDA runtime base: gpu,deploy
#   PADDLE_GPU       (gpu) another Paddle 2.6 GPU build than PyPI's 2.6.2 (CUDA 11.8): a wheel
#                    file, a URL, or paddlepaddle-gpu==VERSION from PADDLE_GPU_INDEX (an index URL)
#   GPU_ARCHS        (gpu) compute capabilities the image must run, default 70,75,80,86: the
#                    build fails with one line when Paddle's libraries lack kernels for one
#   BUILD_CA_BUNDLE  CA bundle pip trusts during the build (default: pip's configured cert)
#   DOCKER_BUILD_NETWORK  default host (pip reaches the index as the host does)
#   DOCKER_BUILD_ARGS     more `docker build` flags, e.g. --no-cache
# Starts dockerd when no engine answers (docker/dockerd.sh) and leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER="${DOCKER:-/usr/bin/docker}"
log() { echo "build.sh: $*" >&2; }

VARIANT="${1:-}"
case "$VARIANT" in
    gpu) EXTRAS="${EXTRAS:-gpu,cuda-wheels,deploy}"; GPUS=all; SUFFIX=
         ARCHS="${GPU_ARCHS-70,75,80,86}"; PADDLE="${PADDLE_GPU:-}" ;;
    cpu) EXTRAS="${EXTRAS:-cpu,deploy}"; GPUS=void; SUFFIX=-cpu; ARCHS=; PADDLE= ;;
    *) log "usage: docker/build.sh gpu|cpu"; exit 2 ;;
esac

started="$(bash docker/dockerd.sh)"
case "$started" in started*) log "dockerd was not running: started it (pid ${started#started }; stop it with: kill ${started#started })" ;; esac

VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' clsact/__init__.py)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
SHORT="${REVISION:0:12}"
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain -- clsact docker pyproject.toml README.md 2>/dev/null)" ]; then
    SHORT="$SHORT-dirty"
fi
REPOSITORY="${IMAGE:-clsact}"
if [[ "${REPOSITORY##*/}" == *:* ]]; then  # IMAGE=reg/clsact:v1, as `make submit` takes it
    TAG="${TAG:-${REPOSITORY##*:}}"
    REPOSITORY="${REPOSITORY%:*}"
fi
NAME="${REGISTRY:+$REGISTRY/}$REPOSITORY:${TAG:-$VERSION-$SHORT}$SUFFIX"
BASE="${BASE_IMAGE:-$(bash docker/base-image.sh)}"

BUILD_LOG="$(mktemp)"
trap 'rm -f docker/build-ca/ca.crt docker/build-wheels/*.whl "$BUILD_LOG"' EXIT
CA="${BUILD_CA_BUNDLE:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
CA="${CA:-${PIP_CERT:-}}"
rm -f docker/build-ca/ca.crt
if [ -n "$CA" ]; then
    if [ ! -f "$CA" ]; then
        log "error: BUILD_CA_BUNDLE=$CA does not exist"
        exit 2
    fi
    cp "$CA" docker/build-ca/ca.crt
fi
# A Paddle wheel given as a file goes into the build context (docker/build-wheels/)
rm -f docker/build-wheels/*.whl
if [ -n "$PADDLE" ] && [ -e "$PADDLE" ]; then
    case "$PADDLE" in
        *.whl) ln -f "$PADDLE" docker/build-wheels/ 2>/dev/null || cp "$PADDLE" docker/build-wheels/ ;;
        *) log "error: PADDLE_GPU=$PADDLE is a file but not a wheel (*.whl)"; exit 2 ;;
    esac
    PADDLE="/src/docker/build-wheels/$(basename "$PADDLE")"
fi

log "building $NAME (extras $EXTRAS, base $BASE)"
start=$(date +%s)
build() {
    "$DOCKER" build --network "${DOCKER_BUILD_NETWORK:-host}" -f docker/Dockerfile \
        --build-arg BASE_IMAGE="$BASE" --build-arg EXTRAS="$EXTRAS" \
        --build-arg NVIDIA_VISIBLE_DEVICES="$GPUS" --build-arg GPU_ARCHS="$ARCHS" \
        --build-arg PADDLE_GPU="$PADDLE" --build-arg PADDLE_GPU_INDEX="${PADDLE_GPU_INDEX:-}" \
        --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
        --build-arg SOURCE="${SOURCE:-$(git config --get remote.origin.url 2>/dev/null || true)}" \
        ${PIP_INDEX_URL:+--build-arg PIP_INDEX_URL="$PIP_INDEX_URL"} ${DOCKER_BUILD_ARGS:-} \
        "$@" . 2>&1 | tee -a "$BUILD_LOG" >&2
}
failed() {  # one line: the GPU kernel check's own, else where to look
    local line
    line="$(grep -ho 'gpuarch: error: .*' "$BUILD_LOG" | tail -1)"
    log "error: ${line:-docker build failed (its output is above)}"
    exit 1
}
# The build stage gets a tag of its own, so that its layers (the cache of the next build)
# survive the pruning below, which removes the untagged leftovers of earlier clsact builds.
build --target build -t "clsact-build-cache:$VARIANT" || failed
build -t "$NAME" || failed
# The GPUs it runs on, read by the build from Paddle's libraries, as an image label too
archs="$("$DOCKER" run --rm --network none --entrypoint cat "$NAME" /opt/clsact/gpu-archs.json \
    | python3 -c 'import json, sys; print(",".join(json.load(sys.stdin)["supported"]) or "none")')"
printf 'FROM %s\nLABEL io.clsact.gpu-archs="%s"\n' "$NAME" "$archs" \
    | "$DOCKER" build -q -t "$NAME" - >/dev/null
for label in io.clsact.stage=build org.opencontainers.image.title=clsact; do
    "$DOCKER" image prune -f --filter "label=$label" >/dev/null
done
size="$("$DOCKER" image inspect --format '{{.Size}}' "$NAME")"
log "built $NAME in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
echo "$NAME"
