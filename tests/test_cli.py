"""Every user mistake: one clear line on stderr, exit code 2, no traceback, nothing written."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_images, run_cli


def config_file(tmp_path: Path, model_dir, data_dir, **glob) -> Path:
    cfg = {"Global": {"model_dir": str(model_dir), "data_dir": str(data_dir),
                      "train_list": "small_train.txt", "val_list": "small_val.txt",
                      "img_size": 32, "resize_size": 36, "num_workers": 0, "report": False,
                      **glob},
           "Distillation": {"loss": "soft_label"}, "QuantAware": {},
           "TrainConfig": {"train_iter": 1}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("clsact: error: ")
    for f in fragments:
        assert f in last, last


def test_help_and_version():
    assert run_cli("--help").returncode == 0
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("clsact ")


def test_missing_config(tmp_path):
    assert_one_line_error(run_cli("compress", "--config", str(tmp_path / "x.yaml")),
                          "x.yaml does not exist")


def test_unknown_key_via_set(tmp_path, small_digits_dir, mbv3_model):
    cfg = config_file(tmp_path, mbv3_model, small_digits_dir)
    assert_one_line_error(run_cli("compress", "--config", str(cfg), "--set", "Global.batchsize=2"),
                          "unknown key Global.batchsize", "did you mean 'batch_size'")


@pytest.mark.parametrize("case, fragments", [
    ("no_model_dir", ["Global.model_dir", "is not an existing directory"]),
    ("no_params", ["inference.pdiparams does not exist (Global.params_filename)"]),
    ("bad_uri", ["Global.model_dir gs://bucket/model: unsupported scheme gs://"]),
    ("no_list", ["list file", "nope.txt does not exist"]),
    ("traversal", ["leaves the data directory"]),
    ("gpu", ["Global.device is gpu but", "--set Global.device=cpu"]),
    ("size", ["takes 32x32 inputs but Global.img_size is 48", "Global.img_size=32"]),
    ("labels", ["label 12", "is not a class of the model, which has 10 outputs"]),
    ("input_name", ["Global.input_name 'image' is not an input", "inputs"]),
])
def test_bad_inputs(tmp_path, small_digits_dir, mbv3_model, case, fragments):
    model, data, glob = mbv3_model, small_digits_dir, {}
    if case == "no_model_dir":
        model = tmp_path / "missing"
    elif case == "no_params":
        model = tmp_path / "m"
        model.mkdir()
        (model / "inference.pdmodel").write_bytes((mbv3_model / "inference.pdmodel").read_bytes())
    elif case == "bad_uri":
        model = "gs://bucket/model"
    elif case == "no_list":
        glob = {"val_list": "nope.txt"}
    elif case in ("traversal", "labels"):
        data = tmp_path / "d"
        data.mkdir()
        lines = (small_digits_dir / "small_train.txt").read_text().splitlines()[:4]
        copy_images(small_digits_dir, data, lines)
        (data / "small_train.txt").write_text("\n".join(lines) + "\n")
        bad = "../../etc/passwd 1" if case == "traversal" else f"{lines[0].split()[0]} 12"
        (data / "small_val.txt").write_text(bad + "\n")
    elif case == "gpu":
        glob = {"device": "gpu"}
    elif case == "size":
        glob = {"img_size": 48, "resize_size": 56}
    elif case == "input_name":
        glob = {"input_name": "image"}
    cfg = config_file(tmp_path, model, data, **glob)
    out = tmp_path / "out"
    assert_one_line_error(run_cli("compress", "--config", str(cfg), "--save-dir", str(out)),
                          *fragments)
    if case in ("no_model_dir", "bad_uri", "no_list", "no_params", "traversal"):
        assert not out.exists(), "input errors are found before the save dir is created"
    assert not out.exists() or list(out.iterdir()) == []


def test_eval_missing_model(tmp_path, small_digits_dir):
    assert_one_line_error(run_cli("eval", "--model-dir", str(tmp_path), "--data-dir",
                                  str(small_digits_dir), "--val-list", "small_val.txt"),
                          "inference.pdmodel does not exist")


def test_eval_fp32_model(tmp_path, mbv3_model, small_digits_dir):
    out = tmp_path / "r.json"
    proc = run_cli("eval", "--model-dir", str(mbv3_model), "--data-dir", str(small_digits_dir),
                   "--val-list", "small_val.txt", "--img-size", "32", "--resize-size", "36",
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"samples": 64' in proc.stdout and out.read_text().count("top5") == 1


def test_sigterm_leaves_nothing_published(tmp_path, small_digits_dir, mbv3_model):
    """A run stopped by SIGTERM (eviction) exits 130, cleans its staging, publishes nothing."""
    import os
    import signal
    import subprocess
    import sys
    import time


    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cfg = config_file(tmp_path, mbv3_model, small_digits_dir, scratch_dir=str(scratch))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "clsact", "compress", "--config", str(cfg),
                             "--save-dir", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(scratch.glob("clsact-work-*/input-0")):
        time.sleep(0.2)  # wait until the run is inside ACT's graph building
    assert list(scratch.glob("clsact-work-*/input-0")), "the run never reached the compression step"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; nothing was published" in err
    assert list(out.iterdir()) == []
    assert list(scratch.iterdir()) == [], "the scratch copy is removed"


SIGNAL_IN_EXEC = """
import os, signal, sys
from clsact.process import unwind_on_sigterm

def plain(signum, frame):
    raise KeyboardInterrupt

if sys.argv[1] == "ours":
    unwind_on_sigterm()
else:
    signal.signal(signal.SIGTERM, plain)
try:  # the signal lands inside a string exec, as when dataclasses or paddle generate code
    exec("import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\nfor _ in range(999): pass",
         {})
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("handler, code", [("ours", 130), ("plain", -2)])
def test_a_signal_inside_a_string_exec_still_exits_130(tmp_path, handler, code):
    """Under ``python -m`` (the image's entry point) a plain KeyboardInterrupt that ends a
    string exec makes CPython die by SIGINT at exit although it was caught (the CI flake
    -2 != 130); clsact's signal exception is a subclass and keeps its exit code."""
    import os
    import subprocess
    import sys

    (tmp_path / "sigexec.py").write_text(SIGNAL_IN_EXEC)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    proc = subprocess.run([sys.executable, "-m", "sigexec", handler], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr[-2000:]


def test_ranks_without_the_launcher_are_refused_clearly(tmp_path, small_digits_dir,
                                                         mbv3_model, monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    for var in ("PADDLE_CURRENT_ENDPOINT", "PADDLE_TRAINER_ENDPOINTS"):
        monkeypatch.delenv(var, raising=False)
    cfg = config_file(tmp_path, mbv3_model, small_digits_dir)
    assert_one_line_error(run_cli("compress", "--config", str(cfg), "--save-dir",
                                  str(tmp_path / "o")),
                          "PADDLE_TRAINERS_NUM=2 but PADDLE_CURRENT_ENDPOINT",
                          "python -m paddle.distributed.launch")


def test_eval_of_a_published_run_uses_the_runs_preprocessing(tmp_path, mbv3_model,
                                                             small_digits_dir):
    """README's `clsact eval --model-dir RUN/model`: a 32 px run is scored at 32 px (the
    ImageNet defaults would crop 224 and report a meaningless number)."""
    import json
    import shutil

    from clsact import config

    run = tmp_path / "run"
    shutil.copytree(mbv3_model, run / "model")
    config.save(config.load(config_file(tmp_path, run / "model", small_digits_dir)),
                run / "config.yaml")
    (run / "manifest.json").write_text("{}")
    explicit = run_cli("eval", "--model-dir", str(mbv3_model), "--data-dir",
                       str(small_digits_dir), "--val-list", "small_val.txt", "--img-size", "32",
                       "--resize-size", "36")
    assert explicit.returncode == 0, explicit.stderr[-2000:]
    for where in (run, run / "model"):
        proc = run_cli("eval", "--model-dir", str(where))
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout)
        assert got["top1"] == json.loads(explicit.stdout)["top1"] and got["samples"] == 64
        assert got["settings"] == {"from": f"{run}/config.yaml", "img_size": 32,
                                   "resize_size": 36, "val_list": "small_val.txt"}
    assert_one_line_error(run_cli("eval", "--model-dir", str(run / "model"), "--img-size",
                                  "224"),
                          "--img-size 224 differs from Global.img_size 32 of the run in",
                          "drop the flag")


def test_eval_refuses_a_crop_the_model_cannot_take(mbv3_model, small_digits_dir):
    assert_one_line_error(run_cli("eval", "--model-dir", str(mbv3_model), "--data-dir",
                                  str(small_digits_dir), "--val-list", "small_val.txt"),
                          "takes 32x32 inputs but the evaluation would crop 224x224",
                          "pass --img-size 32")


def test_fewer_training_images_than_ranks(tmp_path, small_digits_dir, mbv3_model):
    import os

    data = tmp_path / "data"
    lines = (small_digits_dir / "small_train.txt").read_text().splitlines()[:3]
    copy_images(small_digits_dir, data, lines)
    (data / "small_train.txt").write_text("\n".join(lines) + "\n")
    (data / "small_val.txt").write_text("\n".join(lines) + "\n")
    cfg = config_file(tmp_path, mbv3_model, data)
    env = {**os.environ, "PADDLE_TRAINERS_NUM": "4", "PADDLE_TRAINER_ID": "0"}
    assert_one_line_error(run_cli("compress", "--config", str(cfg), "--save-dir",
                                  str(tmp_path / "run"), env=env),
                          "small_train.txt has 3 training images for 4 ranks")


def test_an_interrupt_after_publishing_says_the_run_is_complete(monkeypatch, capsys):
    from clsact.cli import main as cli
    from clsact.storage import publish

    def compress(_args):
        publish._PUBLISHED.append("s3://b/runs/x")
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "compress", compress)
    monkeypatch.setattr(publish, "_PUBLISHED", [])
    assert cli.main(["compress", "--config", "c.yaml"]) == 130
    assert "interrupted after publishing to s3://b/runs/x (complete)" in capsys.readouterr().err


def test_the_watchdog_removes_the_scratch_copies_before_it_exits(tmp_path):
    """os._exit skips every `finally`: the rank's model copies must not be left behind."""
    import subprocess
    import sys

    scratch = tmp_path / "clsact-work-x"
    (scratch / "source-model").mkdir(parents=True)
    code = ("import sys; from pathlib import Path; from clsact.distributed import Group;"
            "from clsact.process import RankInfo; g = Group(RankInfo(0, 2), timeout=1);"
            "g.scratch.append(Path(sys.argv[1])); g._abort('a test')")
    proc = subprocess.run([sys.executable, "-c", code, str(scratch)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3 and "no answer from the other ranks" in proc.stderr
    assert not scratch.exists()


def test_the_exit_code_table_is_one_table():
    """Each exit code has one meaning (the README's table is generated from this one:
    tests/test_docs.py)."""
    from clsact import exitcodes

    codes = [v for k, v in vars(exitcodes).items() if k.isupper() and isinstance(v, int)]
    assert len(codes) == len(set(codes)) == len(exitcodes.TABLE)
