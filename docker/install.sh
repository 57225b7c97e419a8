#!/bin/sh
# The one way clsact's dependencies are installed: by `make venv` (and so CI) and by both
# images, always pinned by docker/constraints.txt, so what is tested is what ships.
#
#   install.sh PYTHON PIP-INSTALL-ARGS...         e.g. install.sh .venv/bin/python -e '.[cpu,dev]'
#   install.sh PYTHON --deps PYPROJECT EXTRAS     the dependencies of clsact (+ extras) only:
#                                                 the image's cached layer, before the source
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
    REQS="$(mktemp)"
    "$PY" - "$2" "${3:-}" > "$REQS" <<'EOF'
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
