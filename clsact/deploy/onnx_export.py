"""The child process of the paddle2onnx 1.x export (``python -m clsact.deploy.onnx_export
MODEL PARAMS OUT`` writes the ONNX file; :func:`clsact.deploy.runtimes.onnx_bytes` runs it).

paddle2onnx is native code that aborts the whole process on some models (e.g. QAT models
saved with ``onnx_format: false``, whose ``fake_quantize_*`` ops it does not know): run in
the caller's process, that would take a ``clsact compress`` down at its report, before
publishing. It imports nothing of clsact.
"""

from __future__ import annotations

import sys
from pathlib import Path


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
