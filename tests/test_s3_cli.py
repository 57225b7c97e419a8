"""`clsact eval` / `compress` against real S3 (moto server on loopback): URIs for the model,
the data and the save dir, and every S3 mistake a user makes -> one clear line, exit 2."""

import json
import os
from pathlib import Path

import pytest

from clsact.demo.s3server import LocalS3Server
from tests.conftest import list_keys, run_cli, upload_tree
from tests.test_cli import assert_one_line_error, config_file

EVAL = ["--val-list", "small_val.txt", "--img-size", "32", "--resize-size", "36",
        "--num-workers", "2"]


def small_lines(root):
    return [ln.split()[0] for name in ("small_train.txt", "small_val.txt")
            for ln in (root / name).read_text().splitlines()]


def upload_inputs(client, bucket, digits, model):
    upload_tree(client, bucket, "data", digits,
                small_lines(digits) + ["small_train.txt", "small_val.txt"])
    upload_tree(client, bucket, "model", model, ["inference.pdmodel", "inference.pdiparams"])


@pytest.fixture(scope="module")
def s3_inputs(s3_server, small_digits_dir, mbv3_model):
    client = s3_server.client()
    client.create_bucket(Bucket="inputs")
    upload_inputs(client, "inputs", small_digits_dir, mbv3_model)
    return s3_server


def s3_cli(server, *args, env=None):
    return run_cli(*args, "--s3-endpoint", server.endpoint, env=env)


def test_eval_from_s3_matches_local(s3_inputs, small_digits_dir, mbv3_model):
    local = run_cli("eval", "--model-dir", str(mbv3_model), "--data-dir", str(small_digits_dir),
                    *EVAL)
    remote = s3_cli(s3_inputs, "eval", "--model-dir", "s3://inputs/model", "--data-dir",
                    "s3://inputs/data", *EVAL)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr[-2000:]
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert (a["top1"], a["top5"], a["samples"]) == (b["top1"], b["top5"], b["samples"])
    assert b["samples"] == 64


@pytest.mark.parametrize("model, data, fragments", [
    ("s3://inputs/model", "s3://no-such-bucket/data",
     ["s3://no-such-bucket/data/small_val.txt", "the bucket does not exist"]),
    ("s3://inputs/nomodel", "s3://inputs/data",
     ["--model-dir s3://inputs/nomodel: no object s3://inputs/nomodel/inference.pdmodel"]),
    ("s3://inputs/model", "s3://inputs/nodata",
     ["list file s3://inputs/nodata/small_val.txt does not exist"]),
    ("gs://inputs/model", "s3://inputs/data", ["unsupported scheme gs://"]),
    ("s3:/inputs/model", "s3://inputs/data", ["malformed URI"]),
    ("s3://Inputs/model", "s3://inputs/data", ["'Inputs' is not a valid S3 bucket name"]),
])
def test_eval_bad_locations(s3_inputs, model, data, fragments):
    assert_one_line_error(s3_cli(s3_inputs, "eval", "--model-dir", model, "--data-dir", data,
                                 *EVAL), *fragments)


def test_missing_object_named_by_the_list(s3_inputs, small_digits_dir):
    client = s3_inputs.client()
    lines = (small_digits_dir / "small_val.txt").read_text().splitlines()
    client.put_object(Bucket="inputs", Key="data/holes.txt",
                      Body="\n".join(lines + ["val/0/not-there.jpg 0"]).encode())
    assert_one_line_error(
        s3_cli(s3_inputs, "eval", "--model-dir", "s3://inputs/model", "--data-dir",
               "s3://inputs/data", *EVAL[2:], "--val-list", "holes.txt"),
        "1 of 65 images in the validation set are unreadable",
        "s3://inputs/data/val/0/not-there.jpg: no such object")


@pytest.mark.parametrize("case, fragment", [
    ("no_credentials", "no S3 credentials found; set AWS_ACCESS_KEY_ID"),
    ("bad_profile", "fix AWS_PROFILE"),
    ("unreachable", "cannot connect to http://127.0.0.1:9"),
])
def test_credential_and_endpoint_mistakes(s3_inputs, tmp_path, case, fragment):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS")
           and not k.startswith("AWS_SECRET")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"))
    endpoint = s3_inputs.endpoint
    if case == "bad_profile":
        env["AWS_PROFILE"] = "nightly"
    if case == "unreachable":
        env = dict(os.environ)
        endpoint = "http://127.0.0.1:9"
    proc = run_cli("eval", "--model-dir", "s3://inputs/model", "--data-dir", "s3://inputs/data",
                   *EVAL, "--s3-endpoint", endpoint, env=env)
    assert_one_line_error(proc, fragment)
    assert "clsact-demo" not in proc.stderr, "credentials never appear in messages"


@pytest.fixture(scope="module")
def auth_server(small_digits_dir, mbv3_model):
    """A server that enforces IAM auth: an admin, a reader who may read inputs/* only, and
    a writer who may put (not delete) objects under runs/."""
    with LocalS3Server(auth_after=9) as server:
        iam = _iam(server)
        keys = {}
        for user, actions, resources in (
                ("admin", ["s3:*"], ["arn:aws:s3:::*"]),
                ("reader", ["s3:GetObject", "s3:ListBucket"],
                 ["arn:aws:s3:::lab", "arn:aws:s3:::lab/inputs/*"]),
                ("writer", ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
                 ["arn:aws:s3:::lab", "arn:aws:s3:::lab/runs/*"])):
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": actions, "Resource": resources}]}))
            keys[user] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                          "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        admin = server.client(aws_access_key_id=keys["admin"]["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=keys["admin"]["AWS_SECRET_ACCESS_KEY"])
        admin.create_bucket(Bucket="lab")
        upload_tree(admin, "lab", "inputs/data", small_digits_dir,
                    small_lines(small_digits_dir) + ["small_train.txt", "small_val.txt"])
        upload_tree(admin, "lab", "inputs/model", mbv3_model,
                    ["inference.pdmodel", "inference.pdiparams"])
        yield server, keys, admin


def _iam(server):
    import boto3

    return boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y")


def test_forbidden_save_dir_fails_before_training(auth_server, tmp_path):
    server, keys, admin = auth_server
    cfg = config_file(tmp_path, "s3://lab/inputs/model", "s3://lab/inputs/data")
    proc = run_cli("compress", "--config", str(cfg), "--save-dir", "s3://lab/runs/r1",
                   "--s3-endpoint", server.endpoint, env={**os.environ, **keys["reader"]})
    assert_one_line_error(proc, "s3://lab/runs/r1", "access denied")
    assert "baseline" not in proc.stderr, "refused before any evaluation or training"
    assert list_keys(admin, "lab", "runs/") == []
    assert keys["reader"]["AWS_SECRET_ACCESS_KEY"] not in proc.stderr


def test_reader_may_evaluate_and_bad_secret_is_named(auth_server):
    server, keys, _ = auth_server
    args = ["eval", "--model-dir", "s3://lab/inputs/model", "--data-dir", "s3://lab/inputs/data",
            *EVAL, "--s3-endpoint", server.endpoint]
    ok = run_cli(*args, env={**os.environ, **keys["reader"]})
    assert ok.returncode == 0, ok.stderr[-2000:]
    wrong = {**keys["reader"], "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    assert_one_line_error(run_cli(*args, env={**os.environ, **wrong}),
                          "S3 rejected the credentials (SignatureDoesNotMatch)")
    unknown = {**keys["reader"], "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN"}
    assert_one_line_error(run_cli(*args, env={**os.environ, **unknown}),
                          "S3 rejected the credentials (InvalidAccessKeyId)")


@pytest.mark.parametrize("reader_name", ["obstore", "boto3"])
def test_image_reads_name_credential_and_permission_errors(auth_server, small_digits_dir,
                                                           monkeypatch, reader_name):
    """The hot read path (either client) ends with boto3's one-line messages."""
    from clsact.errors import StorageError
    from clsact.storage import S3Store
    from clsact.storage.s3read import READER_ENV
    from clsact.storage.s3session import S3Settings
    from clsact.storage.uri import parse_s3

    server, keys, _ = auth_server
    monkeypatch.setenv(READER_ENV, reader_name)
    name = small_lines(small_digits_dir)[0]

    def store(where, attempts):  # another setting: clients are cached per settings
        return S3Store(parse_s3(where, "x"), S3Settings(endpoint_url=server.endpoint,
                                                        max_attempts=attempts))

    for k, v in keys["admin"].items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StorageError, match="s3://no-such-bucket/x/a.jpg: the bucket does not"):
        list(store("s3://no-such-bucket/x", 4).iter_many(["a.jpg"]))
    for k, v in keys["reader"].items():
        monkeypatch.setenv(k, v)
    assert list(store("s3://lab/inputs/data", 2).iter_many([name])) == [
        (small_digits_dir / name).read_bytes()]
    with pytest.raises(StorageError, match=r"s3://lab/runs/x.jpg: access denied"):
        list(store("s3://lab/runs", 2).iter_many(["x.jpg"]))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="S3 rejected the credentials") as err:
        store("s3://lab/inputs/data", 3).read_range(name, 0, 10)
    assert "not-the-secret" not in str(err.value) and "\n" not in str(err.value)


def test_missing_save_bucket_fails_before_training(s3_inputs, tmp_path):
    cfg = config_file(tmp_path, "s3://inputs/model", "s3://inputs/data")
    proc = s3_cli(s3_inputs, "compress", "--config", str(cfg), "--save-dir",
                  "s3://no-such-bucket/runs/1")
    assert_one_line_error(proc, "s3://no-such-bucket/runs/1: the bucket does not exist")
    assert "baseline" not in proc.stderr


def test_teacher_model_from_s3_is_fetched(monkeypatch, s3_inputs, tmp_path, mbv3_model):
    from clsact import config
    from clsact.compress import fetch_model

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_inputs.endpoint)
    cfg = config.validate({
        "Global": {"model_dir": "s3://inputs/model", "data_dir": "s3://inputs/data"},
        "Distillation": {"loss": "soft_label", "teacher_model_dir": "s3://inputs/model"},
        "QuantAware": {}, "TrainConfig": {"train_iter": 1}})
    model, overrides = fetch_model(cfg, tmp_path, cfg.globals.s3())
    teacher = Path(overrides["Distillation"]["teacher_model_dir"])
    assert tmp_path in model.parents and tmp_path in teacher.parents, "scratch copies"
    assert (teacher / "inference.pdiparams").read_bytes() == \
        (mbv3_model / "inference.pdiparams").read_bytes()
    assert cfg.data["Distillation"]["teacher_model_dir"] == "s3://inputs/model", \
        "the config keeps the URI (the resolved config.yaml records the source)"


def test_write_once_permissions_are_enough_to_publish(auth_server, tmp_path, caplog,
                                                      monkeypatch):
    """A writer without s3:DeleteObject passes the write check (with a warning) and can
    publish a run."""
    from clsact.storage import S3Store
    from clsact.storage.publish import check_unfinished, publish, verify
    from clsact.storage.s3session import S3Settings
    from clsact.storage.uri import parse_s3

    server, keys, _ = auth_server
    for name, value in keys["writer"].items():
        monkeypatch.setenv(name, value)
    # clients are cached per process and settings: settings no other test uses
    conf = S3Settings(endpoint_url=server.endpoint, io_threads=3)
    store = S3Store(parse_s3("s3://lab/runs/w1", "x"), conf)
    check_unfinished(store, overwrite=False)
    assert "could not delete the write probe" in caplog.text
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "metrics.json").write_text("{}")
    publish(stage, store, "w1")
    assert verify(store).ok


def _key_dir(folder: Path, keys: dict[str, str]) -> Path:
    folder.mkdir()
    for name, value in keys.items():
        (folder / name).write_text(value + "\n")     # a trailing newline, as editors leave
    return folder


def test_credentials_from_a_mounted_secret_folder(auth_server, tmp_path):
    """CLSACT_S3_CREDENTIALS_DIR (how the pods get the S3 Secret: as files, since paddle's
    launcher prints a failed worker's environment) is used, wins over env keys, and a folder
    without a key or with a wrong one is one clear line."""
    server, keys, _ = auth_server
    args = ["eval", "--model-dir", "s3://lab/inputs/model", "--data-dir", "s3://lab/inputs/data",
            *EVAL, "--s3-endpoint", server.endpoint]
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ACCESS", "AWS_SECRET"))}
    good = _key_dir(tmp_path / "good", keys["reader"])
    ok = run_cli(*args, env={**bare, "CLSACT_S3_CREDENTIALS_DIR": str(good),
                             "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN",
                             "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert ok.returncode == 0, ok.stderr[-2000:]
    wrong = _key_dir(tmp_path / "wrong", {**keys["reader"],
                                          "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert_one_line_error(run_cli(*args, env={**bare, "CLSACT_S3_CREDENTIALS_DIR": str(wrong)}),
                          "S3 rejected the credentials (SignatureDoesNotMatch)")
    partial = _key_dir(tmp_path / "partial", {"AWS_ACCESS_KEY_ID": "AKIA"})
    assert_one_line_error(run_cli(*args, env={**bare, "CLSACT_S3_CREDENTIALS_DIR": str(partial)}),
                          "has no AWS_SECRET_ACCESS_KEY")
    assert_one_line_error(run_cli(*args, env={**bare, "CLSACT_S3_CREDENTIALS_DIR": str(
        tmp_path / "nothing")}), "is not a folder")
