"""The storage interface on local disk and on a real S3 server (moto server on loopback)."""

import pickle
from pathlib import Path

import pytest

from clsact.errors import StorageError
from clsact.storage import AlreadyExists, LocalStore, S3Store, input_dir, open_store
from clsact.storage.s3session import S3Settings, backoff, error_message
from clsact.storage.uri import check_location, parse_s3


@pytest.mark.parametrize("location, fragment", [
    ("gs://bucket/x", "unsupported scheme gs://"),
    ("s3://", "no bucket name"),
    ("s3:///key", "no bucket name"),
    ("s3://B_ad/key", "not a valid S3 bucket name"),
    ("s3://ab/key", "not a valid S3 bucket name"),
    ("s3://192.168.0.1/key", "not a valid S3 bucket name"),
    ("s3://bucket/a//b", "empty, '.' or '..' segment"),
    ("s3://bucket/a/../b", "empty, '.' or '..' segment"),
    ("s3:/bucket/key", "malformed URI"),
    ("s3:bucket", "malformed URI"),
    ("", "is empty"),
])
def test_bad_locations_are_named(location, fragment):
    with pytest.raises(StorageError) as err:
        check_location(location, "Global.data_dir")
    assert fragment in str(err.value) and "Global.data_dir" in str(err.value)


def test_parse_s3_and_join():
    loc = parse_s3("s3://my-bucket/runs/nightly/", "x")
    assert (loc.bucket, loc.key) == ("my-bucket", "runs/nightly")
    assert loc.join("model", "a.pd").uri() == "s3://my-bucket/runs/nightly/model/a.pd"
    assert parse_s3("s3://my-bucket", "x").join("k").uri() == "s3://my-bucket/k"
    assert isinstance(open_store("s3://my-bucket/p", "x"), S3Store)
    assert isinstance(open_store("relative/dir", "x"), LocalStore)


def test_error_messages_are_one_line_and_name_the_object():
    uri = "s3://b/k"
    assert "bucket does not exist" in error_message("NoSuchBucket", 404, "get_object", uri, "", 1)
    assert "rejected the credentials" in error_message("InvalidAccessKeyId", 403, "get", uri, "",
                                                       1)
    assert "access denied" in error_message("AccessDenied", 403, "get_object", uri, "", 1)
    msg = error_message("SlowDown", 503, "get_object", uri, "slow", 6)
    assert "after 6 attempts" in msg and uri in msg and "\n" not in msg


def test_backoff_is_bounded_full_jitter():
    assert all(0 <= backoff(a) <= min(20.0, 0.25 * 2**a) for a in range(12) for _ in range(20))


def stores(tmp_path: Path, s3_server, bucket: str):
    s3 = S3Store(parse_s3(f"s3://{bucket}/root", "x"),
                 S3Settings(endpoint_url=s3_server.endpoint, multipart_threshold=5 * 2**20,
                            multipart_chunksize=5 * 2**20))
    return [LocalStore(tmp_path / "root"), s3]


@pytest.mark.parametrize("reader", ["obstore", "boto3"])
def test_round_trip_on_every_backend(tmp_path, s3_server, bucket, reader, monkeypatch):
    from clsact.storage.s3read import READER_ENV

    monkeypatch.setenv(READER_ENV, reader)
    src = tmp_path / "big.bin"
    payload = bytes(range(256)) * (12 * 4096 + 7)  # ~12 MB: a multipart upload on S3
    src.write_bytes(payload)
    for store in stores(tmp_path, s3_server, bucket):
        store.check_writable()
        store.put_file(src, "dir/big.bin")
        store.put_bytes("a.txt", b"hello")
        assert store.read_bytes("a.txt") == b"hello"
        assert store.read_bytes("dir/big.bin") == payload
        assert store.read_range("dir/big.bin", 1000, 10) == payload[1000:1010]
        assert b"".join(store.iter_chunks("dir/big.bin", 1 << 20)) == payload
        assert store.exists("a.txt") and not store.exists("b.txt")
        assert store.list() == [("a.txt", 5), ("dir/big.bin", len(payload))]
        assert store.child("dir").list() == [("big.bin", len(payload))]
        with pytest.raises(AlreadyExists):
            store.put_bytes("a.txt", b"again", exclusive=True)
        assert store.read_bytes("a.txt") == b"hello"
        store.put_bytes("new.txt", b"1", exclusive=True)
        with pytest.raises(FileNotFoundError):
            store.read_bytes("missing.jpg")
        got = list(store.iter_many(["a.txt", "missing.jpg", "new.txt"]))
        assert got[0] == b"hello" and isinstance(got[1], FileNotFoundError) and got[2] == b"1"
        store.get_file("dir/big.bin", tmp_path / "dl" / type(store).__name__)
        assert (tmp_path / "dl" / type(store).__name__).read_bytes() == payload
        store.delete("a.txt")
        store.delete("a.txt")  # deleting a missing file is fine
        assert not store.exists("a.txt")
        clone = pickle.loads(pickle.dumps(store))  # loader workers receive stores pickled
        assert clone.read_bytes("new.txt") == b"1"
        store.delete("dir/big.bin")
        assert store.list() == [("new.txt", 1)]
        if isinstance(store, LocalStore):
            assert not (store.root / "dir").exists(), "emptied directories go, as on S3"


def test_multipart_upload_was_used(tmp_path, s3_server, bucket):
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (11 * 2**20))
    store = stores(tmp_path, s3_server, bucket)[1]
    store.put_file(src, "big.bin")
    head = s3_server.client().head_object(Bucket=bucket, Key="root/big.bin")
    assert head["ContentLength"] == 11 * 2**20
    assert head["ETag"].strip('"').endswith("-3"), "three 5 MB parts => a multipart ETag"


def test_input_dir_downloads_a_scratch_copy(monkeypatch, tmp_path, s3_server, bucket):
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="m/inference.pdmodel", Body=b"model")
    client.put_object(Bucket=bucket, Key="m/inference.pdiparams", Body=b"params")

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    got = input_dir(f"s3://{bucket}/m", "Global.model_dir",
                    ["inference.pdmodel", "inference.pdiparams"], tmp_path / "scratch")
    assert (got / "inference.pdmodel").read_bytes() == b"model"
    with pytest.raises(StorageError, match=r"no object s3://.*/m/missing.pd"):
        input_dir(f"s3://{bucket}/m", "Global.model_dir", ["missing.pd"], tmp_path / "s2")
    with pytest.raises(StorageError, match="is not an existing directory"):
        input_dir(str(tmp_path / "nope"), "Global.model_dir", [], tmp_path / "s3")
    local = tmp_path / "local"
    local.mkdir()
    assert input_dir(str(local), "Global.model_dir", [], tmp_path / "s4") == local


@pytest.mark.parametrize("rel", ["../outside.txt", "a/../../outside.txt", "/etc/passwd"])
def test_stores_stay_inside_their_root(tmp_path, rel):
    """Path traversal: a store never reads or writes outside its directory or prefix."""
    (tmp_path / "outside.txt").write_text("secret")
    local = LocalStore(tmp_path / "root")
    for action in (lambda: local.read_bytes(rel), lambda: local.put_bytes(rel, b"x")):
        with pytest.raises(StorageError, match="is outside"):
            action()
    assert (tmp_path / "outside.txt").read_text() == "secret"
    assert local.path("a/./b.txt") == tmp_path / "root" / "a/./b.txt"
    with pytest.raises(StorageError, match="is outside s3://bkt/pre"):
        parse_s3("s3://bkt/pre", "x").join(rel)


def test_the_read_client_is_chosen_by_environment(monkeypatch):
    from clsact.storage import s3read

    monkeypatch.delenv(s3read.READER_ENV, raising=False)
    assert s3read.enabled()  # obstore is installed (a dependency)
    monkeypatch.setenv(s3read.READER_ENV, "boto3")
    assert not s3read.enabled()
    monkeypatch.setenv(s3read.READER_ENV, "curl")
    with pytest.raises(StorageError, match="CLSACT_S3_READER='curl': use obstore, boto3"):
        s3read.enabled()
