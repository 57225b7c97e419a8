"""``clsact export --target arm RUN``: the compressed model as a Paddle Lite ``.nb`` for ARM.

Paddle Lite's optimizer (``paddle_lite_opt``) understands the quantize_linear /
dequantize_linear ops of a QAT model only from 2.13 (2.10 rejects them, 2.12 misreads them),
and 2.13rc0, the only 2.13 on PyPI, has wheels for CPython 3.8-3.10 (x86_64) only: none for
clsact's 3.11. So the optimizer runs in a virtualenv of its own, made once from a 3.8-3.10
interpreter (``--lite-python``, ``$CLSACT_LITE_PYTHON``, or one found on PATH or under pyenv)
and cached in ``$CLSACT_CACHE`` (default ``~/.cache/clsact``). Without such an interpreter the
export stops with one line saying so and what to run instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from clsact.errors import ClsactError

LITE_VERSION = "2.13rc0"
LITE_PYTHONS = ("3.10", "3.9", "3.8")
LITE_PYTHON_ENV = "CLSACT_LITE_PYTHON"


class ExportRefused(ClsactError):
    """The export cannot run here (the message says why and what to do instead)."""


def cache_dir() -> Path:
    """Where slow one-time builds are kept (``$CLSACT_CACHE``, default ``~/.cache/clsact``)."""
    return Path(os.environ.get("CLSACT_CACHE") or Path.home() / ".cache" / "clsact")


def python_version(python: str) -> str | None:
    """``major.minor`` of the interpreter ``python``, or None when it does not run."""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_lite_python(given: str | None = None) -> str:
    """A CPython 3.8-3.10 for Paddle Lite's optimizer: ``given``, ``$CLSACT_LITE_PYTHON``,
    ``python3.10``/``3.9``/``3.8`` on PATH, or a pyenv install.

    Raises:
        ExportRefused: the interpreter given is not 3.8-3.10, or none was found.
    """
    wanted = given or os.environ.get(LITE_PYTHON_ENV)
    if wanted:
        version = python_version(wanted)
        if version not in LITE_PYTHONS:
            raise ExportRefused(
                f"{wanted} is {'not a runnable Python' if version is None else 'Python ' + version}"
                f": Paddle Lite {LITE_VERSION} (the first optimizer that reads QAT models) has "
                "wheels for Python 3.8-3.10 only; pass --lite-python /path/to/python3.10")
        return wanted
    candidates = [shutil.which(f"python{v}") for v in LITE_PYTHONS]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for v in LITE_PYTHONS:
        candidates += sorted(glob.glob(str(pyenv / f"{v}.*" / "bin" / "python")), reverse=True)
    for python in filter(None, candidates):
        if python_version(python) in LITE_PYTHONS:
            return python
    raise ExportRefused(
        f"ARM export needs Paddle Lite {LITE_VERSION} (the first optimizer that reads "
        "quantize_linear/dequantize_linear), whose wheels need Python 3.8-3.10, and none was "
        "found: pass --lite-python /path/to/python3.10 (or set CLSACT_LITE_PYTHON), or run "
        f"`pip install paddlelite=={LITE_VERSION}` in a Python 3.10 environment and "
        "`paddle_lite_opt --model_file model/inference.pdmodel --param_file "
        "model/inference.pdiparams --optimize_out_type naive_buffer --optimize_out model "
        "--valid_targets arm` there")


def lite_optimizer(python: str) -> Path:
    """``paddle_lite_opt`` of Paddle Lite :data:`LITE_VERSION` in a cached virtualenv made
    from ``python`` (created on first use; a half-made one is made again).

    Raises:
        ExportRefused: the virtualenv or the install failed.
    """
    env = cache_dir() / f"paddlelite-{LITE_VERSION}-py{python_version(python)}"
    opt, done = env / "bin" / "paddle_lite_opt", env / ".complete"
    if done.is_file() and opt.is_file():
        return opt
    shutil.rmtree(env, ignore_errors=True)  # scripts name their interpreter by path: build
    for step in ([python, "-m", "venv", str(env)],  # where it stays
                 [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet",
                  f"paddlelite=={LITE_VERSION}"]):
        try:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            proc = subprocess.CompletedProcess(step, 1, "", str(exc))
        if proc.returncode != 0:
            shutil.rmtree(env, ignore_errors=True)
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ExportRefused(f"could not install Paddle Lite {LITE_VERSION} with {python} "
                                f"({' '.join(step[-2:])}: {last[:200]})")
    done.write_text(f"paddlelite=={LITE_VERSION}\n")
    return opt


SPARSE_THRESHOLD = 0.5  # the least zero fraction of a 1x1 conv that Lite runs as sparse


def export_arm(model_file: Path, params_file: Path, out_stem: Path, opt: Path,
               sparse: bool = False) -> Path:
    """Optimise the model for ARM CPUs into ``<out_stem>.nb``; returns that file. With
    ``sparse`` (a run with unstructured sparsity) Paddle Lite's ``sparse_conv_detect_pass``
    stores the 1x1 convolutions with at least :data:`SPARSE_THRESHOLD` zeros as sparse and
    runs them with its sparse kernels.

    Raises:
        ClsactError: the optimizer rejected the model (its last line says why).
    """
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(opt), f"--model_file={model_file}", f"--param_file={params_file}",
                           "--optimize_out_type=naive_buffer", f"--optimize_out={out_stem}",
                           "--valid_targets=arm",
                           *(["--sparse_model=true", f"--sparse_threshold={SPARSE_THRESHOLD}"]
                             if sparse else [])],
                          capture_output=True, text=True, timeout=1800)
    nb = out_stem.with_name(out_stem.name + ".nb")
    if proc.returncode != 0 or not nb.is_file() or nb.stat().st_size == 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines() or ["(no output)"]
        raise ClsactError(f"Paddle Lite {LITE_VERSION} could not optimise {model_file} for ARM: "
                          f"{lines[-1][:300]}")
    return nb
