"""What a training run will cost, and the plan that fits ``orbit4d train`` to the device it runs on.

CUDA keeps 3DGS's recipe: 30,000 steps, no cap on the Gaussians, the images as they are. The CPU gets a plan that
ends in about ``CPU_MINUTES``: a time budget (``schedule.Pace`` re-plans the number of steps from the pace it
measures, never beyond 30,000), a cap on the Gaussians sized from the views and the budget (each CPU step costs in
proportion to the Gaussians), and images larger than ``CPU_MAX_PIXELS`` downscaled. Anything given explicitly wins.
The plan is the run's first line: what it chose, why, and how long it should take.

The time model: one training step costs ``a + b N + c P + d N P`` seconds with N Gaussians and P pixels in the view
(``StepCost``, fitted to ``bench/step_cost_bench.py``'s measurements); rendering a view for evaluation, the
turntable or a PSNR sample costs ``RENDER_SHARE`` of a step. The machine's own speed, and the load other jobs put on
it, are measured while training runs (``schedule.Pace``); the estimate on the first line is the model's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiview.capture import Capture
    from reconstruct.schedule import Pace
    from reconstruct.train import TrainConfig

REFERENCE_STEPS = 30_000  # 3DGS's recipe; the most steps a time budget plans unless --steps says more
CPU_MINUTES = 12.0
"""The CPU's default time budget for a whole ``orbit4d train`` (loading, training, evaluation, exports)."""
CPU_MAX_PIXELS = 250_000
"""Largest image (width x height) the CPU trains on by default (LLFF's 504x378, a 640x360 video; 1080p is divided by
3): larger captures are downscaled by the smallest whole factor that fits, which buys the steps a scene needs."""
CPU_STEPS_PER_BUDGET = 3_000
"""The CPU's Gaussian cap is sized so that this many steps at the cap fit in the budget's training time (about 70
epochs of a 40-photo capture, where 3DGS's 7k-step results sit within a dB or two of its 30k)."""
CPU_MIN_CAP, CPU_GAUSSIANS_PER_PIXEL = 20_000, 0.05
"""Bounds of the CPU's Gaussian cap: at least this many; at most this many per training pixel (all views)."""
RENDER_SHARE = 0.45
"""A forward render of a view costs this fraction of a training step at the same Gaussians and pixels."""
SETUP_SECONDS = 5.0
"""Seconds before the first step beyond loading the images (imports, initialisation, compiled kernels' cache)."""
LOAD_SECONDS_PER_MEGAPIXEL = 0.05
"""Decoding and resizing the images, per million source pixels."""
ALIGN_STEPS = 100  # reconstruct.evaluate's held-out pose alignment: Adam steps per view
AFTER_SECONDS = 4.0
"""Seconds after training beyond rendering: the training plot, writing files, the summary."""
MIN_BUDGET_STEPS = 10
"""A time budget must leave room for this many steps, else it is refused."""


@dataclass(frozen=True)
class StepCost:
    """Seconds of one training step with ``n`` Gaussians and ``p`` pixels: ``a + b n + c p + d n p``."""

    a: float
    b: float
    c: float
    d: float

    def seconds(self, gaussians: float, pixels: float) -> float:
        return self.a + self.b * gaussians + self.c * pixels + self.d * gaussians * pixels

    def gaussians_within(self, seconds: float, pixels: float) -> int:
        """The most Gaussians whose step at ``pixels`` costs at most ``seconds`` (0 when none fit)."""
        per_gaussian = self.b + self.d * pixels
        return max(int((seconds - self.a - self.c * pixels) / per_gaussian), 0)


# The project's 2-core x86_64 VM, numba rasterizer, SH degree 3, one thread's CPU seconds (bench/step_cost_bench.py
# --threads 1, bench/RESULTS.md): what a step costs there while another job holds the other core, as it usually does
CPU_STEP_COST = StepCost(a=0.0, b=1.5e-6, c=4.0e-7, d=1.2e-12)
# gsplat on one data-centre GPU: a few milliseconds a step at a million Gaussians (bench/RESULTS.md's H100 figures)
CUDA_STEP_COST = StepCost(a=0.004, b=2.0e-9, c=2.0e-9, d=0.0)


def step_cost(device: str) -> StepCost:
    return CUDA_STEP_COST if device == "cuda" else CPU_STEP_COST


@dataclass(frozen=True)
class Plan:
    """What a run will do, as resolved for its device; ``chosen`` names what the plan picked (not given)."""

    device: str
    steps: int
    """Steps planned (with a time budget, the first estimate: the budget re-plans them as it measures its pace)."""
    max_steps: int
    minutes: float | None
    max_gaussians: int | None
    downscale: int
    image_size: tuple[int, int]
    seconds: float
    """Estimated wall seconds of the whole run, from the command's start."""
    elapsed: float
    """Seconds the command had run when the plan was made."""
    chosen: tuple[str, ...]
    source_size: tuple[int, int]
    run: RunCost

    def pace(self, started: float, grow_until: float) -> Pace:
        """The time budget's re-planner (``minutes`` counted from ``started``, a ``time.monotonic()`` value); a cap the
        plan chose is re-sized from the pace measured, so that a slower machine gets fewer Gaussians, not fewer
        steps (never more than planned)."""
        from reconstruct.schedule import Pace

        resize = None
        if "max_gaussians" in self.chosen and self.max_gaussians is not None:
            def resize(speed: float) -> int:
                run = replace(self.run, cost=StepCost(*(speed * v for v in vars(self.run.cost).values())))
                return min(self.max_gaussians, cpu_cap(run, self.minutes, self.max_steps, self.elapsed))

        return Pace(deadline=started + 60.0 * self.minutes, step_cost=self.run.step, after=self.run.after,
                    max_steps=self.max_steps, cap=self.max_gaussians, grow_until=grow_until, resize=resize)  # fmt: skip

    def line(self) -> str:
        """The run's first line."""
        device = "CPU" if self.device == "cpu" else "CUDA"
        if self.minutes is not None:
            what = (f"plan ({device}): a {self.minutes:g}-minute budget, about {self.steps:,} steps "
                    f"(at most {self.max_steps:,}, re-planned as the pace is measured)")
        else:
            what = f"plan ({device}): {self.steps:,} steps, about {_duration(self.seconds)}"
        cap = "no cap on the Gaussians" if self.max_gaussians is None else f"at most {self.max_gaussians:,} Gaussians"
        width, height = self.image_size
        size = f"images {width}x{height}"
        if self.downscale > 1:
            size += f" (--downscale {self.downscale} of {self.source_size[0]}x{self.source_size[1]})"
        ends = time.strftime("%H:%M", time.localtime(time.time() + self.seconds - self.elapsed))
        tail = f"; ends about {ends}"
        own = [option for option, name in (("--minutes", "minutes"), ("--steps", "steps"),
                                           ("--max-gaussians", "max_gaussians"), ("--downscale", "downscale"))
               if name in self.chosen]  # fmt: skip
        choose = f" ({', '.join(own)} to choose yourself)" if own else ""
        return f"{what}, {cap}, {size}{tail}{choose}"

    def as_dict(self) -> dict:
        return {"device": self.device, "steps": self.steps, "max_steps": self.max_steps, "minutes": self.minutes,
                "max_gaussians": self.max_gaussians, "downscale": self.downscale, "image_size": list(self.image_size),
                "estimated_seconds": round(self.seconds, 1), "chosen": list(self.chosen)}  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def auto_downscale(width: int, height: int, max_pixels: int = CPU_MAX_PIXELS) -> int:
    """The smallest whole factor that brings a ``width`` x ``height`` image to at most ``max_pixels``."""
    return max(1, math.ceil(math.sqrt(width * height / max_pixels) - 1e-9))


def resolve(config: TrainConfig, capture: Capture, device: str, train_views: int, eval_views: int,
            elapsed: float = 0.0) -> tuple[TrainConfig, Plan]:  # fmt: skip
    """``config`` with the device's choices in place of what it leaves open (None: steps, minutes, max_gaussians,
    downscale), and the plan that says so. ``elapsed``: seconds the command has already run (a budget counts from
    its start). InputError when a time budget cannot hold ``MIN_BUDGET_STEPS`` steps."""
    from multiview.errors import InputError

    chosen = []
    width, height = max((f.camera.width, f.camera.height) for f in capture.frames)
    downscale = config.downscale
    if downscale is None:
        downscale = auto_downscale(width, height) if device == "cpu" else 1
        if downscale > 1:
            chosen.append("downscale")
    pixels = round(width / downscale) * round(height / downscale)
    cost = step_cost(device)
    minutes = config.minutes
    if minutes is None and config.steps is None and device == "cpu":
        minutes = CPU_MINUTES
        chosen.append("minutes")
    if config.steps is None and minutes is None:
        chosen.append("steps")
    max_steps = config.steps or REFERENCE_STEPS
    run = RunCost(cost, pixels, train_views, eval_views, config.turntable_frames, config.psnr_samples,
                  _load_seconds(capture, downscale), ALIGN_STEPS * eval_views if config.pose_opt else 0)  # fmt: skip
    max_gaussians = config.max_gaussians
    if max_gaussians is None:
        max_gaussians = cpu_cap(run, minutes, max_steps, elapsed) if device == "cpu" else 0
        if device == "cpu":
            chosen.append("max_gaussians")
    cap = max_gaussians or None
    start = len(capture.points) if capture.points is not None and len(capture.points) else None
    if minutes is not None:
        steps = run.steps_within(minutes * 60.0 - elapsed, cap, start, max_steps)
        if steps < MIN_BUDGET_STEPS:
            least = math.ceil(run.least_minutes(MIN_BUDGET_STEPS, cap, start) * 10 + elapsed / 6.0) / 10
            raise InputError(f"--minutes {minutes:g} is too short to train this capture ({width}x{height} images at "
                             f"--downscale {downscale}): {MIN_BUDGET_STEPS} steps and the outputs take about {least:g} "
                             f"minutes here; give at least --minutes {least:g}")
        seconds = minutes * 60.0
    else:
        steps = max_steps
        seconds = elapsed + run.seconds(steps, cap, start)
    resolved = replace(config, steps=max_steps, minutes=minutes, max_gaussians=max_gaussians, downscale=downscale)
    size = (round(width / downscale), round(height / downscale))
    plan = Plan(device, steps, max_steps, minutes, cap, downscale, size, seconds, elapsed, tuple(chosen),
                (width, height), run)  # fmt: skip
    return resolved, plan


def cpu_cap(run: RunCost, minutes: float | None, steps: int, elapsed: float) -> int:
    """The CPU's Gaussian cap: the most Gaussians at which ``CPU_STEPS_PER_BUDGET`` steps (or ``steps`` when fewer)
    fit in the budget's training time, within [CPU_MIN_CAP, CPU_GAUSSIANS_PER_PIXEL x training pixels]."""
    seconds = (minutes or CPU_MINUTES) * 60.0 - elapsed - run.fixed_seconds()
    per_step = seconds / min(steps, CPU_STEPS_PER_BUDGET) * 0.85  # room for samples and outputs
    by_time = run.cost.gaussians_within(per_step, run.pixels)
    by_content = int(CPU_GAUSSIANS_PER_PIXEL * run.pixels * run.train_views)
    return max(CPU_MIN_CAP, min(by_time, by_content))


@dataclass(frozen=True)
class RunCost:
    """The time model of one run: its steps, and what comes before and after them."""

    cost: StepCost
    pixels: int
    train_views: int
    eval_views: int
    turntable_frames: int
    psnr_samples: int
    load_seconds: float
    align_steps: int = 0
    """Steps of held-out pose alignment after training (``--pose-opt``), each costing about a training step."""

    def step(self, gaussians: float) -> float:
        return self.cost.seconds(gaussians, self.pixels)

    def fixed_seconds(self) -> float:
        return SETUP_SECONDS + self.load_seconds

    def after(self, gaussians: float) -> float:
        """Seconds from the last step to the scene written: held-out evaluation (with depth, about 1.6 renders a
        view; pose alignment), renders, the turntable, files."""
        renders = 1.6 * self.eval_views + self.turntable_frames
        step = self.step(gaussians)
        return AFTER_SECONDS + (renders * RENDER_SHARE + self.align_steps) * step + 5e-6 * gaussians

    def samples(self, gaussians: float) -> float:
        """Seconds of the PSNR-vs-time samples during training (up to 8 held-out views each)."""
        return self.psnr_samples * min(self.eval_views, 8) * RENDER_SHARE * self.step(gaussians)

    def seconds(self, steps: int, cap: int | None, start: int | None) -> float:
        """The whole run: set-up, ``steps`` steps growing from ``start`` Gaussians toward ``cap`` over the first
        half, samples and outputs."""
        end = self._end(cap, start)
        mean = 0.5 * self.step(((start or end) + end) / 2) + 0.5 * self.step(end)
        return self.fixed_seconds() + steps * mean + self.samples(end) + self.after(end)

    def steps_within(self, seconds: float, cap: int | None, start: int | None, max_steps: int) -> int:
        end = self._end(cap, start)
        mean = 0.5 * self.step(((start or end) + end) / 2) + 0.5 * self.step(end)
        left = seconds - self.fixed_seconds() - self.samples(end) - self.after(end)
        return min(max(int(left / mean), 0), max_steps)

    def least_minutes(self, steps: int, cap: int | None, start: int | None) -> float:
        return self.seconds(steps, cap, start) / 60.0

    @staticmethod
    def _end(cap: int | None, start: int | None) -> int:
        """Gaussians expected at the end: the cap, or without one 10x the start (a guess: nothing bounds it)."""
        return cap if cap is not None else 10 * (start or 10_000)


def _load_seconds(capture: Capture, downscale: int) -> float:
    megapixels = sum(f.camera.width * f.camera.height for f in capture.frames) / 1e6
    return LOAD_SECONDS_PER_MEGAPIXEL * megapixels * (1.0 if downscale == 1 else 1.2)
