#!/bin/sh
# Finish the dependency venv at $1 for the final image: put clsact's own folder
# (/opt/clsact-app, installed after) on its path, link the CUDA libraries of the
# nvidia-*-cu11 wheels under the file names Paddle dlopens, remove what a job never uses.
set -eu
VENV="$1"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo /opt/clsact-app > "$SITE/clsact-app.pth"

# Paddle 2.6.2's PyPI build dlopens unversioned names (libcudnn.so, libcublas.so, libnccl.so,
# ...); NVIDIA's wheels ship versioned ones (libcudnn.so.8). One folder on LD_LIBRARY_PATH
# holds both names for every library.
mkdir -p "$VENV/cuda/lib"
if [ -d "$SITE/nvidia" ]; then
    # Libraries of these wheels that Paddle never loads (multi-GPU cuSOLVER, NVBLAS, the FFTW
    # wrapper, CUPTI's profiler add-ons): ~230 MB.
    rm -f "$SITE"/nvidia/cusolver/lib/libcusolverMg.so* "$SITE"/nvidia/cublas/lib/libnvblas.so* \
        "$SITE"/nvidia/cufft/lib/libcufftw.so* "$SITE"/nvidia/cuda_cupti/lib/libnvperf_*.so \
        "$SITE"/nvidia/cuda_cupti/lib/libpcsamplingutil.so "$SITE"/nvidia/cuda_cupti/lib/libcheckpoint.so
    for lib in "$SITE"/nvidia/*/lib/lib*.so*; do
        name="$(basename "$lib")"
        ln -sf "$lib" "$VENV/cuda/lib/$name"
        case "$name" in
            *.so.*) ln -sf "$lib" "$VENV/cuda/lib/${name%%.so.*}.so" ;;
        esac
    done
fi

# No headers, activation scripts or package test suites at run time. pip and setuptools
# stay: `import paddleslim` imports pip (analysis/latency_predictor.py, which pip-installs
# paddlelite only when a latency table is asked for; clsact never asks) and `import paddle`
# imports setuptools (paddle.utils.cpp_extension). tests/test_image.py runs a compress with
# no network at all.
"$VENV/bin/python" -m pip uninstall --quiet --yes wheel 2>/dev/null || true
rm -f "$VENV"/bin/Activate.ps1 "$VENV"/bin/activate*
rm -rf "$SITE/paddle/include" "$SITE"/nvidia/*/include
# (package test suites: never imported by the packages themselves)
find "$SITE" -depth -type d -name tests \
    \( -path '*/numpy/*' -o -path '*/scipy/*' -o -path '*/sklearn/*' -o -path '*/pandas/*' \
       -o -path '*/matplotlib/*' -o -path '*/networkx/*' -o -path '*/sympy/*' \) \
    -exec rm -rf {} +
