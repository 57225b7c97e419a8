"""Faults between clsact and S3, injected by a TCP proxy in front of a real S3 server:
dropped connections, 503 SlowDown, 500, bodies cut short. Retries must hide them up to a
bound; beyond it the error names the object, within bounded time."""

import hashlib
import os
import socket
import time

import pytest

from clsact.data.listfile import Sample
from clsact.data.loader import BatchLoader
from clsact.data.transforms import TransformSpec
from clsact.errors import StorageError
from clsact.storage import S3Store
from clsact.storage.publish import publish, verify
from clsact.storage.s3read import READER_ENV
from clsact.storage.s3session import S3Settings
from clsact.storage.uri import parse_s3
from tests.conftest import upload_tree
from tests.faultproxy import FaultProxy

MIXED = {"drop": 0.08, "503": 0.08, "500": 0.04, "truncate": 0.08}


@pytest.fixture(params=["obstore", "boto3"])
def reader(request, monkeypatch):
    """The client of the hot read path (iter_many, read_range): both must hide the faults
    (the loader's workers inherit the choice through the environment)."""
    monkeypatch.setenv(READER_ENV, request.param)
    return request.param


@pytest.fixture
def proxied(s3_server, bucket):
    proxies = []

    def make(rates, attempts=8, **kw):
        proxy = FaultProxy(s3_server.endpoint, rates=rates, seed=len(proxies), **kw)
        url = proxy.start()
        proxies.append(proxy)
        conf = S3Settings(endpoint_url=url, max_attempts=attempts, read_timeout=5,
                          connect_timeout=2)
        return proxy, S3Store(parse_s3(f"s3://{bucket}/p", "x"), conf)

    yield make
    for p in proxies:
        p.stop()


def test_retries_hide_a_mix_of_faults(tmp_path, s3_server, bucket, proxied, reader):
    blobs = {f"obj/{i:03d}.bin": os.urandom(20_000 + i) for i in range(60)}
    for key, data in blobs.items():
        s3_server.client().put_object(Bucket=bucket, Key=f"p/{key}", Body=data)
    proxy, store = proxied(MIXED)
    got = list(store.iter_many(list(blobs)))
    assert got == list(blobs.values())
    whole = b"".join(blobs.values())
    s3_server.client().put_object(Bucket=bucket, Key="p/shard.tar", Body=whole)
    for start in range(0, len(whole) - 50_000, 97_000):
        assert store.read_range("shard.tar", start, 50_000) == whole[start:start + 50_000]
    stage = tmp_path / "stage"
    for i in range(8):
        (stage / "model").mkdir(parents=True, exist_ok=True)
        (stage / "model" / f"f{i}").write_bytes(os.urandom(5000))
    publish(stage, store.child("run"), "faulty")
    clean = S3Store(parse_s3(f"s3://{bucket}/p/run", "x"),
                    S3Settings(endpoint_url=s3_server.endpoint))
    assert verify(clean).ok
    for fault in ("drop", "503", "500", "truncate"):
        assert proxy.counts[fault] > 0, proxy.counts
    print("injected:", dict(proxy.counts))


def test_loader_reads_every_image_through_faults(digits_dir, bucket, s3_server, proxied,
                                                reader):
    lines = (digits_dir / "val_list.txt").read_text().splitlines()[:48]
    upload_tree(s3_server.client(), bucket, "p", digits_dir, [ln.split()[0] for ln in lines])
    samples = [Sample(ln.split()[0], int(ln.split()[1])) for ln in lines]
    proxy, store = proxied(MIXED)
    loader = BatchLoader(store, samples, TransformSpec(train=False, img_size=32, resize_size=36),
                         batch_size=16, num_workers=2, shuffle=False, max_bad_fraction=0.0)
    try:
        n = sum(len(b.labels) for b in loader.epoch(0))
    finally:
        loader.close()
    assert n == 48 and loader.bad_total == 0


@pytest.mark.parametrize("fault, fragment", [
    ("503", "kept failing after 3 attempts (SlowDown"),
    ("500", "kept failing after 3 attempts (InternalError"),
    ("drop", "failed after 3 attempts"),
    ("truncate", "reading the object kept failing after 3 attempts"),
])
def test_beyond_the_bound_one_clear_error(s3_server, bucket, proxied, fault, fragment):
    s3_server.client().put_object(Bucket=bucket, Key="p/img.jpg", Body=b"x" * 5000)
    proxy, store = proxied({fault: 1.0}, attempts=3, methods=("GET",))
    start = time.perf_counter()
    with pytest.raises(StorageError) as err:
        store.read_bytes("img.jpg")
    assert time.perf_counter() - start < 30, "bounded: 3 attempts with capped backoff"
    msg = str(err.value)
    assert f"s3://{bucket}/p/img.jpg" in msg and fragment in msg and "\n" not in msg


@pytest.mark.parametrize("fault", ["503", "500", "drop", "truncate"])
def test_fast_reads_beyond_the_bound_one_clear_error(s3_server, bucket, proxied, fault,
                                                     monkeypatch):
    """obstore's reads (images, shard ranges) end like boto3's: one line naming the object
    and the attempts, within bounded time; a missing object is still a missing object."""
    monkeypatch.setenv(READER_ENV, "obstore")
    s3_server.client().put_object(Bucket=bucket, Key="p/img.jpg", Body=b"x" * 5000)
    proxy, store = proxied({fault: 1.0}, attempts=3, methods=("GET",))
    start = time.perf_counter()
    for read in (lambda: store.read_range("img.jpg", 10, 100),
                 lambda: list(store.iter_many(["img.jpg"]))):
        with pytest.raises(StorageError) as err:
            read()
        msg = str(err.value)
        assert f"s3://{bucket}/p/img.jpg" in msg and "after 3 attempts" in msg, msg
        assert "\n" not in msg
    assert time.perf_counter() - start < 60, "bounded: 3 attempts with capped backoff"
    proxy.rates = {}
    got = list(store.iter_many(["img.jpg", "missing.jpg"]))
    assert got[0] == b"x" * 5000 and isinstance(got[1], FileNotFoundError)


@pytest.mark.parametrize("reader_name", ["boto3", "obstore"])
def test_unreachable_endpoint(bucket, monkeypatch, reader_name):
    monkeypatch.setenv(READER_ENV, reader_name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    store = S3Store(parse_s3(f"s3://{bucket}/p", "x"),
                    S3Settings(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2))
    with pytest.raises(StorageError, match=f"cannot connect to http://127.0.0.1:{port}"):
        store.read_bytes("x")
    with pytest.raises(StorageError, match=f"cannot connect to http://127.0.0.1:{port}"):
        store.read_range("x", 0, 10)


def test_checksums_survive_faulty_uploads(tmp_path, s3_server, bucket, proxied):
    """A multipart upload through a lossy link still lands byte-exact."""
    proxy, store = proxied({"drop": 0.25, "503": 0.25}, methods=("PUT", "POST"))
    store.conf = S3Settings(endpoint_url=store.conf.endpoint_url, max_attempts=10,
                            multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(16 * 2**20))
    store.put_file(src, "big.bin")
    body = s3_server.client().get_object(Bucket=bucket, Key="p/big.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert proxy.counts["drop"] + proxy.counts["503"] >= 3, proxy.counts
