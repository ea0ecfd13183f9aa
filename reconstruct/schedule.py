"""How far through its recipe a training run is, and a time budget that re-plans the number of steps as it goes.

3DGS sets every part of its recipe in fractions of the run: the means' learning rate decays log-linearly over it,
the SH degree rises every thirtieth of it, densification runs over its first half with opacity resets every tenth.
``Schedule`` maps a step to that fraction. Planned once, it is ``step / steps``. A time budget (``Pace``) measures
how fast steps really go and re-plans the number of steps; the fraction reached so far is kept and the rest of the
run is spread over the new number of remaining steps, so that the fraction never goes back (the learning rate never
rises again, the SH degree never falls, no densification event fires twice or is skipped) and is 1 at the last step.
The schedule keeps every re-plan, so it says where each fraction of the recipe fell, in the past too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import pairwise
from dataclasses import dataclass, field


@dataclass
class Schedule:
    """The fraction of the recipe done at each step: piecewise linear through ``anchors`` (one per re-plan) to
    (``steps``, 1). Planned once, ``done(step) = step / steps``."""

    steps: int
    """Steps planned in all (the last step is ``steps``)."""
    anchors: list[tuple[int, float]] = field(default_factory=lambda: [(0, 0.0)])
    """(step, fraction done) where the plan started and where each re-plan changed it, in order."""

    @property
    def anchor_step(self) -> int:
        """The step of the last re-plan (0: never re-planned)."""
        return self.anchors[-1][0]

    def _points(self) -> list[tuple[float, float]]:
        return [*self.anchors, (self.steps, 1.0)]

    def done(self, step: float) -> float:
        """Fraction of the recipe done after ``step`` steps, in [0, 1]."""
        points = self._points()
        for (s0, d0), (s1, d1) in pairwise(points):
            if step <= s1:
                return min(max(d0 + (step - s0) * (d1 - d0) / max(s1 - s0, 1e-12), 0.0), 1.0)
        return 1.0

    def step_at(self, fraction: float) -> float:
        """The (fractional) step at which ``done`` reaches ``fraction``."""
        points = self._points()
        for (s0, d0), (s1, d1) in pairwise(points):
            if fraction <= d1:
                return s0 + max(fraction - d0, 0.0) * (s1 - s0) / max(d1 - d0, 1e-12)
        return float(self.steps)

    def crossed(self, step: int, fraction: float) -> bool:
        """True at the one step where ``done`` first reaches ``fraction`` (events set in fractions of the run)."""
        return self.done(step - 1) < fraction - 1e-9 and self.done(step) >= fraction - 1e-9

    def replan(self, step: int, steps: int) -> None:
        """From ``step`` on, finish the rest of the recipe in ``steps - step`` more steps (at least one); the
        fraction done at every step so far stays what it was."""
        anchor = (int(step), self.done(step))
        if anchor[0] == self.anchor_step:
            self.anchors[-1] = anchor
        else:
            self.anchors.append(anchor)
        self.steps = max(int(steps), int(step) + 1)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "anchors": [list(anchor) for anchor in self.anchors]}

    @classmethod
    def from_dict(cls, saved: dict) -> Schedule:
        return cls(int(saved["steps"]), [(int(s), float(d)) for s, d in saved["anchors"]])


MIN_EXTENSION = 10  # steps: a run that reached its planned end goes on only for at least this many (or 2%) more


@dataclass
class Pace:
    """Re-plans a ``Schedule`` so that training ends by ``deadline`` (``time.monotonic()`` seconds).

    ``step_cost(n)``: the model's seconds for a step with n Gaussians (``budget.StepCost``, linear in n);
    ``after(n)``: seconds still needed once training stops (evaluation, renders, turntable, files) with n Gaussians;
    ``max_steps``: never plan more. The pace is measured, not assumed: the loop's wall time (samples and checkpoints
    included) over the model's cost of the steps it ran, in the recent part of the run, scales the model's forecast
    of the rest. While densification goes on (until ``grow_until`` of the run), the Gaussian count is forecast to grow
    at the rate it has grown so far, up to ``cap`` (to the cap itself over the first 5% of the run); ``resize``, when
    given, re-sizes the cap from the measured speed meanwhile.
    """

    deadline: float
    step_cost: Callable[[int], float]
    after: Callable[[int], float]
    max_steps: int
    cap: int | None = None
    grow_until: float = 0.5
    resize: Callable[[float], int] | None = None
    """The cap for a measured speed (wall seconds per modelled second), while densification goes on; None: fixed."""
    every: float = 2.0
    """Seconds between re-plans."""
    window: float = 0.3
    """Fraction of the time spent so far over which the pace is measured (at least 5 re-plans' worth)."""
    measured: list[tuple[float, float, float]] = field(default_factory=list)  # (time, wall s, modelled s)
    _last: float | None = None
    _modelled: float = 0.0
    _started: float = 0.0
    _first: tuple[float, int] | None = None  # (fraction done, Gaussians) when the pace started

    def stepped(self, gaussians: int) -> None:
        """Count one more step's modelled cost (called after every step)."""
        self._modelled += self.step_cost(gaussians)

    def due(self) -> bool:
        return self._last is None or time.monotonic() - self._last >= self.every

    def replan(self, schedule: Schedule, step: int, gaussians: int) -> bool:
        """Re-plan ``schedule`` from ``step`` (with ``gaussians`` now); True when the planned total changed. The
        first call starts the clock: call it after the run's first step, whose first calls (compiling kernels,
        loading caches) would otherwise pass for the machine's pace. At the planned last step, the run is extended
        only by a worthwhile number of steps (``MIN_EXTENSION``)."""
        now = time.monotonic()
        done = schedule.done(step)
        if self._last is None:
            self._last, self._started, self._first = now, now, (done, gaussians)
        elif self._modelled > 0:
            self.measured.append((now, now - self._last, self._modelled))
        self._last, self._modelled = now, 0.0
        speed = self.speed(now)
        if self.resize is not None and done < self.grow_until and len(self.measured) >= 3:
            self.cap = self.resize(speed)
        end = self.final_gaussians(done, gaussians)
        seconds = self.deadline - now - speed * self.after(end)
        per_step = speed * self.mean_step_cost(done, gaussians, end)
        steps = step + max(int(seconds / max(per_step, 1e-9)), 1) if seconds > 0 else step + 1
        steps = min(steps, self.max_steps)
        at_end = step >= schedule.steps
        if steps == schedule.steps or (at_end and steps - step < max(MIN_EXTENSION, step // 50)):
            return False
        schedule.replan(step, steps)
        return True

    def speed(self, now: float) -> float:
        """Measured wall seconds per modelled second over the recent part of the run (1 before any measurement)."""
        horizon = max(self.every * 5, self.window * (now - self._started))
        recent = [(wall, model) for t, wall, model in self.measured if now - t <= horizon] or self.measured[-1:]
        wall, model = sum(w for w, _ in recent), sum(m for _, m in recent)
        return wall / model if model > 0 else 1.0

    def final_gaussians(self, done: float, gaussians: int) -> int:
        """Gaussians expected when densification ends: the cap until 5% of the run has shown how the count moves,
        then the growth so far (per fraction of the run) continued, at most to the cap."""
        if self.cap is None or done >= self.grow_until or gaussians >= self.cap:
            return gaussians  # a cap stops growth; it removes nothing
        first_done, first_count = self._first or (done, gaussians)
        if done - first_done < 0.05:
            return self.cap
        rate = max(gaussians - first_count, 0) / (done - first_done)
        return int(min(self.cap, gaussians + rate * (self.grow_until - done)))

    def mean_step_cost(self, done: float, gaussians: int, end: int) -> float:
        """The model's mean step cost over the rest of the run: the count moving linearly from ``gaussians`` to
        ``end`` until ``grow_until``, then staying at ``end`` (the model is linear in the count)."""
        growing = max(self.grow_until - done, 0.0) / max(1.0 - done, 1e-9)
        return growing * self.step_cost((gaussians + end) // 2) + (1.0 - growing) * self.step_cost(end)
