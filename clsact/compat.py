"""Every workaround for a paddle / paddleslim defect, each with its upstream reference.

Keep them here, and only here, so they can be dropped when the pins move.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from clsact.modelio import load_program


def fix_dropout_mask(model_file: str | Path) -> int:
    """Give every ``dropout`` op of an inference model its ``Mask`` output; returns how many.

    PaddleSlim issue #1927 (fixed after 2.6.0 by PR #1859): ``paddle.jit.save`` under 2.6
    writes dropout ops with only ``Out``. ACT's distillation copies the teacher's ops into the
    student program with ``append_op``, which checks outputs and fails with ``Incorrect
    setting for output(s) of operator "dropout", should set: [Mask]``. Declaring a ``Mask``
    variable (uint8, like paddle's own dropout) restores the op's full signature; inference
    results are unchanged (``is_test`` dropout does not write it).
    """
    import paddle

    program = load_program(model_file)
    fixed = 0
    for block in program.blocks:
        for op in block.ops:
            if op.type != "dropout" or ("Mask" in op.output_names and op.output("Mask")):
                continue
            out = block.var(op.output("Out")[0])
            mask = block.create_var(name=f"{out.name}.dropout_mask", dtype=paddle.uint8,
                                    shape=out.shape, persistable=False, stop_gradient=True)
            op.desc.set_output("Mask", [mask.name])
            fixed += 1
    if fixed:
        Path(model_file).write_bytes(program.desc.serialize_to_string())
    return fixed


def quiet_native_output() -> None:
    """Silence what paddle writes around our logs; call before paddle is imported.

    * paddle's quantization passes draw a tqdm bar per graph pass (hundreds of redrawn lines
      in a log): tqdm >= 4.66 honours ``TQDM_DISABLE``, read when tqdm is first imported;
    * glog INFO lines from the C++ executor (``GLOG_minloglevel=1`` keeps warnings);
    * setuptools' "replacing distutils" warning when paddleslim imports distutils.

    Values the user already set win.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("GLOG_minloglevel", "1")
    # paddleslim imports distutils, which setuptools' shim announces with a UserWarning
    warnings.filterwarnings("ignore", message="Setuptools is replacing distutils")


def act_without_fleet(act_class):
    """Make paddleslim's AutoCompression never switch on its own collective mode.

    ACT's ``_prepare_envs`` enables fleet when ``paddle.device.cuda.device_count() > 1`` —
    visible GPUs, not world size (upstream PR #1848 changed the fleet init; 2.6.0 still has
    the gate): one GPU per pod trains each pod independently, eight visible GPUs turn fleet
    on, and on CPU it is never on. clsact synchronises ranks itself
    (:mod:`clsact.distributed`) in every case, so ACT must always run its single-process
    path. Returns the class, patched once.
    """
    if getattr(act_class, "_clsact_no_fleet", False):
        return act_class
    original = act_class._prepare_envs

    def _prepare_envs(self):
        exe, places, _fleet = original(self)
        return exe, places, False

    act_class._prepare_envs = _prepare_envs
    act_class._clsact_no_fleet = True
    return act_class
