"""Exact, sample-weighted top-k accuracy (upstream ACT averages per-batch top-1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clsact.errors import ModelError


@dataclass
class TopK:
    """Counts of correct top-1 / top-5 predictions over every sample seen.

    With fewer than 5 classes, top-5 counts the top ``num_classes`` (so it is 1.0).
    """

    correct1: int = 0
    correct5: int = 0
    samples: int = 0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Add one batch of model outputs (N, C) (or (N, C, 1, 1)) and labels (N,); returns
        which samples it gets right at top-1 (a bool per sample).

        Raises:
            ModelError: the output does not have one row per label, or a label is not a class
                of the model.
        """
        scores = np.asarray(scores).reshape(len(scores), -1)
        labels = np.asarray(labels).reshape(-1)
        if scores.shape[0] != labels.shape[0]:
            raise ModelError(f"model returned {scores.shape[0]} rows for {labels.shape[0]} images")
        classes = scores.shape[1]
        if labels.size and labels.max() >= classes:
            raise ModelError(f"label {int(labels.max())} is not a class of the model "
                             f"({classes} outputs); check the list file labels")
        k = min(5, classes)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < classes else \
            np.tile(np.arange(classes), (len(labels), 1))
        hits = scores.argmax(axis=1) == labels
        self.correct1 += int(hits.sum())
        self.correct5 += int((top == labels[:, None]).any(axis=1).sum())
        self.samples += int(labels.size)
        return hits

    def merge(self, other: TopK) -> TopK:
        """The counts of two disjoint sets of samples together (e.g. two ranks' shards)."""
        return TopK(self.correct1 + other.correct1, self.correct5 + other.correct5,
                    self.samples + other.samples)

    def result(self) -> dict[str, float | int]:
        """``{"top1", "top5", "samples"}``; accuracies are fractions (0.0 with no samples)."""
        n = self.samples
        return {"top1": self.correct1 / n if n else 0.0,
                "top5": self.correct5 / n if n else 0.0,
                "samples": n}
