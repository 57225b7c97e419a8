#!/bin/sh
# The one way clsact's dependencies are installed: by `make venv` (and so CI) and by both
# images, always pinned by docker/constraints.txt, so what is tested is what ships.
#
#   install.sh PYTHON PIP-INSTALL-ARGS...         e.g. install.sh .venv/bin/python -e '.[cpu,dev]'
#   install.sh PYTHON --deps PYPROJECT EXTRAS [PADDLE [INDEX]]
#                                                 the dependencies of clsact (+ extras) only:
#                                                 the image's cached layer, before the source;
#                                                 PADDLE (a wheel file, a URL, or a requirement
#                                                 such as paddlepaddle-gpu==2.6.2.post120 from
#                                                 INDEX) replaces the pinned paddlepaddle-gpu
#                                                 of the gpu extra, the other pins kept
#
# paddleslim 2.6.0 requires opencv-python, whose wheel links Qt, X11 and libGL (a few hundred
# MB of system libraries in an image, and an import error without them). clsact runs
# headless, so the same OpenCV release is installed as opencv-python-headless instead (same
# cv2 module). `pip check` reports that one swap, nothing else (tests/test_image.py).
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="$1"; shift
pip_install() { "$PY" -m pip install --quiet -c "$HERE/constraints.txt" "$@"; }

if [ "${1:-}" = "--deps" ]; then
    PYPROJECT="$2"; EXTRAS="${3:-}"; PADDLE="${4:-}"; INDEX="${5:-}"
    if [ -n "$PADDLE" ]; then  # the gpu extra is this Paddle, installed below
        EXTRAS="$(echo ",$EXTRAS," | sed 's/,gpu,/,/g; s/^,//; s/,$//')"
    fi
    REQS="$(mktemp)"
    "$PY" - "$PYPROJECT" "$EXTRAS" > "$REQS" <<'EOF'
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
EOF
    pip_install -r "$REQS"
    rm -f "$REQS"
    if [ -n "$PADDLE" ]; then
        OTHERS="$(mktemp)"
        grep -v '^paddlepaddle' "$HERE/constraints.txt" > "$OTHERS"
        "$PY" -m pip install --quiet -c "$OTHERS" ${INDEX:+--extra-index-url "$INDEX"} "$PADDLE"
        rm -f "$OTHERS"
    fi
else
    pip_install "$@"
fi

if "$PY" -m pip show --quiet opencv-python >/dev/null 2>&1; then
    "$PY" -m pip uninstall --quiet --yes opencv-python
    if "$PY" -m pip show --quiet opencv-python-headless >/dev/null 2>&1; then
        "$PY" -m pip uninstall --quiet --yes opencv-python-headless  # its cv2/ files are gone
    fi
    pip_install --no-deps opencv-python-headless
fi
