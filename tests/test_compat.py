"""The dropout Mask workaround (paddleslim #1927 / PR #1859) on a real paddle.jit.save model."""

import shutil

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
