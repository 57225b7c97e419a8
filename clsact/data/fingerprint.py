"""The fingerprint of a validation set: which images (by content) with which labels.

Two runs' accuracies are comparable only on the same validation set. The fingerprint is
the sha256 of the sorted ``"<label> <sha256 of the image bytes>"`` lines of every image that
was read, so it does not depend on where the set is stored (a local tree, a bucket, packed
shards) or on the list's order, but changes when an image, a label, or the set of images
changes. Images that could not be read were not evaluated: they are left out (the record
counts them: ``images - hashed``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from clsact.data.listfile import Sample
from clsact.runconfig import Global

FORMAT = "sha256 of sorted '<label> <image sha256>' lines"


# the settings that turn the same images into other inputs (so other accuracies)
EVAL_SETTINGS = ("img_size", "resize_size", "mean", "std")


def eval_settings(g: Global) -> dict[str, Any]:
    """The evaluation settings of a resolved ``Global`` that the gate compares along with
    the images (:data:`EVAL_SETTINGS`; sequences as lists, as JSON reads them back)."""
    section = g.to_section()
    return {key: section[key] for key in EVAL_SETTINGS}


def val_fingerprint(samples: list[Sample], digests: Iterable[dict[int, str]],
                    list_name: str, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``val_set`` record of ``metrics.json`` from the per-sample digests the ranks
    recorded (``{sample index: image sha256}``, one dict per rank), with the ``evaluation``
    settings (:func:`eval_settings`) the images were scored with.

    Raises:
        ValueError: a digest names an index outside ``samples``.
    """
    merged: dict[int, str] = {}
    for part in digests:
        merged.update(part)
    if merged and (min(merged) < 0 or max(merged) >= len(samples)):
        raise ValueError("a validation digest names a sample outside the list")
    lines = sorted(f"{samples[i].label} {digest}" for i, digest in merged.items())
    body = "".join(line + "\n" for line in lines).encode()
    return {"list": list_name, "images": len(samples), "hashed": len(merged),
            "fingerprint": "sha256:" + hashlib.sha256(body).hexdigest(), "method": FORMAT,
            "evaluation": dict(evaluation or {})}
