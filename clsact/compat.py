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

import numpy as np

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
    """Call ``callback(train_program_info)`` when paddleslim's ACT enters its training loop.

    paddleslim 2.6.0 builds the training program inside ``single_strategy_compress`` and
    hands it only to the private ``_start_train(train_program_info, test_program_info,
    strategy, train_config)``; ``train_program_info`` is ACT's ``ProgramInfo`` (``program``,
    maybe a ``CompiledProgram`` — :func:`program_of` gives the Program —, ``loss_dict``...),
    the object ACT reads at every step. Hooks chain (each call wraps the last). Before that
    call, when ``TrainConfig.origin_metric`` is set, ACT calls the eval callback once on the
    fp32 inference program ("test metric before compress"): whether ``callback`` has run
    tells that pre-check from in-loop evaluations. ``tests/test_compat.py`` checks both
    assumptions against the installed paddleslim.
    """
    original = act._start_train

    def start_train(train_program_info, test_program_info, strategy, train_config):
        callback(train_program_info)
        return original(train_program_info, test_program_info, strategy, train_config)

    act._start_train = start_train


def program_of(program):
    """The ``Program`` of a ``Program`` or ``CompiledProgram`` (its ``_program``)."""
    return getattr(program, "_program", None) or program


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


def drop_self_scales(model_file: str | Path) -> int:
    """Remove the identity ``scale`` ops that write the variable they read; returns how many.

    ``paddle.static.save_inference_model`` appends ``scale(x, 1.0)`` to every fetch target
    as ``save_infer_model/scale_0.tmp_0``; the name generator restarts with each process, so
    a model saved by ACT from a model that paddle saved before gets a second scale op that
    reads and writes that same variable. Training such a model again (a chain's second stage)
    with another model as teacher makes paddleslim's QAT export fail with "Generated graph
    shouldn't contain cycle"; the op computes nothing, so dropping it changes no output.
    ``tests/test_compat.py`` shows the doubled op appear and its removal keep the outputs;
    the chains of ``tests/test_pruning.py`` fail with that error without it.
    """
    program = load_program(model_file)
    dropped = 0
    for block in program.blocks:
        loops = [i for i, op in enumerate(block.ops) if op.type == "scale"
                 and op.input("X") == op.output("Out") and op.attr("scale") == 1.0
                 and op.attr("bias") == 0.0]
        remove_ops(block, loops)
        dropped += len(loops)
    if dropped:
        Path(model_file).write_bytes(program.desc.serialize_to_string())
    return dropped


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



BATCH_NORM_OPS = ("batch_norm", "batch_norm_grad", "sync_batch_norm", "sync_batch_norm_grad")


def student_batch_norms(program, teacher_prefix: str) -> list:
    """The batch-norm ops (forward and gradient) of the student in ACT's training program:
    those whose running mean is not one of the teacher's variables (ACT prefixes every
    teacher variable with ``teacher_prefix``)."""
    return [op for block in program.blocks for op in block.ops
            if op.type in BATCH_NORM_OPS and "Mean" in op.input_names
            and not op.input("Mean")[0].startswith(teacher_prefix)]


def freeze_batch_norm(program_info, teacher_prefix: str) -> tuple[int, int]:
    """Freeze the student's batch-norm statistics in ACT's training program; returns (layers
    frozen now, layers that already normalised with their running statistics).

    ACT turns the inference program into a training one by clearing ``is_test``; a batch
    norm exported with ``use_global_stats`` (``paddle.jit.save`` of a model in eval mode, as
    PaddleClas exports) then keeps normalising with the running mean and variance, one
    exported without it (a static-graph ``save_inference_model``) normalises with each
    batch's statistics and updates the running ones. Every student ``batch_norm`` op and its
    gradient get ``use_global_stats`` (normalising as the deployed model does, statistics
    unchanged; scale and shift still train). paddle 2.6's ``CompiledProgram`` copies the
    Program into its graph when it is made, and ACT's ``_prepare_program`` compiles the
    training program before its loop starts, so an edited attribute reaches the executor only
    through a new ``CompiledProgram`` over the edited Program, with ACT's build strategy:
    ``program_info.program`` is replaced (ACT reads it at every step). A Program ACT left
    uncompiled (fleet) is edited in place. ``tests/test_convergence.py`` checks that the
    running statistics stop changing once frozen, and change without it.
    """
    from paddle.static import CompiledProgram

    compiled = program_info.program
    program = program_of(compiled)
    ops = student_batch_norms(program, teacher_prefix)
    already = sum(op.type.endswith("batch_norm") and bool(op.attr("use_global_stats"))
                  for op in ops)
    for op in ops:
        op._set_attr("use_global_stats", True)
    if isinstance(compiled, CompiledProgram):
        program_info.program = CompiledProgram(program, build_strategy=compiled._build_strategy)
    return sum(op.type.endswith("batch_norm") for op in ops) - already, already


def record_act_losses(act, sink: Callable[[float], None]) -> None:
    """Pass ACT's training loss of every step to ``sink``.

    paddleslim 2.6.0's ``_start_train`` runs each step as ``self._exe.run(train_program,
    feed=..., fetch_list=fetch_targets + loss_vars)`` and keeps the result private (logged
    every ``logging_iter`` steps); its first fetch is the total loss. The executor's ``run``
    is wrapped on this instance; evaluations (``fetch_list`` without the loss) pass through.
    ``tests/test_compat.py`` checks the source still fetches that way.
    """
    state: dict[str, Any] = {"names": None}
    exe = act._exe
    original = exe.run

    def set_loss_names(train_program_info):
        state["names"] = {v.name for v in train_program_info.loss_dict.values()}

    def run(program=None, feed=None, fetch_list=None, *args, **kwargs):
        result = original(program, feed, fetch_list, *args, **kwargs)
        names = state["names"]
        if names and fetch_list and getattr(fetch_list[-1], "name", None) in names:
            sink(float(np.asarray(result[0]).reshape(-1)[0]))
        return result

    exe.run = run
    on_act_train_start(act, set_loss_names)


def act_fetches_loss_first() -> bool:
    """Whether paddleslim's ``_start_train`` fetches ``fetch_targets + loss_vars`` through
    ``self._exe.run`` (what :func:`record_act_losses` relies on)."""
    from paddleslim.auto_compression import AutoCompression

    source = "".join(inspect.getsource(AutoCompression._start_train).split()).replace("\\", "")
    return ("self._exe.run(train_program_info.program,feed=data,fetch_list=train_program_info."
            "fetch_targets+loss_vars)" in source)


def before_act_save(act, callback: Callable[[], None]) -> None:
    """Call ``callback()`` when paddleslim's ACT is about to save the compressed model (its
    private ``_save_model(test_program_info, strategy, strategy_idx)``, on rank 0 only,
    after the training loop: no collective may run in ``callback``). Hooks chain.
    ``tests/test_compat.py`` checks the signature."""
    original = act._save_model

    def save_model(test_program_info, strategy, strategy_idx):
        callback()
        return original(test_program_info, strategy, strategy_idx)

    act._save_model = save_model


def act_keep_last(act) -> None:
    """Make ACT save the model as it is after its last step, not its best-evaluated one.

    paddleslim 2.6.0 saves ``<tmp_dir>/best_model.*`` whenever an evaluation beats the best so
    far, and ``_save_model`` loads that file back into the program before exporting (and
    deletes it). Removing the file first makes ``_save_model`` export the current state.
    ``tests/test_compat.py`` checks ``_save_model`` still reads that file.
    """

    def drop_best() -> None:
        for suffix in ("pdparams", "pdmodel", "pdopt"):
            path = Path(act.tmp_dir) / f"{BEST_MODEL}.{suffix}"
            if path.exists():
                path.unlink()

    before_act_save(act, drop_best)


BEST_MODEL = "best_model"


def act_save_model_loads_best() -> bool:
    """Whether paddleslim's ``_save_model`` loads ``<tmp_dir>/best_model`` (what
    :func:`act_keep_last` removes)."""
    from paddleslim.auto_compression import AutoCompression

    source = inspect.getsource(AutoCompression._save_model)
    return f"'{BEST_MODEL}.pdparams'" in source and "paddle.static.load" in source


class LearningRate:
    """Scales the learning rates of ACT's training program by a factor, between steps.

    paddleslim 2.6.0 builds its optimizer with a number or a ``paddle.optimizer.lr``
    scheduler (``TrainConfig.learning_rate``), and PACT's thresholds get a second optimizer
    with a number. A number becomes a persistable variable that the optimizer ops read
    (their ``LearningRate`` input), written once by the start-up program: scaling writes
    base x factor into the scope. A scheduler's variable is written by the executor before
    every run from ``program.lr_scheduler()`` (a ``CompiledProgram`` hands its Program's
    ``lr_scheduler`` to the program it converts, once): the Program gets a proxy scheduler
    that returns the scheduler's value times the factor, installed before the first step
    (ACT keeps stepping its own scheduler). ``tests/test_convergence.py`` checks both
    against the installed paddle: a factor 0 leaves the weights unchanged.
    """

    def __init__(self, program_info, scope, place) -> None:
        from paddle.optimizer.lr import LRScheduler

        program = program_of(program_info.program)
        scheduler = getattr(program, "lr_scheduler", None)
        self.proxy = None
        skip: set[str] = set()
        if isinstance(scheduler, LRScheduler):
            self.proxy = _scaled_scheduler(scheduler)
            program.lr_scheduler = self.proxy
            skip.add(scheduler._var_name)
        names = {op.input("LearningRate")[0] for block in program.blocks for op in block.ops
                 if "LearningRate" in op.input_names and op.input("LearningRate")} - skip
        self.scope, self.place = scope, place
        self.base = {n: np.array(scope.find_var(n).get_tensor()) for n in sorted(names)}
        self.factor = 1.0

    def set(self, factor: float) -> None:
        """Make every learning rate ``factor`` times its configured value from the next
        step on."""
        self.factor = factor
        if self.proxy is not None:
            self.proxy.clsact_factor = factor
        for name, value in self.base.items():
            self.scope.find_var(name).get_tensor().set(
                (value * factor).astype(value.dtype), self.place)

    def names(self) -> list[str]:
        """The learning-rate variables scaled in the scope (a scheduler's is fed)."""
        return list(self.base)


def _scaled_scheduler(inner):
    """An ``LRScheduler`` the executor accepts (it checks the type) whose value is
    ``inner``'s times ``clsact_factor``."""
    from paddle.optimizer.lr import LRScheduler

    class Scaled(LRScheduler):
        def __init__(self) -> None:  # noqa: D107 - no LRScheduler.__init__: it steps
            self.inner = inner
            self.clsact_factor = 1.0
            self._var_name = inner._var_name

        def __call__(self) -> float:
            return float(self.inner()) * self.clsact_factor

        def get_lr(self) -> float:
            return float(self.inner.get_lr()) * self.clsact_factor

    return Scaled()


ASP_MASK_SUFFIX = ".asp_mask"  # paddle.incubate.asp: ASPHelper._get_mask_name
UNSTRUCTURED_MASK_SUFFIX = "_mask"  # paddleslim UnstructuredPruner._apply_masks


def pruning_masks(names: list[str]) -> dict[str, str]:
    """The pruning masks among a program's state variable ``names``, each mapped to the
    weight it masks: Paddle's ASP names a 2:4 mask ``<weight>.asp_mask``, paddleslim's
    unstructured pruner ``<weight>_mask`` (both private conventions; ``tests/test_compat.py``
    builds both pruners and checks them)."""
    known = set(names)
    out = {}
    for name in names:
        if name.endswith(ASP_MASK_SUFFIX) and name[:-len(ASP_MASK_SUFFIX)] in known:
            out[name] = name[:-len(ASP_MASK_SUFFIX)]
        elif name.endswith(UNSTRUCTURED_MASK_SUFFIX) \
                and name[:-len(UNSTRUCTURED_MASK_SUFFIX)] in known:
            out[name] = name[:-len(UNSTRUCTURED_MASK_SUFFIX)]
    return out
