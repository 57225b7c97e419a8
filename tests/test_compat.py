"""The dropout Mask workaround (paddleslim #1927 / PR #1859) on a real paddle.jit.save model."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from clsact.compat import fix_dropout_mask
from clsact.modelio import load_program


def merge_teacher_into_student(model_dir):
    """What ACT's distillation does first: copy the teacher's ops into the student program."""
    from paddleslim.dist import merge

    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    teacher_scope = paddle.static.Scope()
    with paddle.static.scope_guard(teacher_scope):
        teacher, _, _ = paddle.static.load_inference_model(str(model_dir / "inference"), exe)
    with paddle.static.scope_guard(paddle.static.Scope()):
        student, _, _ = paddle.static.load_inference_model(str(model_dir / "inference"), exe)
        merge(teacher, student, {"inputs": "inputs"}, paddle.CPUPlace(),
              teacher_scope=teacher_scope)
    return student


def dropout_ops(model_file):
    return [op for op in load_program(model_file).global_block().ops if op.type == "dropout"]


def test_jit_saved_model_has_the_defect_and_breaks_distillation(mbv3_model, tmp_path):
    model = shutil.copytree(mbv3_model, tmp_path / "m")
    assert [op.output_names for op in dropout_ops(model / "inference.pdmodel")] == [["Out"]]
    with pytest.raises(ValueError, match=r'operator "dropout", should set: \[Mask\]'):
        merge_teacher_into_student(model)


def test_fix_makes_distillation_merge_work(mbv3_model, tmp_path):
    model = shutil.copytree(mbv3_model, tmp_path / "m")
    assert fix_dropout_mask(model / "inference.pdmodel") == 1
    assert fix_dropout_mask(model / "inference.pdmodel") == 0  # idempotent
    (op,) = dropout_ops(model / "inference.pdmodel")
    assert op.output("Mask")
    student = merge_teacher_into_student(model)
    assert sum(op.type == "dropout" for op in student.global_block().ops) == 2


def test_fix_keeps_inference_results(mbv3_model, tmp_path):
    fixed = shutil.copytree(mbv3_model, tmp_path / "fixed")
    fix_dropout_mask(fixed / "inference.pdmodel")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    outs = []
    for d in (mbv3_model, fixed):
        with paddle.static.scope_guard(paddle.static.Scope()):
            prog, feeds, fetches = paddle.static.load_inference_model(str(d / "inference"), exe)
            outs.append(exe.run(prog, feed={feeds[0]: x}, fetch_list=fetches)[0])
    assert np.array_equal(outs[0], outs[1])


def test_act_evaluates_before_training_only_for_the_origin_metric_check():
    """act.py answers an eval callback that comes before ``_start_train`` with the measured
    baseline (compat.on_act_train_start): both facts about paddleslim 2.6.0 hold."""
    import inspect

    from paddleslim.auto_compression import AutoCompression

    from clsact.compat import act_checks_origin_metric_before_training

    assert act_checks_origin_metric_before_training(AutoCompression)
    params = list(inspect.signature(AutoCompression._start_train).parameters)
    assert params == ["self", "train_program_info", "test_program_info", "strategy",
                      "train_config"]


def _quantized_program(fast: bool) -> list:
    """A small conv net through the QAT passes ACT runs, with or without the fast links: its
    ops (type, inputs, outputs, sorted). The passes visit ops in set order, so the numbers
    of their ``state_N``, ``accum_N``, ``scale_state@_N`` ... variables vary between any two
    runs: they are left out."""
    from paddle.base.framework import IrGraph
    from paddle.static.quantization import OutScaleForTrainingPass, QuantizationTransformPassV2

    from clsact import compat

    compat.fast_ir_graph_links()
    fast_link = IrGraph.link_to
    if not fast:
        IrGraph.link_to = IrGraph._clsact_original_link_to
    try:
        paddle.enable_static()
        main, startup = paddle.static.Program(), paddle.static.Program()
        names = paddle.utils.unique_name.guard()  # the passes name new variables too
        names.__enter__()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [None, 3, 8, 8], "float32")
            y = paddle.static.nn.conv2d(x, 4, 3, act="relu")
            y = paddle.static.nn.conv2d(y, 4, 3)
            paddle.static.nn.fc(paddle.flatten(y, 1), 10)
        scope = paddle.static.Scope()
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            graph = IrGraph(paddle.base.core.Graph(main.desc), for_test=False)
            QuantizationTransformPassV2(scope=scope, place=paddle.CPUPlace()).apply(graph)
            OutScaleForTrainingPass(scope=scope, place=paddle.CPUPlace()).apply(graph)
            program = graph.to_program()
    finally:
        names.__exit__(None, None, None)
        IrGraph.link_to = fast_link

    def canon(args):
        return sorted(re.sub(r"^(state|accum|scale_state@|scale_accum@)_\d+$", r"\1", a)
                      for a in args)

    return sorted((op.type, canon(op.input_arg_names), canon(op.output_arg_names))
                  for op in program.global_block().ops)


def test_fast_graph_links_build_the_same_program():
    import ast
    import inspect
    import textwrap

    from paddle.base.framework import IrGraph

    from clsact import compat

    compat.fast_ir_graph_links()
    original = IrGraph._clsact_original_link_to
    body = ast.parse(textwrap.dedent(inspect.getsource(original))).body[0].body
    kinds = [type(node).__name__ for node in body[1:]]  # after the docstring
    calls = [ast.unparse(node) for node in body if isinstance(node, ast.Expr)][1:]
    assert kinds == ["Assert", "Assert", "Expr", "Expr"], "paddle's link_to changed"
    assert calls == ["node_in.append_output(node_out)", "node_out.append_input(node_in)"]
    assert _quantized_program(fast=True) == _quantized_program(fast=False)


def test_act_fleet_mode_is_its_prepare_envs_flag_and_strategy_hook():
    """compat.act_fleet relies on ACT 2.6.0 returning ``(exe, places, fleet)`` from
    ``_prepare_envs``, building its ``fleet.DistributedStrategy`` in
    ``_prepare_fleet_strategy(train_config)``, and wrapping the optimizer with it only when
    the flag is set."""
    import inspect

    from paddleslim.auto_compression import AutoCompression
    from paddleslim.auto_compression import create_compressed_program as ccp

    envs = inspect.getsource(AutoCompression._prepare_envs)
    assert "return exe, places, fleet" in envs.replace("\n", " ")
    prepare = inspect.getsource(AutoCompression._prepare_program)
    assert "if self.fleet:" in prepare and "self._prepare_fleet_strategy(train_config)" in prepare
    assert "fleet.distributed_optimizer(optimizer" in inspect.getsource(ccp.build_distill_program)
    config = type("TrainConfig", (), {"recompute_config": None, "sharding_config": None,
                                      "amp_config": None})()
    strategy = AutoCompression._prepare_fleet_strategy(None, config)
    from clsact.distributed import in_graph_allreduce

    in_graph_allreduce(strategy)
    assert strategy.without_graph_optimization and strategy.fuse_grad_size_in_num > 1
    assert not strategy.build_strategy.enable_inplace


@pytest.mark.skipif(paddle.device.is_compiled_with_cuda(), reason="CPU-build defects")
def test_the_cpu_build_lacks_what_fleet_s_raw_program_path_assumes():
    """compat.collective_on_cpu exists because, on the CPU build, the communicator set-up
    raises and the stream-sync ops have no kernel, while the collective ops themselves run
    (over gloo). When a paddle release changes this, revisit the patch."""
    from paddle.base import core
    from paddle.distributed.fleet.meta_optimizers.common import CollectiveHelper

    kernels = core._get_all_register_op_kernels("all")
    assert "c_allreduce_sum" in kernels and "c_broadcast" in kernels
    assert "coalesce_tensor" in kernels
    assert "c_sync_comm_stream" not in kernels and "c_sync_calc_stream" not in kernels
    helper = object.__new__(CollectiveHelper)
    program = paddle.static.Program()
    with pytest.raises(ValueError):
        CollectiveHelper._init_communicator(helper, program, "127.0.0.1:1",
                                            ["127.0.0.1:1", "127.0.0.1:2"], 1, 0, False)


def test_paddle_s_gloo_http_server_module_writes_http_log_where_it_is_imported(tmp_path):
    """compat.no_gloo_http_log exists because importing the module creates ./http.log."""
    import subprocess
    import sys

    name = "paddle.distributed.fleet.utils.http_server"
    subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert (tmp_path / "http.log").exists()
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    subprocess.run([sys.executable, "-c", "from clsact.compat import no_gloo_http_log; "
                    f"no_gloo_http_log(); import logging; logging.getLogger('{name}').info('x')"],
                   cwd=quiet, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert list(quiet.iterdir()) == []


def test_op_removal_and_input_renaming_reach_the_serialized_program(mbv3_model):
    """``remove_ops`` and ``rename_op_input`` (Paddle 2.6 private ``Block._remove_op`` and
    ``Operator._rename_input``) change the program's desc, so the rewrite survives
    serialisation: what :mod:`clsact.deploy.qdq` writes."""
    from clsact.compat import remove_ops, rename_op_input

    program = load_program(mbv3_model / "inference.pdmodel")
    block = program.global_block()
    count = len(block.ops)
    i = next(i for i, op in enumerate(block.ops) if op.type == "dropout")
    reader = next(op for op in block.ops[i + 1:]
                  if block.ops[i].output("Out")[0] in op.input_arg_names)
    old = block.ops[i].output("Out")[0]
    new = block.ops[i].input("X")[0]
    rename_op_input(reader, old, new)
    remove_ops(block, [i])
    again = paddle.static.Program.parse_from_string(program.desc.serialize_to_string())
    ops = again.global_block().ops
    assert len(ops) == count - 1 and "dropout" not in [op.type for op in ops]
    assert any(new in op.input_arg_names and op.type == reader.type for op in ops)
    assert not any(old in op.input_arg_names for op in ops)


def test_act_s_training_loop_and_save_are_what_the_guard_hooks_rely_on():
    """record_act_losses (the loss is ACT's first fetch of its training program's run),
    act_keep_last (``_save_model`` loads ``<tmp_dir>/best_model``), before_act_save and
    on_act_train_start (their private signatures): paddleslim 2.6.0's, checked."""
    import inspect

    from paddleslim.auto_compression import AutoCompression

    from clsact import compat

    assert compat.act_fetches_loss_first()
    assert compat.act_save_model_loads_best()
    assert list(inspect.signature(AutoCompression._save_model).parameters) == [
        "self", "test_program_info", "strategy", "strategy_idx"]


def test_a_compiled_program_keeps_the_program_it_was_made_from():
    """freeze_batch_norm / LearningRate rebuild or read ACT's CompiledProgram through its
    ``_program`` and ``_build_strategy`` (paddle 2.6 privates), and the executor takes a
    scheduler's value from ``program.lr_scheduler()`` when its type is LRScheduler."""
    import inspect

    from paddle.base import executor

    from clsact import compat

    main = paddle.static.Program()
    strategy = paddle.static.BuildStrategy()
    compiled = paddle.static.CompiledProgram(main, build_strategy=strategy)
    assert compat.program_of(compiled) is main and compiled._build_strategy is strategy
    assert compat.program_of(main) is main
    source = inspect.getsource(executor)
    assert "lr_value = lr_scheduler()" in source
    assert "converted_program.lr_scheduler = inner_program.lr_scheduler" in source


def _static_net():
    """A static conv + linear program with a Momentum step, in fresh programs."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        x = paddle.static.data("x", [None, 4, 8, 8], "float32")
        y = paddle.nn.functional.relu(paddle.static.nn.conv2d(x, 8, 1))
        out = paddle.static.nn.fc(paddle.flatten(y, 1), 4)
        loss = paddle.mean(out)
    return main, startup, loss


def test_pruning_mask_names_are_what_the_pruners_create():
    """compat.pruning_masks reads Paddle's ASP and paddleslim's unstructured mask names."""
    from paddle.incubate import asp
    from paddleslim.prune.unstructured_pruner import UnstructuredPruner

    from clsact.compat import pruning_masks
    from clsact.distributed import state_names

    paddle.enable_static()
    try:
        for kind in ("asp", "unstructured"):
            main, startup, loss = _static_net()
            scope = paddle.static.Scope()
            with paddle.static.scope_guard(scope), paddle.static.program_guard(main, startup):
                opt = paddle.optimizer.Momentum(0.1)
                if kind == "asp":
                    opt = asp.decorate(opt)
                opt.minimize(loss)
                exe = paddle.static.Executor(paddle.CPUPlace())
                exe.run(startup)
                if kind == "asp":
                    asp.prune_model(main)
                else:
                    UnstructuredPruner(main, "ratio", ratio=0.5, scope=scope,
                                       place=paddle.CPUPlace())
                names = state_names(scope, main)
            masks = pruning_masks(names)
            assert {"conv2d_0.w_0", "fc_0.w_0"} <= set(masks.values()), (kind, sorted(names))
            assert all(mask in names and weight in names for mask, weight in masks.items())
    finally:
        paddle.disable_static()


def test_a_model_saved_again_gets_a_self_scale_that_drop_self_scales_removes(tmp_path,
                                                                               clas_model):
    """Saving an inference model in a new process adds ``scale`` on the fetch target under
    the name it already has (what ACT does to every model it saves); the op is removed and
    the outputs stay the same."""
    import subprocess
    import sys

    from clsact.compat import drop_self_scales
    from clsact.modelio import copy_model

    again = tmp_path / "again"
    script = (
        "import paddle, sys; paddle.enable_static(); exe = paddle.static.Executor();"
        f"p, f, t = paddle.static.load_inference_model('{clas_model}/inference', exe);"
        "b = p.global_block(); paddle.static.save_inference_model("
        f"'{again}/inference', [b.var(n) for n in f], t, exe, program=p)")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    model = again / "inference.pdmodel"

    def loops(path):
        return [op for op in load_program(path).global_block().ops if op.type == "scale"
                and op.input("X") == op.output("Out")]

    assert len(loops(model)) == 1 and not loops(clas_model / "inference.pdmodel")
    before = _outputs(again)
    copy_model(again, tmp_path / "fixed", "inference.pdmodel", "inference.pdiparams")
    assert drop_self_scales(tmp_path / "fixed" / "inference.pdmodel") == 1
    assert not loops(tmp_path / "fixed" / "inference.pdmodel")
    np.testing.assert_array_equal(_outputs(tmp_path / "fixed"), before)


def _outputs(model_dir: Path) -> np.ndarray:
    paddle.enable_static()
    try:
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            prog, feeds, fetches = paddle.static.load_inference_model(
                str(model_dir / "inference"), exe)
            x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
            return exe.run(prog, feed={feeds[0]: x}, fetch_list=fetches)[0]
    finally:
        paddle.disable_static()
