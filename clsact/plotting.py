"""Headless PNG figures (matplotlib's Agg backend) for the history and the deploy report."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clsact.errors import ClsactError


@contextmanager
def figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """The axes of a new figure, written to ``path`` as PNG when the block ends.

    Raises:
        ClsactError: matplotlib is missing or the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ClsactError(f"plots need matplotlib ({exc}); pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        yield ax
        fig.tight_layout()
        try:
            fig.savefig(path, format="png")
        except OSError as exc:
            raise ClsactError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
