"""Densification: gsplat's ``DefaultStrategy`` (3DGS's clone / split / prune / opacity reset), scaled to a schedule.

3DGS tunes its schedule for 30,000 steps: refine every 100 steps from step 500 to 15,000, reset opacities every 3,000.
``default_strategy`` scales the start, stop and reset steps to the run's length but keeps refining every 100 steps
down to 3,000-step runs (shorter runs: every steps / 30, at least 10): Gaussians just cloned or split need those steps
to move before their gradients are judged again; refining every 10 steps in a 3,000-step run (gsplat's
``steps_scaler`` scales the interval too) grew 1.5k SfM points to 420k Gaussians on 8 photos by step 1,500.

``Densifier`` wraps the strategy with what gsplat 1.5.3 lacks:

- the opacity reset: ``DefaultStrategy.step_post_backward`` tests ``step % reset_every == 0 & step > 0``, which Python
  reads as ``step % reset_every == (0 & step) > 0``, always false, so gsplat never resets opacities (gsplat PR #776,
  open). ``Densifier`` performs the reset itself with gsplat's own ``ops.reset_opa``; the reset is idempotent, so a
  fixed gsplat resetting too does no harm;
- a cap on the number of Gaussians: a refinement that would grow past ``max_gaussians`` clones and splits only the
  Gaussians with the largest screen gradients, as many as there is room for (removing the least opaque after growing
  everything, as this did before, picked at random right after an opacity reset, when all opacities are equal: a
  capped 460-step fox run fell from 24.6 to 17.4 dB held-out); pruning makes room again.

``Relocator`` is the other strategy, 3DGS-MCMC (Kheradmand et al. 2024, gsplat's ``MCMCStrategy``): a fixed budget
of Gaussians, dead ones (opacity below 0.005) teleported onto live ones sampled by opacity, 5% more each refinement
up to the cap, and noise on the positions of transparent Gaussians. gsplat's version calls two CUDA kernels (the
relocation formula and the covariance for the noise); here both are PyTorch, so it trains on the CPU too.

Both place their events where a ``schedule.Schedule`` puts them (``follow``): the start and end of refinement and
the opacity resets are fractions of the run, taken from the step-based schedule built for the planned number of
steps, and moved when a time budget re-plans that number; the refinement interval follows the planned number as
``default_strategy`` sets it (every 100 steps, every steps / 30 in runs under 3,000).

All parameter surgery goes through ``gsplat.strategy.ops``, which runs on CPU tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import _update_param_with_optimizer, reset_opa
from torch import Tensor

from reconstruct._torch_rasterizer import quat_to_rotmat

if TYPE_CHECKING:
    from reconstruct.schedule import Schedule

REFERENCE_STEPS = 30_000
MIN_RESET_STEPS = 1000
"""Runs planned shorter than this skip the opacity resets: what is left of them after a reset is too short to
recover (a 460-step fox run: 18.4 dB training PSNR before the reset, 10.4 after it, 22.3 at the end)."""


def default_strategy(steps: int, refine_fraction: float = 0.5) -> DefaultStrategy:
    """3DGS's densification schedule scaled from 30,000 steps to ``steps``; refinement stops at ``refine_fraction``."""
    scale = steps / REFERENCE_STEPS
    refine_every = refine_interval(steps)
    return DefaultStrategy(
        refine_start_iter=max(refine_every, round(500 * scale)),
        refine_stop_iter=round(refine_fraction * steps),
        refine_every=refine_every,
        reset_every=max(10 * refine_every, round(3000 * scale)),
    )


def refine_interval(steps: int) -> int:
    """Steps between refinements in a run of ``steps``: 3DGS's 100, down to steps / 30 (at least 10) in short runs."""
    return min(100, max(10, round(steps / 30)))


@dataclass
class Densifier:
    """A ``DefaultStrategy`` with a working opacity reset and a Gaussian cap (see the module docstring)."""

    strategy: DefaultStrategy
    max_gaussians: int | None = None
    refine_stop_fraction: float | None = None
    """Where refinement ends, as a fraction of the run (set by ``follow`` from the strategy's steps)."""
    fractions: tuple[float, tuple[float, ...]] | None = None
    """(refinement start, opacity resets) as fractions of the run, set by the first ``follow``."""
    reset_steps: frozenset[int] | None = None
    """Steps of the opacity resets under the schedule followed; None: every ``reset_every`` steps."""

    @property
    def grow_until(self) -> float:
        """The fraction of the run until which the Gaussian count may grow."""
        return 0.5 if self.refine_stop_fraction is None else self.refine_stop_fraction

    @property
    def cap(self) -> int | None:
        return self.max_gaussians

    @cap.setter
    def cap(self, value: int) -> None:
        self.max_gaussians = value

    def follow(self, schedule: Schedule) -> None:
        """Place the start and end of refinement and the opacity resets where ``schedule`` puts their fractions of
        the run; the first call reads those fractions off the strategy's steps, as set for ``schedule.steps``."""
        s = self.strategy
        if self.fractions is None:
            total = max(schedule.steps, 1)
            stop = s.refine_stop_iter / total if self.refine_stop_fraction is None else self.refine_stop_fraction
            resets = tuple(k * s.reset_every / total for k in range(1, s.refine_stop_iter // s.reset_every + 1)
                           if k * s.reset_every < s.refine_stop_iter)  # fmt: skip
            self.refine_stop_fraction, self.fractions = stop, (s.refine_start_iter / total, resets)
        start, resets = self.fractions
        s.refine_every = refine_interval(schedule.steps)
        s.refine_start_iter = round(schedule.step_at(start))
        s.refine_stop_iter = round(schedule.step_at(self.refine_stop_fraction)) if self.refine_stop_fraction else 0
        self.reset_steps = frozenset(round(schedule.step_at(f)) for f in resets)  # past ones stay in the past
        if schedule.steps < MIN_RESET_STEPS:
            self.reset_steps = frozenset()
        # gsplat prunes Gaussians too large for the scene only after the first reset ("step > reset_every")
        s.reset_every = max(1, round(schedule.step_at(resets[0]))) if resets else max(s.refine_stop_iter, 1)

    def initialize_state(self, scene_scale: float) -> dict[str, Any]:
        return self.strategy.initialize_state(scene_scale=scene_scale)

    def step_pre_backward(self, params, optimizers, state, step: int, info: dict) -> None:
        self.strategy.step_pre_backward(params, optimizers, state, step, info)

    @torch.no_grad()
    def step_post_backward(self, params, optimizers, state, step: int, info: dict) -> None:
        """gsplat's ``DefaultStrategy.step_post_backward`` (accumulate screen gradients; every ``refine_every`` steps
        clone or split where they are large, prune the transparent and, after the first reset, the oversized), with
        growth held to the cap, then the opacity reset on schedule."""
        s = self.strategy
        if step >= s.refine_stop_iter:
            return
        s._update_state(params, state, info, packed=False)
        if step > s.refine_start_iter and step % s.refine_every == 0:
            threshold = s.grow_grad2d
            s.grow_grad2d = self._growth_threshold(params, state)
            try:
                s._grow_gs(params, optimizers, state, step)
            finally:
                s.grow_grad2d = threshold
            s._prune_gs(params, optimizers, state, step)
            state["grad2d"].zero_()
            state["count"].zero_()
        if self._resets_at(step):
            reset_opa(params=params, optimizers=optimizers, state=state, value=s.prune_opa * 2.0)

    def _growth_threshold(self, params, state) -> float:
        """The screen-gradient threshold of this refinement: the strategy's, raised so that at most as many
        Gaussians grow (each clone or split adds one) as the cap has room for, those with the largest gradients."""
        s = self.strategy
        if self.max_gaussians is None:
            return s.grow_grad2d
        grads = state["grad2d"] / state["count"].clamp_min(1)
        room = self.max_gaussians - len(params["means"])
        if int((grads > s.grow_grad2d).sum()) <= room:
            return s.grow_grad2d
        if room <= 0:
            return math.inf
        return max(s.grow_grad2d, float(torch.topk(grads, room + 1).values[-1]))

    def _resets_at(self, step: int) -> bool:
        if self.reset_steps is None:
            return step > 0 and step % self.strategy.reset_every == 0
        return step in self.reset_steps


# --- 3DGS-MCMC ---------------------------------------------------------------------------------------------------

MAX_COPIES = 51  # gsplat's n_max: a Gaussian sampled more often than this is split as if 51 times


def relocation(opacities: Tensor, scales: Tensor, copies: Tensor) -> tuple[Tensor, Tensor]:
    """Opacity and scales of each of ``copies`` Gaussians that together replace one (3DGS-MCMC, eq. 9).

    The copies sit where the original was; their composite opacity equals the original's at the centre,
    ``1 - (1 - o')^N = o``, and their composite alpha integrates to the original's along any line through it:
    ``s' = o s / sum_j C(N, j) (-1)^(j-1) o'^j / sqrt(j)``. Float64 inside (the alternating sum cancels).
    ``opacities`` [N] in (0, 1), ``scales`` [N, 3] (not log), ``copies`` [N] integers >= 1 (clamped to 51).
    """
    n = copies.clamp(1, MAX_COPIES).to(torch.float64)
    o = opacities.to(torch.float64)
    new_o = 1.0 - (1.0 - o) ** (1.0 / n)
    j = torch.arange(1, MAX_COPIES + 1, dtype=torch.float64, device=o.device)
    log_binom = torch.lgamma(n[:, None] + 1) - torch.lgamma(j + 1) - torch.lgamma(n[:, None] - j + 1)
    terms = torch.where(j <= n[:, None], torch.exp(log_binom) * (-1) ** (j - 1) / j.sqrt() * new_o[:, None] ** j, 0.0)
    new_scales = (o / terms.sum(dim=1))[:, None] * scales.to(torch.float64)
    return new_o.to(opacities.dtype), new_scales.to(scales.dtype)


@dataclass
class Relocator:
    """3DGS-MCMC's strategy (gsplat's ``MCMCStrategy``) with PyTorch relocation and noise; see the module docstring.

    Same hooks as ``Densifier``. Steps follow ``default_strategy``'s scaling: refine every 100 steps from 500 to
    25,000 of 30,000.
    """

    cap_max: int = 1_000_000
    noise_lr: float = 5e5
    refine_start_iter: int = 500
    refine_stop_iter: int = 25_000
    refine_every: int = 100
    min_opacity: float = 0.005
    growth: float = 0.05
    refine_stop_fraction: float | None = None
    """Where relocation and growth end, as a fraction of the run (set by ``follow``)."""
    refine_start_fraction: float | None = None

    @property
    def grow_until(self) -> float:
        return 25_000 / REFERENCE_STEPS if self.refine_stop_fraction is None else self.refine_stop_fraction

    @property
    def cap(self) -> int:
        return self.cap_max

    @cap.setter
    def cap(self, value: int) -> None:
        self.cap_max = value

    def follow(self, schedule: Schedule) -> None:
        """As ``Densifier.follow``: refinement's start and end where ``schedule`` puts their fractions of the run."""
        total = max(schedule.steps, 1)
        if self.refine_start_fraction is None:
            self.refine_start_fraction = self.refine_start_iter / total
        if self.refine_stop_fraction is None:
            self.refine_stop_fraction = self.refine_stop_iter / total
        self.refine_every = refine_interval(schedule.steps)
        self.refine_start_iter = round(schedule.step_at(self.refine_start_fraction))
        self.refine_stop_iter = round(schedule.step_at(self.refine_stop_fraction)) if self.refine_stop_fraction else 0

    @classmethod
    def for_steps(cls, steps: int, cap_max: int) -> Relocator:
        """MCMC's 30k-step schedule scaled to ``steps`` (refinement interval as ``default_strategy``)."""
        scale = steps / REFERENCE_STEPS
        every = refine_interval(steps)
        return cls(cap_max=cap_max, refine_start_iter=max(every, round(500 * scale)),
                   refine_stop_iter=round(25_000 * scale), refine_every=every)  # fmt: skip

    def initialize_state(self, scene_scale: float) -> dict[str, Any]:
        return {"scene_scale": scene_scale}

    def step_pre_backward(self, params, optimizers, state, step: int, info: dict) -> None:
        pass

    @torch.no_grad()
    def step_post_backward(self, params, optimizers, state, step: int, info: dict) -> None:
        """Relocate dead Gaussians and grow on schedule; then perturb positions (scaled by the means' learning rate)."""
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            self.relocate(params, optimizers)
            self.grow(params, optimizers)
        self.add_noise(params, optimizers["means"].param_groups[0]["lr"] * self.noise_lr)

    @torch.no_grad()
    def relocate(self, params, optimizers) -> int:
        """Move every Gaussian at most ``min_opacity`` opaque onto a live one drawn by opacity; returns how many."""
        opacities = torch.sigmoid(params["opacities"])
        dead = opacities <= self.min_opacity
        dead_idx, alive_idx = dead.nonzero()[:, 0], (~dead).nonzero()[:, 0]
        if len(dead_idx) == 0 or len(alive_idx) == 0:
            return 0
        sources = alive_idx[torch.multinomial(opacities[alive_idx], len(dead_idx), replacement=True)]
        new_o, new_scales = self._split(params, opacities, sources)

        def param_fn(name: str, p: Tensor) -> Tensor:
            if name == "opacities":
                p[sources] = torch.logit(new_o)
            elif name == "scales":
                p[sources] = torch.log(new_scales)
            p[dead_idx] = p[sources]
            return torch.nn.Parameter(p, requires_grad=p.requires_grad)

        def optimizer_fn(key: str, v: Tensor) -> Tensor:
            v[sources] = 0
            v[dead_idx] = 0
            return v

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
        return len(dead_idx)

    @torch.no_grad()
    def grow(self, params, optimizers) -> int:
        """Add ``growth`` more Gaussians (up to ``cap_max``), each a copy of one drawn by opacity; returns how many."""
        count = len(params["means"])
        n = max(0, min(self.cap_max, int((1 + self.growth) * count)) - count)
        if n == 0:
            return 0
        opacities = torch.sigmoid(params["opacities"])
        sources = torch.multinomial(opacities, n, replacement=True)
        new_o, new_scales = self._split(params, opacities, sources)

        def param_fn(name: str, p: Tensor) -> Tensor:
            if name == "opacities":
                p[sources] = torch.logit(new_o)
            elif name == "scales":
                p[sources] = torch.log(new_scales)
            return torch.nn.Parameter(torch.cat([p, p[sources]]), requires_grad=p.requires_grad)

        def optimizer_fn(key: str, v: Tensor) -> Tensor:
            return torch.cat([v, torch.zeros((n, *v.shape[1:]), dtype=v.dtype, device=v.device)])

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
        return n

    def _split(self, params, opacities: Tensor, sources: Tensor) -> tuple[Tensor, Tensor]:
        """Opacity and scales of each source, shared with the copies drawn from it."""
        copies = torch.bincount(sources, minlength=len(opacities))[sources] + 1
        new_o, new_scales = relocation(opacities[sources], torch.exp(params["scales"][sources]), copies)
        eps = torch.finfo(torch.float32).eps
        return new_o.clamp(self.min_opacity, 1.0 - eps), new_scales

    @torch.no_grad()
    def add_noise(self, params, scale: float) -> None:
        """Move near-transparent Gaussians by noise shaped by their covariance (opaque ones barely move)."""
        opacities = torch.sigmoid(params["opacities"])
        gate = torch.sigmoid(100.0 * ((1.0 - opacities) - 0.995))
        R = quat_to_rotmat(params["quats"])
        M = R * torch.exp(params["scales"])[:, None, :]
        covariances = M @ M.transpose(-1, -2)
        noise = torch.randn_like(params["means"]) * (gate * scale)[:, None]
        params["means"].add_(torch.einsum("nij,nj->ni", covariances, noise))
