"""The real Helm SDK (helm-python-sdk: Helm's Go code as a shared library) in a process of its
own, for the chart tests.

Loading the library starts a Go runtime inside the process that loads it. In the pytest
process it would live beside Paddle, which installs its own handlers for SIGSEGV, SIGBUS and
SIGTERM over the ones the Go runtime installed; a `.ci/run` on an AVX2 machine died once
with a bare "Segmentation fault" at the first Helm call after Paddle had been used. Every
test therefore talks to Helm through the functions here: they run in one spawned worker
that imports ``helm_python`` and never Paddle (charts/push.py, the only production user,
is a process of its own too). Helm's errors come back as :class:`HelmError` (and
:class:`HelmValuesError`) with Helm's message.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

AVAILABLE = importlib.util.find_spec("helm_python") is not None  # without loading it
_POOL: ProcessPoolExecutor | None = None


class HelmError(Exception):
    """An error Helm raised in the worker (its message)."""


class HelmValuesError(HelmError):
    """Values the chart's schema refused."""


def _call(fn, /, *args: Any, **kwargs: Any) -> Any:
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    return _POOL.submit(fn, *args, **kwargs).result()


def _in_worker(method: str, /, *args: Any, **kwargs: Any) -> Any:
    """Runs in the worker: ``helm_python.<method>``, its errors turned into ours."""
    import helm_python

    try:
        return _WORKER[method](helm_python, *args, **kwargs)
    except helm_python.HelmValuesError as exc:
        raise HelmValuesError(str(exc)) from None
    except helm_python.HelmError as exc:
        raise HelmError(str(exc)) from None


def _release(h, kubeconfig: str, config_namespace: str, action: str, /, *args, **kwargs):
    """``Config(...).<action>(*args, **kwargs)`` (an action may take ``namespace=`` too)."""
    with h.Config(kubeconfig_path=kubeconfig, namespace=config_namespace) as cfg:
        return getattr(cfg, action)(*args, **kwargs)


_WORKER = {
    "render": lambda h, chart, vals, **kw: h.Chart.load(chart).render(vals, **kw),
    "validate_schema": lambda h, chart, vals: h.Chart.load(chart).validate_schema(vals),
    "lint": lambda h, chart, vals, **kw: h.lint(chart, vals, **kw),
    "pull": lambda h, ref, **kw: h.pull(ref, **kw),
    "release": _release,
}


def render(chart: Path, vals: dict, **kwargs: Any) -> dict[str, str]:
    """``Chart.load(chart).render(vals, **kwargs)``: the rendered files by path."""
    return _call(_in_worker, "render", str(chart), vals, **kwargs)


def validate_schema(chart: Path, vals: dict) -> None:
    """``Chart.validate_schema``. Raises: HelmValuesError."""
    _call(_in_worker, "validate_schema", str(chart), vals)


def lint(chart: Path, vals: dict, **kwargs: Any) -> dict:
    """``helm_python.lint``: the report."""
    return _call(_in_worker, "lint", str(chart), vals, **kwargs)


def pull(ref: str, **kwargs: Any) -> Any:
    """``helm_python.pull`` (an OCI chart)."""
    return _call(_in_worker, "pull", ref, **kwargs)


class Release:
    """``helm install/test/uninstall`` against a cluster (a ``helm_python.Config`` per call,
    in the worker)."""

    def __init__(self, kubeconfig: Path, namespace: str):
        self.kubeconfig, self.namespace = str(kubeconfig), namespace

    def __enter__(self) -> Release:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _do(self, action: str, /, *args: Any, **kwargs: Any) -> Any:
        return _call(_in_worker, "release", self.kubeconfig, self.namespace, action, *args,
                     **kwargs)

    def install(self, *args: Any, **kwargs: Any) -> dict:
        return self._do("install", *args, **kwargs)

    def test(self, *args: Any, **kwargs: Any) -> Any:
        return self._do("test", *args, **kwargs)

    def uninstall(self, *args: Any, **kwargs: Any) -> Any:
        return self._do("uninstall", *args, **kwargs)
