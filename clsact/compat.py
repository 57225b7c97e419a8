"""Every workaround for a paddle / paddleslim defect, each with its upstream reference.

Keep them here, and only here, so they can be dropped when the pins move.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def act_fleet(act_class, collective: bool, configure: Callable[[Any], None]):
    """Make paddleslim's AutoCompression use its collective (fleet) mode iff ``collective``,
    with ``configure(strategy)`` applied to the ``fleet.DistributedStrategy`` it builds.

    ACT's ``_prepare_envs`` returns ``(exe, places, fleet)`` and enables fleet when
    ``paddle.device.cuda.device_count() > 1`` — visible GPUs, not world size (upstream PR
    #1848 changed the fleet init; 2.6.0 still has the gate): one GPU per pod would train each
    pod independently, eight visible GPUs turn fleet on, and on CPU it is never on. With
    fleet on, ACT calls ``fleet.init(is_collective=True)``, wraps its optimizer with
    ``fleet.distributed_optimizer(optimizer, self._prepare_fleet_strategy(train_config))``
    and runs the program uncompiled. clsact decides per run (:func:`clsact.distributed.
    sync_mode`): the class attribute is read when an instance is built. Returns the class.
    ``tests/test_compat.py`` checks both methods against the installed paddleslim.
    """
    act_class._clsact_collective = bool(collective)
    act_class._clsact_configure = staticmethod(configure)
    if getattr(act_class, "_clsact_fleet_patched", False):
        return act_class
    original_envs = act_class._prepare_envs
    original_strategy = act_class._prepare_fleet_strategy

    def _prepare_envs(self):
        exe, places, _fleet = original_envs(self)
        return exe, places, type(self)._clsact_collective

    def _prepare_fleet_strategy(self, train_config):
        strategy = original_strategy(self, train_config)
        type(self)._clsact_configure(strategy)
        return strategy

    act_class._prepare_envs = _prepare_envs
    act_class._prepare_fleet_strategy = _prepare_fleet_strategy
    act_class._clsact_fleet_patched = True
    return act_class


def no_gloo_http_log() -> None:
    """Stop paddle's gloo rendezvous server from writing ``./http.log``.

    ``paddle.distributed.fleet.utils.http_server`` (imported by
    ``paddle.distributed.gloo_init_parallel_env``) opens ``http.log`` in the current
    directory when it is imported, and logs every request there: a file in the user's
    working directory (or a failure where it is read-only). Imported here from a scratch
    directory, with its file handler removed. ``tests/test_compat.py`` checks the module
    still does this.
    """
    import logging
    import tempfile

    name = "paddle.distributed.fleet.utils.http_server"
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="clsact-gloo-") as scratch:
        os.chdir(scratch)
        try:
            import importlib

            importlib.import_module(name)
        finally:
            os.chdir(here)
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.addHandler(logging.NullHandler())


STREAM_SYNC_OPS = ("c_sync_comm_stream", "c_sync_calc_stream")
BACKWARD_ROLE = 1  # paddle's OpRole.Backward


def collective_on_cpu() -> None:
    """Let fleet's in-program gradient all-reduce (``RawProgramOptimizer``) run on a CPU
    build, over the gloo context ``paddle.distributed.gloo_init_parallel_env`` set up.

    paddle 2.6.2's ``RawProgramOptimizer`` assumes NCCL/BKCL: ``CollectiveHelper.
    _init_communicator`` reads ``FLAGS_dynamic_static_unified_comm`` (absent from CPU builds:
    ``ValueError``) and raises unless compiled with CUDA or XPU, and it writes
    ``c_sync_comm_stream`` / ``c_sync_calc_stream`` ops, which have no CPU kernel. On CPU the
    ``c_allreduce_sum`` / ``c_broadcast`` kernels use the gloo context, and there is one
    stream. So on a CPU build only: the communicator step writes nothing, and the stream
    syncs are removed from both programs after ``minimize``. A CUDA build is left alone.
    ``tests/test_compat.py`` checks both assumptions against the installed paddle.
    """
    from paddle.base import core
    from paddle.distributed.fleet.meta_optimizers import common
    from paddle.distributed.fleet.meta_optimizers.raw_program_optimizer import (
        RawProgramOptimizer,
    )

    if core.is_compiled_with_cuda() or getattr(RawProgramOptimizer, "_clsact_cpu", False):
        return
    common.CollectiveHelper._init_communicator = lambda self, *args, **kwargs: None
    original = RawProgramOptimizer.minimize_impl

    def minimize_impl(self, loss, startup_program=None, parameter_list=None,
                      no_grad_set=None):
        result = original(self, loss, startup_program, parameter_list, no_grad_set)
        for program in (self.main_program, self.startup_program):
            block = program.global_block()
            for i in reversed(range(len(block.ops))):
                if block.ops[i].type in STREAM_SYNC_OPS:
                    block._remove_op(i)
        return result

    RawProgramOptimizer.minimize_impl = minimize_impl
    RawProgramOptimizer._clsact_cpu = True


def allreduce_gradients(program, grads: list[str]) -> int:
    """Insert a ``c_allreduce_sum`` (ring 0, on the calculation stream, so the optimizer reads
    the sum) of each of ``grads`` right before the first optimizer op that reads it; returns
    how many were inserted.

    paddleslim's quantization pass runs after fleet's ``minimize`` and adds parameters of its
    own with their own optimizer ops (PACT's clipping thresholds, ``*_tmp_input_pact``), whose
    gradients fleet never all-reduces. They are scalars: one op each. Their gradients come
    from the loss, whose gradient fleet already scaled by 1/world, so a sum is the mean.
    Uses ``Block._insert_op`` (paddle's own passes edit programs the same way).
    """
    block = program.global_block()
    inserted = 0
    for grad in grads:
        index = next(i for i, op in enumerate(block.ops)
                     if "Grad" in op.input_names and grad in op.input("Grad"))
        block._insert_op(index, type="c_allreduce_sum", inputs={"X": [block.var(grad)]},
                         outputs={"Out": [block.var(grad)]},
                         attrs={"ring_id": 0, "use_calc_stream": True,
                                "op_role": BACKWARD_ROLE})
        inserted += 1
    return inserted


def on_act_train_start(act, callback: Callable[[Any], None]) -> None:
    """Call ``callback(train_program)`` when paddleslim's ACT enters its training loop.

    paddleslim 2.6.0 builds the training program inside ``single_strategy_compress`` and
    hands it only to the private ``_start_train(train_program_info, test_program_info,
    strategy, train_config)``; the program may be a ``CompiledProgram`` (its ``_program`` is
    the Program). Before that call, when ``TrainConfig.origin_metric`` is set, ACT calls the
    eval callback once on the fp32 inference program ("test metric before compress"):
    whether ``callback`` has run tells that pre-check from in-loop evaluations.
    ``tests/test_compat.py`` checks both assumptions against the installed paddleslim.
    """
    original = act._start_train

    def start_train(train_program_info, test_program_info, strategy, train_config):
        program = train_program_info.program
        callback(getattr(program, "_program", program))
        return original(train_program_info, test_program_info, strategy, train_config)

    act._start_train = start_train


def act_checks_origin_metric_before_training(act_class) -> bool:
    """Whether ``act_class`` (paddleslim's AutoCompression) evaluates the fp32 model with
    the eval callback before ``_start_train`` when ``origin_metric`` is set (2.6.0 does);
    used by the compat test to notice when that order changes."""
    source = inspect.getsource(act_class.single_strategy_compress)
    check = source.find("train_config.origin_metric is not None")
    start = source.find("self._start_train(")
    return 0 <= check < start


def fast_ir_graph_links() -> None:
    """Make paddle's ``IrGraph.link_to`` O(1) (it is O(nodes) per call in paddle 2.6.2).

    ``link_to`` asserts ``node in self.graph.nodes()`` for both nodes, and ``nodes()``
    builds a new set of every node of the graph on each call. The quantization passes ACT
    runs (``QuantizationTransformPassV2``, ``OutScaleForTrainingPass``, ...) link a few
    nodes per op, so building a QAT program is quadratic in the graph size: 61% of a whole
    small run's wall time here (py-spy), minutes for a ResNet50 with its teacher. The passes
    link only nodes they took from, or just created in, the same graph, so the check never
    fires; this keeps the linking and drops the check. ``tests/test_compat.py`` checks the
    original still only asserts and links, and that a pass builds the same program with it.
    """
    from paddle.base.framework import IrGraph

    if getattr(IrGraph.link_to, "_clsact_fast", False):
        return

    def link_to(self, node_in, node_out):
        node_in.append_output(node_out)
        node_out.append_input(node_in)

    link_to._clsact_fast = True  # type: ignore[attr-defined]
    link_to.__doc__ = IrGraph.link_to.__doc__
    IrGraph._clsact_original_link_to = IrGraph.link_to
    IrGraph.link_to = link_to


# The CUDA libraries Paddle 2.6.2's PyPI GPU build dlopens, by the file names it asks for
# (paddle/phi/backends/dynload/dynamic_loader.cc; that build is not made
# WITH_PIP_CUDA_LIBRARIES, so the names carry no version). NVIDIA's nvidia-*-cu11 wheels ship
# only versioned sonames (libcudnn.so.8), so the GPU image links each under both names into one
# folder on LD_LIBRARY_PATH (docker/prune.sh). Not here: libcuda.so.1, the driver, which the
# node's NVIDIA container runtime mounts; libcusparseLt.so and libnvinfer (TensorRT), which
# only 2:4-sparse GEMMs and TensorRT inference load. Checked inside the GPU image by
# tests/test_image_gpu.py (`make test-image-gpu`): every name loads, and Paddle's own loader
# opens the unversioned libcudnn.so and libnccl.so.
PADDLE_CUDA_DLOPEN_NAMES = (
    "libcudnn.so", "libcublas.so", "libcublasLt.so", "libcurand.so", "libcusolver.so",
    "libcusparse.so", "libcufft.so", "libnvjpeg.so", "libnvrtc.so", "libnccl.so",
    "libcupti.so", "libnvToolsExt.so",
)


def remove_ops(block, indices: list[int]) -> None:
    """Remove the ops at ``indices`` from a static ``Block`` (descending, so the indices
    stay valid). Relies on ``Block._remove_op(index)`` (private in Paddle 2.6: it removes
    the op from both the Python list and the C++ desc; ``Block.ops`` has no public remover);
    ``tests/test_compat.py`` fails when it stops doing so."""
    for index in sorted(set(indices), reverse=True):
        block._remove_op(index)


def rename_op_input(op, old: str, new: str) -> None:
    """Make ``op`` read ``new`` wherever it read ``old``. Relies on ``Operator._rename_input``
    (private in Paddle 2.6, the only renamer that updates the op's desc);
    ``tests/test_compat.py`` fails when it stops doing so."""
    op._rename_input(old, new)

