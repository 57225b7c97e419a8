"""The learning-rate guard: QAT + distillation that cannot end worse than not training.

A recipe's learning rate is tuned on one model; on another it can sit above the model's
stability limit, where every step grows the student's distance from its teacher: measured on
a MobileNetV1 (``make study``), the recipe's Momentum at 1e-3 takes the distillation loss
from 0.6 to 3 within 15 steps and top-1 from 87 % to about 20 %, with or without
quantization, with batch statistics or running ones.

The guard needs no tuning per model because distillation gives it a yardstick: the loss of
the quantized student *before any weight moves*. It runs the first two ``window``s of steps
with the learning rate at 0: in the first the moving-average quantizer scales settle (ACT
starts them at 1), the median loss of the second is the reference. From then on, after
every ``window`` steps: a median loss within ``threshold`` times the reference, for the
window and for its second half, is healthy (the state is kept as the last good one); above it,
training is making the student worse than the untrained one, so the last good state is
restored and the learning rate multiplied by ``backoff``. After ``max_backoffs`` the
learning rate stays 0: the run publishes its last good state and says so.

:class:`LossGuard` is the decision alone (pure, no paddle); :mod:`clsact.act` applies it
between ACT's steps (snapshots, restores, learning-rate changes through
:class:`clsact.compat.LearningRate`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

CALIBRATE = "calibrate"  # learning rate 0, measuring the reference
KEEP = "keep"            # healthy: keep the state as the last good one
BACK_OFF = "back_off"    # restore the last good state, lower the learning rate
GIVE_UP = "give_up"      # restore the last good state, learning rate 0 from now on


KEEP_MARKS = 3  # good states kept: the calibrated one and the two latest


@dataclass
class LossGuard:
    """Decides, from ACT's per-step training losses, what the learning rate may be and
    which kept state to go back to (``marks``: steps whose state is good, the calibrated
    one first)."""

    window: int = 10
    threshold: float = 1.1
    backoff: float = 0.25
    max_backoffs: int = 4
    reference: float | None = None
    factor: float = 0.0  # the learning-rate multiplier now (0 while calibrating)
    marks: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    _losses: list[float] = field(default_factory=list)
    _last: str | None = None

    def healthy(self, losses: list[float]) -> bool:
        """Whether a window's losses show a student no worse than the untrained one: the
        median of the window and of its second half (the state at its end) both within
        ``threshold`` x the reference."""
        limit = self.threshold * self.reference
        return (statistics.median(losses) <= limit
                and statistics.median(losses[len(losses) // 2:]) <= limit)

    def observe(self, step: int, loss: float) -> str | None:
        """Take the loss of the step that ended at ``step`` (steps of this run, from 1);
        returns an action at the end of a window, else None. After :data:`KEEP` and
        :data:`CALIBRATE` the state now is good (its step is the last mark); after
        :data:`BACK_OFF` / :data:`GIVE_UP` the state of the last mark is to be restored (a
        mark whose state failed twice in a row, at two rates, is dropped first)."""
        self._losses.append(loss)
        if len(self._losses) < self.window:
            return None
        losses, self._losses = self._losses, []
        if self.reference is None:
            if step < 2 * self.window:  # the first window: the quantizer scales settle
                return None
            self.reference = statistics.median(losses)
            self.factor, self.marks, self._last = 1.0, [step], CALIBRATE
            self.events.append({"step": step, "action": CALIBRATE,
                                "reference_loss": round(self.reference, 5)})
            return CALIBRATE
        if self.healthy(losses):
            self.marks = [self.marks[0], *self.marks[1:][-(KEEP_MARKS - 2):], step]
            self._last = KEEP
            return KEEP
        return self._fail(step, losses)

    def _fail(self, step: int, losses: list[float]) -> str:
        if self._last in (BACK_OFF, GIVE_UP) and len(self.marks) > 1:
            self.marks.pop()  # it failed again from that state at a lower rate
        backoffs = sum(e["action"] == BACK_OFF for e in self.events)
        action = BACK_OFF if backoffs < self.max_backoffs else GIVE_UP
        self.factor = self.factor * self.backoff if action == BACK_OFF else 0.0
        self._last = action
        self.events.append({"step": step, "action": action,
                            "median_loss": round(statistics.median(losses), 5),
                            "lr_factor": self.factor, "restore": self.marks[-1]})
        return action

    def finish(self, step: int) -> str | None:
        """Judge the steps after the last full window when training ends (at least half a
        window of them; fewer say too little): None, :data:`KEEP` or :data:`GIVE_UP` (the
        state of the last mark is what to publish)."""
        losses, self._losses = self._losses, []
        if self.reference is None or len(losses) < max(1, self.window // 2):
            return None
        if self.healthy(losses):
            return KEEP
        if self._last in (BACK_OFF, GIVE_UP) and len(self.marks) > 1:
            self.marks.pop()
        self.factor, self._last = 0.0, GIVE_UP
        self.events.append({"step": step, "action": GIVE_UP, "at_end": True,
                            "median_loss": round(statistics.median(losses), 5),
                            "lr_factor": 0.0, "restore": self.marks[-1]})
        return GIVE_UP

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint keeps of the guard (a resumed run continues with it; its
        state there is its only good state)."""
        return {"reference": self.reference, "factor": self.factor, "events": self.events}

    def resume(self, saved: dict[str, Any], step: int) -> None:
        """Continue from :meth:`snapshot`'s record at ``step`` (a new window starts)."""
        self.reference, self.factor = saved["reference"], float(saved["factor"])
        self.events, self._losses, self.marks, self._last = list(saved["events"]), [], [step], None

    def decision(self) -> dict[str, Any]:
        """Everything a window's decision changed (for the other ranks to adopt)."""
        return {"reference": self.reference, "factor": self.factor, "events": self.events,
                "marks": self.marks, "last": self._last}

    def adopt(self, decision: dict[str, Any]) -> None:
        """Take another rank's :meth:`decision` as this guard's."""
        self.reference, self.factor = decision["reference"], decision["factor"]
        self.events, self.marks = list(decision["events"]), list(decision["marks"])
        self._last = decision["last"]

    def record(self) -> dict[str, Any]:
        """What the guard did, for ``metrics.json``."""
        return {"window": self.window, "threshold": self.threshold,
                "reference_loss": None if self.reference is None else round(self.reference, 5),
                "lr_factor": self.factor,
                "backoffs": sum(e["action"] == BACK_OFF for e in self.events),
                "gave_up": any(e["action"] == GIVE_UP for e in self.events),
                "kept_steps": self.marks, "events": self.events}
