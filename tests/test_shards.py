"""Packed datasets: `clsact dataset pack` to local disk and to real S3, and the loader
reading blocks of shards with ranged reads."""

import json
import tarfile

import numpy as np
import pytest

from clsact.data.build import make_loader
from clsact.data.loader import shard_indices
from clsact.data.shards import FORMAT, read_index
from clsact.errors import DataError
from clsact.storage import open_store
from tests.conftest import list_keys, run_cli, upload_tree


@pytest.mark.parametrize("n, block, world", [(100, 16, 1), (100, 16, 3), (37, 8, 2),
                                              (64, 16, 4), (5, 16, 2)])
def test_block_shards_are_disjoint_contiguous_and_reshuffled(n, block, world):
    for shuffle in (True, False):
        ranks = [shard_indices(n, epoch=1, seed=3, shuffle=shuffle, rank=r, world=world,
                               even=shuffle, block=block) for r in range(world)]
        flat = np.concatenate(ranks)
        assert len(set(flat.tolist())) == len(flat), "no sample twice"
        if shuffle:
            assert len({len(r) for r in ranks}) == 1, "equal steps on every rank"
            assert len(flat) >= n - world * block
        else:
            assert sorted(flat.tolist()) == list(range(n)), "eval covers everything"
        for r in ranks:  # each batch-sized chunk comes from one block: one ranged read
            for i in range(0, len(r) - block + 1, block):
                chunk = r[i:i + block]
                assert chunk.max() - chunk.min() < block or not shuffle
    a = shard_indices(n, epoch=1, seed=3, shuffle=True, even=True, block=block)
    b = shard_indices(n, epoch=2, seed=3, shuffle=True, even=True, block=block)
    assert n < 2 * block or not np.array_equal(a, b), "reshuffled every epoch"


def glob_for(data: str):
    from clsact import config

    return config.complete_global(
        {"model_dir": "m", "data_dir": data, "img_size": 32, "resize_size": 36,
         "crop_scale": [0.7, 1.0], "crop_ratio": [0.75, 1.333], "random_flip": False,
         "mean": [0.5] * 3, "std": [0.25] * 3, "num_workers": 2, "max_bad_fraction": 0.0,
         "seed": 0, "train_list": "small_train.shards.json",
         "val_list": "small_val.shards.json", "decode": "cpu"}, "test")


def images_by_path(g, name, train=False):
    from clsact.data.build import read_samples

    samples = read_samples(g.replace(val_list=name), "val")
    loader = make_loader(g, samples, train=train, batch_size=16)
    try:
        batches = list(loader.epoch(0))
    finally:
        loader.close()
    return samples, np.concatenate([b.images for b in batches]), np.concatenate(
        [b.labels for b in batches])


def test_pack_to_s3_and_read_back_identically(monkeypatch, tmp_path, s3_server, bucket,
                                              small_digits_dir):
    client = s3_server.client()
    names = [ln.split()[0] for f in ("small_train.txt", "small_val.txt")
             for ln in (small_digits_dir / f).read_text().splitlines()]
    upload_tree(client, bucket, "raw", small_digits_dir,
                names + ["small_train.txt", "small_val.txt"])
    dst = f"s3://{bucket}/packed"
    proc = run_cli("dataset", "pack", f"s3://{bucket}/raw", dst, "--lists", "small_train.txt",
                   "small_val.txt", "--shard-mb", "0.05", "--s3-endpoint", s3_server.endpoint)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "small_val.shards.json: 64 images in" in proc.stdout
    keys = list_keys(client, bucket, "packed/")
    shards = [k for k in keys if k.endswith(".tar")]
    assert len(shards) > 2 and "packed/small_val.shards.json" in keys

    index = json.loads(client.get_object(Bucket=bucket, Key="packed/small_val.shards.json")
                       ["Body"].read())
    assert index["samples"] == 64 and sum(s["samples"] for s in index["shards"]) == 64
    first = index["shards"][0]
    local_tar = tmp_path / "s.tar"
    local_tar.write_bytes(client.get_object(Bucket=bucket, Key=f"packed/{first['name']}")
                          ["Body"].read())
    import hashlib
    assert hashlib.sha256(local_tar.read_bytes()).hexdigest() == first["sha256"]
    with tarfile.open(local_tar) as tar:  # a plain tar any tool can read
        member = tar.getmembers()[0]
        assert tar.extractfile(member).read() == (small_digits_dir / member.name).read_bytes()

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    packed = glob_for(dst)
    plain = glob_for(str(small_digits_dir)).replace(val_list="small_val.txt")
    s_packed, x_packed, y_packed = images_by_path(packed, "small_val.shards.json")
    s_plain, x_plain, y_plain = images_by_path(plain, "small_val.txt")
    # same images, same preprocessing; only the order differs (pack-time shuffle)
    pos = {s.path: i for i, s in enumerate(s_plain)}
    perm = [pos[s.path] for s in s_packed]
    assert np.array_equal(x_packed, x_plain[perm]) and np.array_equal(y_packed, y_plain[perm])

    again = run_cli("dataset", "pack", f"s3://{bucket}/raw", dst, "--lists", "small_val.txt",
                    "--s3-endpoint", s3_server.endpoint)
    assert again.returncode == 2 and "exists (a finished pack); pass --overwrite" in again.stderr


@pytest.mark.parametrize("reader", ["obstore", "boto3"])
def test_an_empty_member_is_a_bad_image_with_either_reader(tmp_path, s3_server, bucket,
                                                           small_digits_dir, monkeypatch,
                                                           reader):
    """`dataset pack` counts an empty file as missing; an index that still holds an empty
    member (packed by an older clsact, or by hand) reads it as a bad image through either S3
    client (obstore refused the empty range with a ValueError traceback)."""
    from clsact.storage.s3read import READER_ENV

    monkeypatch.setenv(READER_ENV, reader)
    data = tmp_path / "d"
    lines = (small_digits_dir / "small_val.txt").read_text().splitlines()[:8]
    for line in lines:
        rel = line.split()[0]
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes((small_digits_dir / rel).read_bytes())
    (data / lines[0].split()[0]).write_bytes(b"")
    (data / "v.txt").write_text("\n".join(lines) + "\n")
    proc = run_cli("dataset", "pack", str(data), str(tmp_path / "p"), "--lists", "v.txt",
                   "--max-missing", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    packed = json.loads((tmp_path / "p" / "v.shards.json").read_text())
    assert packed["samples"] == 7 and len(packed["missing"]) == 1
    # an index with an empty member: pack the 8 images, then point a member at 0 bytes
    first = lines[0].split()[0]
    (data / first).write_bytes((small_digits_dir / first).read_bytes())
    assert run_cli("dataset", "pack", str(data), str(tmp_path / "q"), "--lists",
                   "v.txt").returncode == 0
    index = json.loads((tmp_path / "q" / "v.shards.json").read_text())
    index["members"][3][2] = 0
    (tmp_path / "q" / "v.shards.json").write_text(json.dumps(index))
    client = s3_server.client()
    names = [p.relative_to(tmp_path / "q").as_posix() for p in (tmp_path / "q").rglob("*")
             if p.is_file()]
    upload_tree(client, bucket, "q", tmp_path / "q", names)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    g = glob_for(f"s3://{bucket}/q").replace(val_list="v.shards.json", max_bad_fraction=0.5)
    samples, x, _ = images_by_path(g, "v.shards.json")
    assert len(samples) == 8 and x.shape[0] == 7, "the empty member is one bad image"


def test_pack_locally_then_eval_matches(tmp_path, small_digits_dir, mbv3_model):
    out = tmp_path / "packed"
    proc = run_cli("dataset", "pack", str(small_digits_dir), str(out), "--lists",
                   "small_val.txt", "--shard-mb", "0.1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    common = ["--model-dir", str(mbv3_model), "--img-size", "32", "--resize-size", "36"]
    a = run_cli("eval", *common, "--data-dir", str(small_digits_dir), "--val-list",
                "small_val.txt")
    b = run_cli("eval", *common, "--data-dir", str(out), "--val-list", "small_val.shards.json")
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-2000:]
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert (ra["top1"], ra["top5"], ra["samples"]) == (rb["top1"], rb["top5"], rb["samples"])


def test_pack_errors(tmp_path, small_digits_dir):
    data = tmp_path / "d"
    data.mkdir()
    (data / "l.txt").write_text("missing/a.jpg 0\n")
    proc = run_cli("dataset", "pack", str(data), str(tmp_path / "o"), "--lists", "l.txt")
    assert proc.returncode == 2 and "missing/a.jpg: listed in l.txt but missing" in proc.stderr
    assert not (tmp_path / "o" / "l.shards.json").exists()
    with pytest.raises(DataError, match="not a clsact shard index"):
        (tmp_path / "x.shards.json").write_text("{}")
        read_index(open_store(tmp_path, "x"), "x.shards.json")
    with pytest.raises(DataError, match="does not exist"):
        read_index(open_store(tmp_path, "x"), "nope.shards.json")
    bad = run_cli("dataset", "pack", str(small_digits_dir), "gs://x/y")
    assert bad.returncode == 2 and "unsupported scheme gs://" in bad.stderr


@pytest.mark.parametrize("name", ["../elsewhere/shard-00000.tar", "/abs/shard.tar", "a/../../x"])
def test_an_index_cannot_point_outside_its_directory(tmp_path, name):
    index = {"format": FORMAT, "shards": [{"name": name}],
             "members": [[0, 0, 10, 1, "train/x.jpg"]]}
    (tmp_path / "train.shards.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="is not a plain relative path inside"):
        read_index(open_store(str(tmp_path), "x"), "train.shards.json")


def test_packed_training_batches_differ_between_epochs_at_a_few_reads_each(tmp_path,
                                                                         small_digits_dir):
    """A batch is PACKED_BLOCKS_PER_BATCH blocks redrawn every epoch (with one block per batch
    the same 16 images would form a batch every epoch), each block one ranged read."""
    from clsact.data.build import PACKED_BLOCKS_PER_BATCH, read_samples

    out = tmp_path / "packed"
    proc = run_cli("dataset", "pack", str(small_digits_dir), str(out), "--lists",
                   "small_train.txt", "--shard-mb", "0.02")
    assert proc.returncode == 0, proc.stderr[-2000:]
    g = glob_for(str(out)).replace(num_workers=0)
    loader = make_loader(g, read_samples(g, "train"), train=True, batch_size=16)
    assert loader.block == 16 // PACKED_BLOCKS_PER_BATCH
    sets = [{frozenset(i for i, _, _ in chunk) for chunk in loader._chunks(e)} for e in (0, 1)]
    assert len(sets[0] & sets[1]) <= 1, "batches are made of other images each epoch"
    reads = []
    read_range = loader.reader.store.read_range
    loader.reader.store.read_range = lambda *a: reads.append(a) or read_range(*a)
    batches = list(loader.epoch(0))
    assert len(batches) == len(sets[0])
    # one read per block, fewer where blocks happen to lie together (or more at a shard's end)
    shard_ends = sum(1 for chunk in loader._chunks(0)
                     if len({key[0] for _, key, _ in chunk}) > 1)
    assert len(reads) <= len(batches) * PACKED_BLOCKS_PER_BATCH + shard_ends


def test_ranged_reads_group_members_that_lie_together():
    from clsact.data.shards import MAX_GAP, _runs

    keys = [("b.tar", 1536, 100, "p3"), ("a.tar", 512, 100, "p0"), ("a.tar", 1536, 100, "p1"),
            ("a.tar", 1536 + 100 + MAX_GAP + 1, 10, "p2"), ("b.tar", 512, 100, "p4")]
    assert _runs(keys) == [[1, 2], [3], [4, 0]]


def test_pack_resized_images_and_the_loader_checks_the_size(tmp_path, small_digits_dir):
    import cv2

    from clsact.data.build import read_samples

    out = tmp_path / "packed"
    src = tmp_path / "src"
    src.mkdir()
    lines = (small_digits_dir / "small_val.txt").read_text().splitlines()[:20]
    for ln in lines:
        rel = ln.split()[0]
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((small_digits_dir / rel).read_bytes())
    (src / "bad.jpg").write_bytes(b"not an image")
    (src / "l.txt").write_text("\n".join(lines) + "\nbad.jpg 3\n")
    proc = run_cli("dataset", "pack", str(src), str(out), "--lists", "l.txt",
                   "--resize-short", "20", "--quality", "90", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = json.loads((out / "l.shards.json").read_text())
    assert (index["resize_short"], index["quality"]) == (20, 90)
    samples = read_index(open_store(str(out), "x"), "l.shards.json", resize_size=20)
    reader = make_loader(glob_for(str(out)).replace(resize_size=20, img_size=16),
                         samples, train=False, batch_size=8).reader
    stored = dict(zip((s.path for s in samples),
                      reader.iter_many([s.key for s in samples]), strict=True))
    assert stored["bad.jpg"] == b"not an image"  # kept as it was: the loader counts it bad
    for ln in lines:
        rel = ln.split()[0]
        orig = cv2.imdecode(np.frombuffer((src / rel).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        img = cv2.imdecode(np.frombuffer(stored[rel], np.uint8), cv2.IMREAD_COLOR)
        assert min(img.shape[:2]) == 20 < min(orig.shape[:2])
        want = cv2.resize(orig, img.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        assert np.abs(img.astype(int) - want).mean() < 8  # JPEG 90 of the same resize
    with pytest.raises(DataError, match=r"pre-resized to a short side of 20 px but "
                                        r"Global.resize_size is 36: set Global.resize_size 20, "
                                        r"or pack again with --resize-short 36"):
        read_samples(glob_for(str(out)).replace(val_list="l.shards.json"), "val")
    bad = run_cli("dataset", "pack", str(src), str(out), "--resize-short", "0")
    assert bad.returncode == 2 and "--resize-short 0 is too small" in bad.stderr
