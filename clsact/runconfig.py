"""The resolved ``Global`` section as a typed, frozen value, read as attributes.

:func:`clsact.config.validate` builds one :class:`Global` per config, after filling in the
defaults of :data:`clsact.schema.GLOBAL` (the one table of keys, types and defaults; a test
keeps the two in step). The raw sections stay in ``Config.data``: they are what ACT is given
and what every run saves as ``config.yaml``.

Nothing here imports paddle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from clsact.storage.s3session import S3Settings

_TUPLES = ("crop_scale", "crop_ratio", "mean", "std")


@dataclass(frozen=True)
class Global:
    """Where the model and data are, how the data is read, and how the run behaves
    (every key of ``Global``; docs/config.md says what each means)."""

    model_dir: str
    model_filename: str
    params_filename: str
    input_name: str | None
    data_dir: str
    train_list: str
    val_list: str
    batch_size: int
    eval_batch_size: int | None
    img_size: int
    resize_size: int
    crop_scale: tuple[float, ...]
    crop_ratio: tuple[float, ...]
    random_flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_workers: int | None
    max_bad_fraction: float
    seed: int
    device: str
    decode: str
    output_dir: str
    s3_endpoint: str | None
    s3_max_attempts: int
    io_threads: int
    scratch_dir: str | None
    lr_scaling: str
    collective_timeout: float
    rank_sync: str
    checkpoint: bool
    selection_list: str | None
    selection_holdout: int
    freeze_bn_after: int | None
    final_model: str
    lr_guard: bool
    lr_guard_window: int
    lr_guard_threshold: float
    checkpoint_every_steps: int | None
    checkpoint_every_minutes: float | None
    report: bool
    report_budget: float
    report_timeout: float

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> Global:
        """The typed value of a completed ``Global`` mapping (every key present).

        Raises:
            TypeError: a key is missing or unknown (a bug: validation fills them all in).
        """
        values = {k: tuple(v) if k in _TUPLES else v for k, v in section.items()}
        return cls(**values)

    def to_section(self) -> dict[str, Any]:
        """The plain mapping (lists for the tuples), as written to ``config.yaml``."""
        return {k: list(v) if k in _TUPLES else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> Global:
        """A copy with ``changes`` (keys of ``Global``)."""
        return dataclasses.replace(self, **changes)

    @property
    def eval_batch(self) -> int:
        """Evaluation batch size (``eval_batch_size``, else ``batch_size``)."""
        return self.eval_batch_size or self.batch_size

    def s3(self, endpoint: str | None = None) -> S3Settings:
        """How this run talks to S3: ``endpoint`` (a ``--s3-endpoint`` flag) first, then
        ``s3_endpoint``, then the environment (``AWS_ENDPOINT_URL``)."""
        return S3Settings(endpoint_url=endpoint or self.s3_endpoint,
                          max_attempts=self.s3_max_attempts, io_threads=self.io_threads)
