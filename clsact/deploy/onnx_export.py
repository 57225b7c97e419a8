"""paddle2onnx 1.x export of a Paddle model for ONNX Runtime, run in a child process.

paddle2onnx is native code that aborts the whole process on some models (e.g. QAT models
saved with ``onnx_format: false``, whose ``fake_quantize_*`` ops it does not know): run in
the caller's process, that would take a ``clsact compress`` down at its report, before
publishing. ``python -m clsact.deploy.onnx_export MODEL PARAMS OUT`` writes the ONNX file;
:func:`export` runs it and turns a crash into :class:`RuntimeSkip`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from clsact.deploy.runtimes import RuntimeSkip


def export(model_file: Path, params_file: Path, timeout: float = 600.0) -> bytes:
    """The ONNX bytes of the model (opset 13, ``deploy_backend="onnxruntime"``).

    Raises:
        RuntimeSkip: paddle2onnx is 2.x, rejects the model, crashes or times out.
    """
    with tempfile.TemporaryDirectory(prefix="clsact-onnx-") as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            proc = subprocess.run([sys.executable, "-m", __name__, str(model_file),
                                   str(params_file), str(out)], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeSkip(f"paddle2onnx did not finish converting the model within "
                              f"{timeout:.0f} s") from None
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise RuntimeSkip(f"paddle2onnx crashed ({name}) converting the model "
                              "(a model it does not support)")
        if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
            lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
            raise RuntimeSkip(lines[-1][:300] if lines else "paddle2onnx produced no model")
        return out.read_bytes()


def main(argv: list[str]) -> int:
    """Child side: convert, write the file; one line on stderr and exit 1 on failure."""
    import paddle2onnx

    model, params, out = argv
    major = int(str(getattr(paddle2onnx, "__version__", "1")).split(".")[0] or 1)
    if major >= 2:
        print(f"paddle2onnx {paddle2onnx.__version__} cannot export quantized models (2.x "
              "dropped it): pip install 'paddle2onnx<2'", file=sys.stderr)
        return 1
    try:
        data = paddle2onnx.export(model, params, save_file=None, opset_version=13,
                                  verbose=False, deploy_backend="onnxruntime")
    except Exception as exc:  # the converter raises many types
        text = str(exc).strip()
        print(f"paddle2onnx cannot convert the model: "
              f"{text.splitlines()[0][:300] if text else type(exc).__name__}", file=sys.stderr)
        return 1
    if not data:
        print("paddle2onnx produced no model", file=sys.stderr)
        return 1
    Path(out).write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
