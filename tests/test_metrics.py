"""Exact, sample-weighted top-1/top-5."""

import numpy as np
import pytest

from clsact.errors import ModelError
from clsact.metrics import TopK


def test_known_case_is_exact_and_sample_weighted():
    counter = TopK()
    scores = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]  # predicts 0,1,2,3
    # labels: 2 right; label 9's score ranks last; label 5 ties at 0 with 8 others
    counter.update(scores, np.array([0, 1, 9, 5]))
    # a partial batch of one correct sample weighs one sample, not one batch
    counter.update(np.eye(10, dtype=np.float32)[[7]], np.array([7]))
    r = counter.result()
    assert r["samples"] == 5
    assert r["top1"] == pytest.approx(3 / 5)
    # per-batch averaging (upstream) would give (2/4 + 1/1) / 2 = 0.75
    assert r["top1"] != pytest.approx(0.75)


def test_top5_counts_label_within_five_best():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    counter = TopK()
    counter.update(scores, np.array([4, 1]))  # row0: 5th best -> in top5; row1: 6th -> not
    assert counter.result()["top5"] == pytest.approx(0.5)
    assert counter.result()["top1"] == 0.0


def test_fewer_than_five_classes_top5_is_all():
    counter = TopK()
    counter.update(np.array([[0.1, 0.9, 0.0]]), np.array([2]))
    assert counter.result() == {"top1": 0.0, "top5": 1.0, "samples": 1}


def test_merge_of_disjoint_shards_equals_whole():
    rng = np.random.default_rng(0)
    scores, labels = rng.random((50, 20)), rng.integers(0, 20, 50)
    whole, a, b = TopK(), TopK(), TopK()
    whole.update(scores, labels)
    a.update(scores[:17], labels[:17])
    b.update(scores[17:], labels[17:])
    assert a.merge(b) == whole


def test_label_outside_classes_is_clear():
    with pytest.raises(ModelError, match="label 12 is not a class of the model \\(10 outputs\\)"):
        TopK().update(np.zeros((1, 10)), np.array([12]))


def test_nchw_output_is_flattened():
    counter = TopK()
    counter.update(np.eye(4, dtype=np.float32)[[3]].reshape(1, 4, 1, 1), np.array([3]))
    assert counter.result()["top1"] == 1.0
