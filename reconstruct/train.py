"""The reconstruct stage: a capture folder in, a trained 3D Gaussian-splat scene out (``orbit4d train``).

The loop is 3DGS's and reads top to bottom in ``train_step``: one training view per step, L1 + 0.2 D-SSIM, one Adam
per parameter with 3DGS's learning rates (means scaled by the scene size, decaying exponentially), SH degree raised
one step at a time, densification by gsplat's ``DefaultStrategy`` (``reconstruct.strategy``).

Output folder (``scene/``)::

    splats.ply       3DGS layout, for SuperSplat, Spark, gsplat, Blender add-ons
    splats.splat     antimatter15 layout, for web viewers
    metrics.json     held-out PSNR / SSIM / LPIPS (null without local weights), #Gaussians, steps, seconds,
                     test views, PSNR-vs-time samples
    renders/         ground truth | render, per held-out view
    turntable.mp4    one orbit around the scene centre
    checkpoint/      checkpoint.pt, to resume or extend training

Every run trains in ``.<name>.partial/`` beside ``out_dir`` (checkpoints included) and renames it into place when
everything is written, so an existing scene is never half replaced. ``--resume`` continues from the checkpoint of
the ``.partial`` folder an interrupted run left, or of ``out_dir`` itself (a finished scene, trained further: it
stays as it was until the longer run is written).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from multiview.capture import read_capture
from multiview.console import console, info, warn
from multiview.errors import InputError, Orbit4dError, OutputExistsError
from multiview.interrupts import deferred_interrupt
from multiview.outputs import checked_out_dir, output_lock, replace_dir, write_json
from reconstruct import metrics as M
from reconstruct.budget import Plan, resolve
from reconstruct.checkpoint import (
    TrainState,
    checkpoint_path,
    read_checkpoint,
    restore_state,
    save_checkpoint,
)
from reconstruct.corrections import (
    color_report,
    corrected_colors,
    corrected_viewmat,
    pose_centre,
    pose_report,
)
from reconstruct.data import SceneData, View, load_scene, split_sizes
from reconstruct.evaluate import (
    composite,
    eval_colors,
    evaluate_views,
    evaluated_on,
    evaluation_background,
    finite_or_none,
    parse_background,
    per_view_json,
    pose_aligned_metrics,
    pose_aligned_row,
    render_tensors,
    summarize,
    write_training_plot,
    write_turntable,
)
from reconstruct.ply import write_ply, write_splat
from reconstruct.schedule import Pace, Schedule
from reconstruct.splats import Splats, camera_extent, random_splats, splats_from_points, view_volume
from reconstruct.strategy import Densifier, Relocator, default_strategy

MAX_SAMPLE_VIEWS = 8  # held-out views rendered for each PSNR-vs-time sample


class TrainError(Orbit4dError):
    """Training cannot go on (diverged, out of memory); the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``orbit4d train`` can be told. Fields left None are chosen for the device when the run starts
    (``reconstruct.budget.resolve``): 3DGS's 30k-step recipe on CUDA, a time budget on the CPU; see ``PRESETS``."""

    steps: int | None = None
    """Optimisation steps, one training image each. None: 30,000 on CUDA (3DGS); on the CPU as many as fit in
    ``minutes``, at most 30,000. With ``minutes``: the most steps the time budget may plan."""
    minutes: float | None = None
    """Time budget of the whole run (loading, training, evaluation, exports), in minutes: the number of steps is
    planned from a time model and re-planned from the measured pace as training goes, and the whole schedule (learning
    rate decay, densification window, opacity resets, SH warm-up) follows it. None: no budget, except on the CPU when
    ``steps`` is None too (``budget.CPU_MINUTES``)."""
    sh_degree: int = 3
    """Highest spherical-harmonics degree of the colours (0: view-independent colour, 3: 3DGS)."""
    sh_degree_interval: int | None = None
    """Steps between raising the SH degree by one; None: 1,000 x steps / 30,000 (3DGS's 1,000 at 30k)."""
    ssim_weight: float = 0.2
    """Weight of D-SSIM in the loss (1 - w) L1 + w D-SSIM."""
    lr_means: float = 1.6e-4
    """Initial learning rate of the means, times the scene scale (3DGS's position_lr_init)."""
    lr_means_final: float = 1.6e-6
    """Final learning rate of the means, times the scene scale; exponential decay in between."""
    lr_scales: float = 5e-3
    """Learning rate of the log-scales."""
    lr_quats: float = 1e-3
    """Learning rate of the rotations."""
    lr_opacities: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_sh0: float = 2.5e-3
    """Learning rate of the SH DC colour."""
    lr_shN: float = 2.5e-3 / 20
    """Learning rate of the higher SH coefficients (3DGS: the DC rate / 20)."""
    lr_scale: float = 1.0
    """Multiplies every learning rate (lower it when training diverges)."""
    init_opacity: float = 0.1
    """Opacity of every Gaussian at initialisation."""
    random_init_points: int | None = None
    """Gaussians of the random initialisation, used when the capture has no points3D.ply; None: 100,000 on CUDA
    (3DGS's synthetic scenes), 10,000 on the CPU (densification adds what the scene needs; each CPU step costs
    in proportion to the Gaussians, and most random ones are pruned)."""
    densify: bool = True
    """Change the set of Gaussians during training with ``strategy`` (False: keep the initial ones)."""
    strategy: str = "default"
    """default: 3DGS's clone / split / prune (gsplat's DefaultStrategy); mcmc: 3DGS-MCMC's relocation up to
    ``max_gaussians`` (1M when unset), with opacity and scale regularisers."""
    opacity_reg: float | None = None
    """Weight of the mean opacity in the loss; None: 0.01 with mcmc (3DGS-MCMC), 0 with default."""
    scale_reg: float | None = None
    """Weight of the mean scale in the loss; None: 0.01 with mcmc (3DGS-MCMC), 0 with default."""
    flatten_reg: float = 0.0
    """Weight of the flattening loss, each Gaussian's smallest over middle scale (PGSR): discs lying on the surface
    instead of blobs, for meshes (``--surface``; ``reconstruct.surfaces``)."""
    normal_reg: float = 0.0
    """Weight of depth-normal consistency (2DGS, PGSR) after the first 30% of the steps: the discs' normals made those
    of the depth they render, for meshes (``--surface``); one more rasterization per step."""
    grow_grad2d: float | None = None
    """Mean screen-space gradient above which a Gaussian is cloned or split; None: 0.0002 (3DGS), 0.0008 with
    ``absgrad`` (gsplat's advice)."""
    absgrad: bool = False
    """Judge growth by the sum of absolute per-pixel gradients (AbsGS, gsplat's ``absgrad``) instead of their sum,
    whose opposite signs cancel in large Gaussians over fine detail; default strategy only."""
    max_gaussians: int | None = None
    """Cap on the number of Gaussians (densification grows those with the largest screen gradients first and stops
    there; mcmc's budget). 0: no cap; None: none on CUDA, on the CPU sized from the views' pixels and the time budget
    (``budget.cpu_cap``)."""
    background: str = "random"
    """Background behind the splats and masked-out pixels while training: random (per step), black, white or
    #rrggbb. Evaluation and renders use it when fixed, white when random."""
    downscale: int | None = None
    """Divide image width and height by this once at load (2: a quarter of the pixels). None: 1 on CUDA; on the CPU
    the smallest factor that brings the images to at most ``budget.CPU_MAX_PIXELS``."""
    test_every: int = 8
    """Hold out every n-th view (sorted by name, from the first) for evaluation; 0: hold out none."""
    allow_outside_paths: bool = False
    """Read files the capture's transforms.json names outside the capture's folder (refused otherwise)."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    backend: str = "auto"
    """Rasterizer: auto (gsplat on CUDA; on the CPU the numba-compiled rasterizer, or PyTorch without numba), torch,
    numba or gsplat."""
    antialiased: bool = False
    """gsplat's antialiased rasterization (Mip-Splatting's 2D filter: each opacity compensated for the 0.3 px^2
    dilation), for scenes seen at other resolutions or distances than the photos'; renders use it too."""
    pose_opt: bool = False
    """Refine the training views' camera poses with the splats (gsplat's pose_opt, nerfstudio's camera optimizer):
    a rigid motion per view, for captures whose SfM poses are slightly off. The motions are kept zero-mean, so the
    cameras cannot drift away together from the held-out views, which keep their poses."""
    lr_pose: float = 3e-4
    """Learning rate of the pose corrections (rotation in radians, translation in units of the scene scale),
    decaying to a hundredth of it."""
    appearance: bool = False
    """Learn a colour correction per training view, a 3x3 matrix and an offset applied to what the splats contribute
    (gsplat's app_opt and bilateral grids in their simplest form), for photos whose exposure or white balance differ
    (phones' auto exposure, photos from the internet): without it the splats bake the differences in as floaters and
    view-dependent colour. Kept zero-mean like pose_opt: exports and the turntable show the scene in the training
    photos' mean colours; held-out views are evaluated in those, or in their nearest training views' corrections
    where the corrections follow the camera path (``held_out_colors``)."""
    lr_appearance: float = 1e-2
    """Learning rate of the colour corrections, decaying to a hundredth of it."""
    seed: int = 0
    """Seed of the initialisation, the view order, random backgrounds and densification."""
    checkpoint_every: int = 1000
    """Save a checkpoint every this many steps (and at the end, and on Ctrl-C); 0: only then."""
    psnr_samples: int = 10
    """Times during training that held-out PSNR is measured (PSNR-vs-time in metrics.json); 0: none."""
    turntable_frames: int = 120
    """Frames of turntable.mp4 (30 fps); 0: no video."""

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        """A named preset (``PRESETS``) with ``overrides`` applied."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return replace(cls(**PRESETS[name]), **overrides)

    def validate(self) -> None:
        """InputError naming the option for values training cannot use."""
        positive = {"--steps": self.steps, "--downscale": self.downscale, "--init-points": self.random_init_points}
        for option, value in positive.items():
            if value is not None and value < 1:
                raise InputError(f"{option} {value}: must be at least 1")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise InputError(f"--minutes {self.minutes:g}: give the run's time budget as a positive number of minutes "
                             "(e.g. --minutes 5)")
        if self.test_every < 0:
            raise InputError(f"--test-every {self.test_every}: use 0 to hold out none, or N for every N-th view")
        if self.max_gaussians is not None and self.max_gaussians < 0:
            raise InputError(f"--max-gaussians {self.max_gaussians}: must be at least 1 (0: no cap)")
        if not 0 <= self.sh_degree <= 3:
            raise InputError(f"--sh-degree {self.sh_degree}: use 0, 1, 2 or 3")
        if not (self.flatten_reg >= 0 and self.normal_reg >= 0 and math.isfinite(self.flatten_reg + self.normal_reg)):
            raise InputError(f"flatten_reg {self.flatten_reg}, normal_reg {self.normal_reg}: use weights from 0 up")
        if not (self.lr_scale > 0 and math.isfinite(self.lr_scale)):
            raise InputError(f"--lr-scale {self.lr_scale}: use a positive number (0.5 halves every learning rate)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"--device {self.device}: use auto, cpu or cuda")
        if self.strategy not in ("default", "mcmc"):
            raise InputError(f"--strategy {self.strategy}: use default or mcmc")
        if self.absgrad and self.strategy != "default":
            raise InputError("--absgrad changes the default strategy's growth test; mcmc grows by opacity: drop one")
        if self.backend not in ("auto", "torch", "numba", "gsplat"):
            raise InputError(f"backend {self.backend}: use auto, torch, numba or gsplat")
        parse_background(self.background)


SURFACE_REGULARIZERS = {"flatten_reg": 0.1, "normal_reg": 0.05}  # --surface (2DGS's normal weight)
PRESETS: dict[str, dict] = {
    "default": {},  # chosen for the device: CUDA 3DGS's 30k steps, SH degree 3; the CPU a time budget
    "fast": {"steps": 7_000},  # 3DGS's 7k-step results
    "preview": {"steps": 2_000, "sh_degree": 1, "max_gaussians": 200_000, "turntable_frames": 60},  # CPU previews
    # a generated orbit (image-to-3d): few small views that do not quite agree, masks, exact cameras; bench/RESULTS.md
    "orbit": {"steps": 1_500, "sh_degree": 0, "test_every": 0, "max_gaussians": 50_000, "turntable_frames": 60},
}
# What a resumed run may change (the rest comes from the checkpoint): what to do when a run diverged or ran out of
# memory, how long to train, where, and what to measure.
_RUN_CONTROL = (
    "steps", "minutes", "device", "backend", "lr_scale", "downscale", "max_gaussians", "checkpoint_every",
    "psnr_samples", "turntable_frames", "allow_outside_paths",
)  # fmt: skip


# --- the stage -------------------------------------------------------------------------------------------------


def run(
    config: TrainConfig,
    capture_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[TrainState], None] | None = None,
    started: float | None = None,
) -> Path:
    """Train splats on the capture at ``capture_dir`` and write the scene to ``out_dir``; return ``out_dir``.

    ``resume``: continue from the checkpoint (its settings win, except ``_RUN_CONTROL`` fields such as ``steps``).
    ``on_step(state)`` runs after every step (a KeyboardInterrupt raised there stops like Ctrl-C: checkpoint saved).
    ``started``: ``time.monotonic()`` when the command began, which a time budget counts from (default: now).
    """
    started = time.monotonic() if started is None else started
    config.validate()
    out_dir = Path(out_dir).absolute()
    checked_out_dir(out_dir, [capture_dir])
    with output_lock(out_dir):  # one run per scene: .partial and out_dir are this run's until it ends
        report = _run_locked(config, capture_dir, out_dir, resume, overwrite, on_step, started)
    _print_summary(report, out_dir)
    return out_dir


def _run_locked(config: TrainConfig, capture_dir: Path, out_dir: Path, resume: bool, overwrite: bool,
                on_step: Callable[[TrainState], None] | None, started: float) -> dict:  # fmt: skip
    """``run`` while holding ``out_dir``'s lock; returns the scene's report."""
    work, resume_from = _work_dir(out_dir, capture_dir, resume, overwrite)
    payload = read_checkpoint(checkpoint_path(resume_from)) if resume_from is not None else None
    if payload is not None:
        config = _resumed_config(payload["config"], config)
    device = _device(config)
    config, plan, scene = _planned_scene(config, capture_dir, device, started)
    if payload is not None and payload["step"] > config.steps:
        raise InputError(f"{checkpoint_path(resume_from)} is at step {payload['step']}, beyond --steps "
                         f"{config.steps}: pass a larger --steps")
    if payload is not None:
        state = _resumed_state(payload, config, scene, device)
        info(f"resuming {resume_from} at step {state.step} of {state.schedule.steps}")
    else:
        state = _fresh_state(config, scene, device)
        state.schedule = Schedule(plan.steps)
    if work != resume_from:  # a fresh run, or a finished scene trained further beside itself until it is done
        shutil.rmtree(work, ignore_errors=True)  # an interrupted run's folder, when --overwrite allowed it
        work.mkdir(parents=True)
        if resume_from == out_dir:
            (work / EXTENDS_SCENE).touch()
    densifier = _densifier(config, state.schedule)
    pace = plan.pace(started, densifier.grow_until) if config.minutes is not None else None
    clean = False
    try:
        _train(config, scene, state, densifier, device, work, on_step, pace)
        try:
            report = _export(config, scene, state, work, device, plan, started)
        except (MemoryError, RuntimeError) as error:
            if not _is_out_of_memory(error):
                raise
            raise TrainError(f"out of memory while evaluating {len(state.params['means']):,} Gaussians at "
                             f"full resolution; training is saved in {checkpoint_path(work)}: rerun with --resume "
                             f"--downscale {config.downscale * 2}") from None
        clean = True
    finally:
        if not clean and not checkpoint_path(work).is_file():
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: leave no empty partial folder
    if (work / EXTENDS_SCENE).is_file():  # what was added to the scene (orbit4d eval's eval/, say) stays with it
        (work / EXTENDS_SCENE).unlink()
        for entry in out_dir.iterdir() if out_dir.is_dir() else ():
            if not (work / entry.name).exists():
                os.replace(entry, work / entry.name)
    replace_dir(work, out_dir)
    return report


def _planned_scene(config: TrainConfig, capture_dir: Path, device: torch.device,
                   started: float) -> tuple[TrainConfig, Plan, SceneData]:  # fmt: skip
    """The config with the device's choices (``budget.resolve``), its plan said on the first line, then the images."""
    capture = read_capture(Path(capture_dir), config.allow_outside_paths)
    train_views, test_views = split_sizes(len(capture.frames), config.test_every)
    config, plan = resolve(config, capture, device.type, train_views, test_views, time.monotonic() - started)
    info(plan.line())
    return config, plan, load_scene(capture_dir, config.downscale, config.test_every, capture=capture)


def saved_config(out_dir: Path) -> TrainConfig | None:
    """The config stored in the checkpoint ``--resume`` would use for ``out_dir``, or None when there is none."""
    out_dir = Path(out_dir).absolute()
    for folder in (_partial_dir(out_dir), out_dir):
        if checkpoint_path(folder).is_file():
            return _config_from_dict(read_checkpoint(checkpoint_path(folder))["config"])
    return None


# In a .partial folder that trains a finished scene further: the files added to the scene move to the new one.
EXTENDS_SCENE = ".extends-scene"


def _partial_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.partial"


def check_out_dir(out_dir: Path, capture_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
    """What ``run`` refuses about ``out_dir`` before it trains (OutputExistsError, InputError), for commands to check
    before long work that comes first (a capture)."""
    _work_dir(Path(out_dir).absolute(), capture_dir, resume, overwrite)


def _work_dir(out_dir: Path, capture_dir: Path, resume: bool, overwrite: bool) -> tuple[Path, Path | None]:
    """(folder to train in: ``out_dir``'s ``.partial`` sibling, renamed into place when everything is written;
    folder whose checkpoint to resume, or None). Refuses what would lose work or the capture; creates nothing."""
    checked_out_dir(out_dir, [capture_dir])
    partial = _partial_dir(out_dir)
    if resume:  # an interrupted run first: it is newer than a finished scene it was going to replace
        if checkpoint_path(partial).is_file():
            return partial, partial
        if checkpoint_path(out_dir).is_file():
            return partial, out_dir
        raise InputError(f"{out_dir}: no checkpoint to resume (looked in {out_dir}/checkpoint and "
                         f"{partial}/checkpoint): train without --resume")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists and is not empty: pass --resume to train it further, "
                                "--overwrite to replace it, or choose another --out")
    if checkpoint_path(partial).is_file() and not overwrite:  # without one (killed early) there is nothing to lose
        raise OutputExistsError(f"{partial} holds an interrupted run: pass --resume to continue it or "
                                "--overwrite to start over")
    return partial, None


def _resumed_config(saved: dict, given: TrainConfig) -> TrainConfig:
    base = _config_from_dict(saved)
    ignored = [f.name for f in fields(TrainConfig)
               if f.name not in _RUN_CONTROL and getattr(given, f.name) != getattr(base, f.name)]  # fmt: skip
    if ignored:
        warn("--resume keeps the checkpoint's settings; ignoring "
             + ", ".join(f"{name}={getattr(given, name)!r}" for name in ignored))
    return replace(base, **{name: getattr(given, name) for name in _RUN_CONTROL})


def _config_from_dict(saved: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def _device(config: TrainConfig) -> torch.device:
    name = config.device
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch: use --device cpu (or auto)")
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if config.backend == "gsplat" and device.type != "cuda":
        raise InputError("the gsplat rasterizer needs CUDA and none is in use: use backend auto or torch on the CPU")
    if config.backend == "numba" and device.type != "cpu":
        raise InputError("the numba rasterizer runs on the CPU: use backend auto or gsplat on CUDA")
    return device


MCMC_DEFAULT_CAP = 1_000_000  # gsplat's MCMCStrategy.cap_max


GROW_GRAD2D, ABSGRAD_GROW_GRAD2D = 2e-4, 8e-4  # TrainConfig.grow_grad2d's defaults


def _densifier(config: TrainConfig, schedule: Schedule | None = None) -> Densifier | Relocator:
    """The strategy, its events placed where ``schedule`` puts them (3DGS's for ``config.steps`` without one)."""
    schedule = schedule or Schedule(config.steps)
    if config.strategy == "mcmc":
        densifier = Relocator.for_steps(schedule.steps, config.max_gaussians or MCMC_DEFAULT_CAP)
    else:
        strategy = default_strategy(schedule.steps)
        strategy.absgrad = config.absgrad
        default_threshold = ABSGRAD_GROW_GRAD2D if config.absgrad else GROW_GRAD2D
        strategy.grow_grad2d = default_threshold if config.grow_grad2d is None else config.grow_grad2d
        densifier = Densifier(strategy, config.max_gaussians or None)
    if not config.densify:
        densifier.refine_stop_fraction = 0.0
    densifier.follow(schedule)
    return densifier


def regularizer_weights(config: TrainConfig) -> tuple[float, float]:
    """(opacity, scale) weights of the loss's regularisers; 3DGS-MCMC's 0.01 each when unset with mcmc."""
    default = 0.01 if config.strategy == "mcmc" else 0.0
    return (default if config.opacity_reg is None else config.opacity_reg,
            default if config.scale_reg is None else config.scale_reg)  # fmt: skip


# --- state -----------------------------------------------------------------------------------------------------


def make_optimizers(config: TrainConfig, params: dict, scene_scale: float,
                    per_view: dict[str, torch.nn.Parameter] | None = None) -> dict[str, torch.optim.Adam]:  # fmt: skip
    """One Adam per parameter (gsplat's strategies need exactly one group each), 3DGS's learning rates; one more
    for each of the training views' corrections in ``per_view`` ("poses", "appearance"), under its name (the
    strategies touch only the names in ``params``).

    Fused: one kernel per step and parameter instead of a dozen; 7x faster on the CPU at 80k Gaussians.
    """
    rates = {
        "means": config.lr_means * scene_scale,
        "scales": config.lr_scales,
        "quats": config.lr_quats,
        "opacities": config.lr_opacities,
        "sh0": config.lr_sh0,
        "shN": config.lr_shN,
    }
    optimizers = {
        name: torch.optim.Adam([params[name]], lr=rate * config.lr_scale, eps=1e-15, fused=True)
        for name, rate in rates.items()
    }
    for name, corrections in (per_view or {}).items():
        optimizers[name] = torch.optim.Adam([corrections], lr=PER_VIEW_RATES[name](config, 0, Schedule(1)), eps=1e-15,
                                            fused=True)  # fmt: skip
    return optimizers


POSE_WARMUP = 0.2  # fraction of the steps before poses move: the splats first need a shape to align to


def _done(config: TrainConfig, step: int, schedule: Schedule | None = None) -> float:
    """The fraction of the run done before ``step``, in [0, 1], on ``schedule`` (``step / config.steps`` without
    one): what the learning rates decay with."""
    return (schedule or Schedule(config.steps)).done(step)


def pose_learning_rate(config: TrainConfig, step: int, schedule: Schedule | None = None) -> float:
    """0 for the first POSE_WARMUP of the run, then lr_pose -> lr_pose / 100, log-linear."""
    t = _done(config, step, schedule)
    if t < POSE_WARMUP:
        return 0.0
    return config.lr_pose * 0.01 ** ((t - POSE_WARMUP) / (1 - POSE_WARMUP)) * config.lr_scale


def appearance_learning_rate(config: TrainConfig, step: int, schedule: Schedule | None = None) -> float:
    """lr_appearance -> lr_appearance / 100, log-linear over the run."""
    return config.lr_appearance * 0.01 ** _done(config, step, schedule) * config.lr_scale


PER_VIEW_RATES = {"poses": pose_learning_rate, "appearance": appearance_learning_rate}


def means_learning_rate(config: TrainConfig, step: int, scene_scale: float, schedule: Schedule | None = None) -> float:
    """lr_means -> lr_means_final, log-linear over the run (3DGS's get_expon_lr_func without delay)."""
    t = _done(config, step, schedule)
    rate = math.exp((1 - t) * math.log(config.lr_means) + t * math.log(config.lr_means_final))
    return rate * scene_scale * config.lr_scale


RANDOM_INIT_POINTS = {"cuda": 100_000, "cpu": 10_000}  # when TrainConfig.random_init_points is None


def initial_splats(config: TrainConfig, scene: SceneData, device: torch.device = torch.device("cpu")) -> Splats:
    """From the capture's points (3DGS), else random in the cameras' view volume; at most ``max_gaussians``."""
    capture = scene.capture
    limit = config.max_gaussians or math.inf
    if capture.points is not None and len(capture.points) > 0:
        points, colors = capture.points, capture.colors
        if len(points) > limit:
            keep = np.sort(np.random.default_rng(config.seed).choice(len(points), int(limit), replace=False))
            points, colors = points[keep], None if colors is None else colors[keep]
        info(f"initialising {len(points):,} Gaussians from the capture's points")
        splats = splats_from_points(points, colors, config.sh_degree, config.init_opacity)
        if not torch.isfinite(splats.scales).all():  # squared distances beyond float32
            raise InputError(f"{capture.root}: the capture's points reach {np.abs(points).max():.3g}, too far to size "
                             "Gaussians in float32: remove those outliers from its points file (points3D.ply), or "
                             "delete it to start from random Gaussians")
        return splats
    count = config.random_init_points or RANDOM_INIT_POINTS.get(device.type, RANDOM_INIT_POINTS["cpu"])
    num = int(min(count, limit))
    center, radius = view_volume([view.camera for view in scene.train])
    info(f"no points in the capture: {num:,} random Gaussians in the ball the cameras see "
         f"(centre {np.round(center, 3).tolist()}, radius {radius:.3g})")
    return random_splats([view.camera for view in scene.train], num, config.sh_degree, config.seed,
                         config.init_opacity)  # fmt: skip


def _fresh_state(config: TrainConfig, scene: SceneData, device: torch.device) -> TrainState:
    torch.manual_seed(config.seed)  # gsplat's split draws from the global generator
    splats = initial_splats(config, scene, device)
    params = {k: torch.nn.Parameter(v.to(device)) for k, v in splats.parameters().items()}
    scene_scale = camera_extent([view.camera for view in scene.train])
    views = len(scene.train)
    poses = torch.nn.Parameter(torch.zeros(views, 6, device=device)) if config.pose_opt else None
    appearance = torch.nn.Parameter(torch.zeros(views, 3, 4, device=device)) if config.appearance else None
    per_view = {name: p for name, p in (("poses", poses), ("appearance", appearance)) if p is not None}
    return TrainState(
        step=0,
        params=params,
        poses=poses,
        appearance=appearance,
        optimizers=make_optimizers(config, params, scene_scale, per_view),
        strategy_state=_densifier(config).initialize_state(scene_scale=scene_scale),
        generator=torch.Generator().manual_seed(config.seed),
        order=[],
        position=0,
        config=asdict(config),
    )


def _resumed_state(payload: dict, config: TrainConfig, scene: SceneData, device: torch.device) -> TrainState:
    scene_scale = float(payload["strategy_state"]["scene_scale"])
    state = restore_state(payload, device, lambda params, per_view: make_optimizers(config, params, scene_scale,
                                                                                     per_view))  # fmt: skip
    if any(i >= len(scene.train) for i in state.order) or any(len(p) != len(scene.train)
                                                              for p in _per_view(state).values()):  # fmt: skip
        raise InputError(f"the checkpoint was made from a capture with other training views than {scene.capture.root}"
                         ": resume with the capture it was trained on")
    state.config = asdict(config)
    state.schedule = _resumed_schedule(state.schedule, config)
    return state


def _resumed_schedule(saved: Schedule | None, config: TrainConfig) -> Schedule:
    """The checkpoint's schedule where it still holds: under a time budget (which re-plans what is left), or for the
    same number of steps; else the recipe over ``config.steps`` (a run given more steps to train further)."""
    if saved is not None and (config.minutes is not None or saved.steps == config.steps):
        return saved
    return Schedule(config.steps)


# --- the loop --------------------------------------------------------------------------------------------------


def train_step(config: TrainConfig, views: list[View], state: TrainState, densifier: Densifier | Relocator,
               device: torch.device, rig_centre: Tensor | None = None) -> tuple[float, float]:  # fmt: skip
    """One 3DGS step on the next training view; returns (loss, PSNR of that view). ``rig_centre`` [3]: the centre
    pose corrections rotate about (``pose_centre(views)``, computed when not given)."""
    step, params, schedule = state.step, state.params, state.schedule or Schedule(config.steps)
    scene_scale = state.strategy_state["scene_scale"]
    state.optimizers["means"].param_groups[0]["lr"] = means_learning_rate(config, step, scene_scale, schedule)
    index = _next_view(state, len(views))
    view, viewmat = views[index], views[index].viewmat().to(device)
    for name in _per_view(state):
        state.optimizers[name].param_groups[0]["lr"] = PER_VIEW_RATES[name](config, step, schedule)
    if state.poses is not None:
        centre = pose_centre(views, device) if rig_centre is None else rig_centre
        viewmat = corrected_viewmat(viewmat, state.poses[index], centre, scene_scale)
    fixed = parse_background(config.background)
    background = (fixed if fixed is not None else torch.rand(3, generator=state.generator)).to(device)
    target = composite(view, background, device)
    degree = min(config.sh_degree, sh_degree_at(config, step, schedule))
    checked, extremes = _extremes(_trained(state))
    image, alpha, meta = render_tensors(params, viewmat, view.K(), view.camera.width, view.camera.height,
                                        degree, background, config.backend, check_finite=False,
                                        antialiased=config.antialiased, absgrad=config.absgrad)  # fmt: skip
    if state.appearance is not None:
        image = corrected_colors(image, alpha, background, state.appearance[index])
    if config.densify:
        densifier.step_pre_backward(params, state.optimizers, state.strategy_state, step, meta)
    loss = M.photometric_loss(image, target, config.ssim_weight)
    opacity_reg, scale_reg = regularizer_weights(config)
    if opacity_reg:
        loss = loss + opacity_reg * torch.sigmoid(params["opacities"]).mean()
    if scale_reg:
        loss = loss + scale_reg * torch.exp(params["scales"]).mean()
    if config.flatten_reg or config.normal_reg:
        loss = loss + _surface_loss(config, params, viewmat, view, step, schedule)
    loss.backward()
    for optimizer in state.optimizers.values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # zero-mean corrections: the rig stays where the held-out views are, colours mean ones
        for corrections in _per_view(state).values():
            corrections -= corrections.mean(0)
    loss_value, error, *extremes = _read_once(loss, M.mse(image.detach(), target), *extremes)
    for name, value in zip(checked, extremes):
        if not math.isfinite(value):
            raise _diverged(step, f"the {name}", state)
    if not math.isfinite(loss_value):
        raise _diverged(step, "the loss", state)
    if config.densify:
        densifier.step_post_backward(params, state.optimizers, state.strategy_state, step, meta)
    return loss_value, math.inf if error == 0.0 else -10.0 * math.log10(error)


def sh_degree_at(config: TrainConfig, step: int, schedule: Schedule) -> int:
    """The SH degree in use at ``step`` (before the cap at ``sh_degree``): one more every ``sh_degree_interval``
    steps, or every thirtieth of the run when unset (3DGS's 1,000 of 30,000 steps)."""
    if config.sh_degree_interval:
        return step // config.sh_degree_interval
    return int(schedule.done(step) * SH_WARMUP_STAGES + 1e-6)


SH_WARMUP_STAGES = 30  # 3DGS raises the SH degree every 1,000 of its 30,000 steps


def _surface_loss(config: TrainConfig, params: dict, viewmat: Tensor, view: View, step: int,
                  schedule: Schedule) -> Tensor:  # fmt: skip
    """``--surface``'s terms (``reconstruct.surfaces``): flattening from the start, depth-normal consistency after
    ``NORMAL_FROM`` of the steps."""
    from reconstruct import surfaces

    loss = config.flatten_reg * surfaces.flatten_loss(params["scales"])
    if config.normal_reg and schedule.done(step) >= surfaces.NORMAL_FROM:
        loss = loss + config.normal_reg * surfaces.normal_consistency_loss(
            params, viewmat, view.K().to(viewmat.device), view.camera.width, view.camera.height, config.backend,
            config.antialiased)  # fmt: skip
    return loss


def _per_view(state: TrainState) -> dict[str, torch.nn.Parameter]:
    """The training views' corrections being learned: "poses" (pose_opt) and "appearance"."""
    return {name: p for name, p in (("poses", state.poses), ("appearance", state.appearance)) if p is not None}


def _trained(state: TrainState) -> dict[str, torch.Tensor]:
    """Everything the optimizers change: the Gaussians' parameters and the training views' corrections."""
    return {**state.params, **_per_view(state)}


def _extremes(params: dict[str, torch.Tensor]) -> tuple[list[str], list[torch.Tensor]]:
    """0-dim tensors, all finite exactly when the parameters' values are, and the parameter each belongs to: the
    largest magnitude on CUDA (one multi-tensor kernel for all), the minimum and maximum on the CPU (20x faster there
    than the norm: 0.3 ms against 7.6 ms for the parameters of 80k Gaussians). Empty parameters (no SH rest at
    degree 0) are left out: their extremes are undefined."""
    names = [name for name, p in params.items() if p.numel()]
    tensors = [params[name].detach() for name in names]
    if tensors and tensors[0].is_cuda:
        return names, list(torch._foreach_norm(tensors, math.inf))
    return [name for name in names for _ in range(2)], [value for t in tensors for value in torch.aminmax(t)]


def _read_once(*scalars: torch.Tensor) -> list[float]:
    """The values of 0-dim tensors, in one read from the device.

    A step's NaN/Inf guard (``_extremes`` of each parameter as it entered the step) rides on the read of the loss
    and the view's error that the progress display needs anyway: on CUDA every read waits for the queued kernels,
    and each separate check costs kernel launches, which is what a step of a small scene spends its time on. The
    read comes after the optimizer step and before densification; parameters an update made non-finite are caught
    by the next step's read, or by ``_save`` before anything is written.
    """
    return torch.stack(scalars).tolist()


def _next_view(state: TrainState, num_views: int) -> int:
    """Views in a fresh random order each epoch (3DGS's shuffled stack)."""
    if state.position >= len(state.order):
        state.order = torch.randperm(num_views, generator=state.generator).tolist()
        state.position = 0
    state.position += 1
    return state.order[state.position - 1]


def _train(config: TrainConfig, scene: SceneData, state: TrainState, densifier: Densifier | Relocator,
           device: torch.device, work: Path, on_step: Callable[[TrainState], None] | None,
           pace: Pace | None = None) -> None:  # fmt: skip
    """Steps until the schedule's last; checkpoints on schedule, on Ctrl-C and at the end. ``pace``: a time budget,
    which re-plans the schedule (and the densifier's events with it) every few seconds."""
    schedule = state.schedule
    rig_centre = None if state.poses is None else pose_centre(scene.train, device)

    def paced(gaussians: int) -> None:
        pace.stepped(gaussians)
        if pace.due() or state.step == schedule.steps:  # the first call starts the pace's clock
            _replan(pace, schedule, densifier, state.step, gaussians)

    step_loop(state, schedule, work, _save, config.checkpoint_every, _sample_fractions(config),
              step=lambda: train_step(config, scene.train, state, densifier, device, rig_centre),
              sample=lambda: _sample(config, scene, state), out_of_memory=lambda: _out_of_memory(config, state),
              on_step=on_step, after_step=None if pace is None else paced)  # fmt: skip


def step_loop(state: TrainState, schedule: Schedule, work: Path, save: Callable[[TrainState, Path], None],
              checkpoint_every: int, fractions: list[float], step: Callable[[], tuple[float, float]],
              sample: Callable[[], dict], out_of_memory: Callable[[], Exception],
              on_step: Callable[[TrainState], None] | None = None,
              after_step: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """The loop of every splat trainer (3D here, 4D in ``reconstruct.train4d``): ``step()`` (loss, PSNR) until the
    schedule's last step (which ``after_step(gaussians)`` may move), with the progress bar, the training curve,
    ``sample()`` (held-out PSNR) at ``fractions`` of the run, and ``save(state, work)`` every ``checkpoint_every``
    steps, on Ctrl-C (after the step under way) and at the end; ``out_of_memory()`` is the error for a step that
    runs out of memory."""
    window = _Window(max(1, schedule.steps // CURVE_POINTS))
    between_steps = True
    if fractions and state.step == 0:
        state.history.append(sample())  # the starting point of the PSNR-vs-time curve
    with _progress(schedule.steps, state.step) as progress, deferred_interrupt() as interrupted:
        try:
            while state.step < schedule.steps:
                between_steps = False
                tic = time.perf_counter()
                try:
                    loss, step_psnr = step()
                except (MemoryError, RuntimeError) as error:
                    if not _is_out_of_memory(error):
                        raise
                    raise out_of_memory() from None
                state.seconds += time.perf_counter() - tic
                state.step += 1
                between_steps = True
                gaussians = len(state.params["means"])
                progress(state.step, loss, step_psnr, gaussians, schedule.steps)
                window.add(state, loss, step_psnr)
                if on_step is not None:
                    on_step(state)
                if interrupted():
                    raise KeyboardInterrupt
                if any(schedule.crossed(state.step, fraction) for fraction in fractions):
                    state.history.append(sample())
                if checkpoint_every and state.step % checkpoint_every == 0:
                    save(state, work)
                if after_step is not None:
                    after_step(gaussians)
        except KeyboardInterrupt:
            if between_steps:
                save(state, work)
                info(f"interrupted at step {state.step}: checkpoint saved in {checkpoint_path(work)}; "
                     "rerun with --resume to continue")
            raise
    if not state.history or state.history[-1]["step"] != state.step:
        state.history.append(sample())
    save(state, work)


def _replan(pace: Pace, schedule: Schedule, densifier: Densifier | Relocator, step: int, gaussians: int) -> None:
    """The time budget's re-plan: the schedule's steps, the densifier's events on them, and the cap it holds to."""
    if pace.replan(schedule, step, gaussians):
        densifier.follow(schedule)
    if pace.cap is not None:
        densifier.cap = pace.cap


CURVE_POINTS = 300  # points of the training curve (metrics.json's training_curve, training.png)


class _Window:
    """Means of the training loss and PSNR over windows of ``size`` steps, appended to ``state.curve``; a window
    that a resume cuts short is averaged over the steps it saw."""

    def __init__(self, size: int):
        self.size, self.loss, self.psnr, self.count = size, 0.0, 0.0, 0

    def add(self, state: TrainState, loss: float, psnr: float) -> None:
        self.loss, self.psnr, self.count = self.loss + loss, self.psnr + min(psnr, 99.0), self.count + 1
        if state.step % self.size == 0:
            state.curve.append({"step": state.step, "seconds": round(state.seconds, 3),
                                "loss": self.loss / self.count, "psnr": self.psnr / self.count,
                                "num_gaussians": len(state.params["means"])})  # fmt: skip
            self.loss, self.psnr, self.count = 0.0, 0.0, 0


def _save(state: TrainState, work: Path) -> None:
    _check_finite(state)
    save_checkpoint(checkpoint_path(work), state)
    state.saved_step = state.step


def _check_finite(state: TrainState) -> None:
    for name, value in _trained(state).items():
        if not torch.isfinite(value).all():
            raise _diverged(state.step, f"the {name}", state)


def _diverged(step: int, what: str, state: TrainState) -> TrainError:
    if state.saved_step is None:
        return TrainError(f"training diverged at step {step + 1}: {what} became NaN or Inf; rerun with --lr-scale 0.5 "
                          "or --downscale 2")
    return TrainError(f"training diverged at step {step + 1}: {what} became NaN or Inf; the last good checkpoint "
                      f"(step {state.saved_step}) is kept; rerun with --lr-scale 0.5 (with --resume to continue from "
                      "it) or --downscale 2")


def _is_out_of_memory(error: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", MemoryError)  # CUDA's; the CPU allocator raises RuntimeError
    message = str(error).lower()
    return isinstance(error, (MemoryError, oom)) or any(
        text in message for text in ("out of memory", "can't allocate memory", "not enough memory")
    )


def _out_of_memory(config: TrainConfig, state: TrainState) -> TrainError:
    n = len(state.params["means"])
    kept = f"the last checkpoint (step {state.saved_step}) is kept; " if state.saved_step is not None else ""
    return TrainError(f"out of memory at step {state.step + 1} with {n:,} Gaussians; {kept}pass --downscale "
                      f"{config.downscale * 2} or --max-gaussians {max(n // 2, 1)}")


def _sample_fractions(config: TrainConfig) -> list[float]:
    """Where in the run held-out PSNR is sampled: every 1 / psnr_samples of it."""
    return [k / config.psnr_samples for k in range(1, config.psnr_samples + 1)]


@torch.no_grad()
def _sample(config: TrainConfig, scene: SceneData, state: TrainState) -> dict:
    """One PSNR-vs-time sample on up to ``MAX_SAMPLE_VIEWS`` held-out views (training views when none)."""
    splats = Splats.from_parameters(state.params)
    views = (scene.test or scene.train)[:MAX_SAMPLE_VIEWS]
    colors, _ = _eval_colors(state, scene, scene.test or scene.train)
    results = evaluate_views(splats, views, _eval_background(config), config.backend, antialiased=config.antialiased,
                             colors=None if colors is None else colors[:MAX_SAMPLE_VIEWS])  # fmt: skip
    return {
        "step": state.step,
        "seconds": round(state.seconds, 3),
        "psnr": finite_or_none(float(np.mean([r["psnr"] for r in results]))),
        "num_gaussians": len(splats),
    }


def _eval_background(config: TrainConfig) -> torch.Tensor:
    return parse_background(evaluation_background(config.background))


# --- outputs ---------------------------------------------------------------------------------------------------


def _export(config: TrainConfig, scene: SceneData, state: TrainState, work: Path, device: torch.device,
            plan: Plan, started: float) -> dict:  # fmt: skip
    """Evaluate, then write splats.ply, splats.splat, renders/, turntable.mp4 and metrics.json into ``work``."""
    tic = time.perf_counter()
    splats = Splats.from_parameters(state.params)
    views = scene.test or scene.train
    background = _eval_background(config)
    info(f"evaluating on {len(views)} {'held-out' if scene.test else 'training'} views")
    staging = work / ".renders.partial"
    shutil.rmtree(staging, ignore_errors=True)
    colors, color_rule = _eval_colors(state, scene, views)
    per_view = evaluate_views(splats, views, background, config.backend, with_lpips=True, with_depth=True,
                              antialiased=config.antialiased, renders_dir=staging, colors=colors)  # fmt: skip
    replace_dir(staging, work / "renders")
    if config.turntable_frames > 0:
        info("rendering the turntable video")
        write_turntable(splats, [v.camera for v in scene.train], work / "turntable.mp4", config.turntable_frames,
                        background=background, backend=config.backend, antialiased=config.antialiased)  # fmt: skip
    splats_cpu = splats.to("cpu")
    write_ply(work / "splats.ply", splats_cpu)
    write_splat(work / "splats.splat", splats_cpu)
    report = {
        **summarize(per_view),
        "num_gaussians": len(splats),
        "steps": state.step,
        "seconds": round(state.seconds, 3),
        "evaluation_seconds": round(time.perf_counter() - tic, 3),
        "evaluated_on": evaluated_on(scene),
        "test_views": [view.name for view in scene.test],
        "per_view": per_view_json(per_view),
        "psnr_vs_time": state.history,
        "training_curve": state.curve,
        "pose_corrections": None if state.poses is None else pose_report(state.poses, scene.train,
                                                                         state.strategy_state["scene_scale"]),
        "color_corrections": None if state.appearance is None else color_report(state.appearance, scene.train,
                                                                                   color_rule),
        "pose_aligned": pose_aligned_metrics(splats, scene, views, background, config.backend, config.antialiased,
                                             colors) if state.poses is not None and scene.test else None,
        "image_size": [views[0].camera.width, views[0].camera.height],
        "plan": plan.as_dict(),
        "wall_seconds": round(time.monotonic() - started, 3),
        "device": str(device),
        "capture": str(scene.capture.root),
        "config": asdict(config),
    }
    write_json(work / "metrics.json", report)
    write_training_plot(report, work / "training.png")
    return report


def _eval_colors(state: TrainState, scene: SceneData, views: list[View]) -> tuple[list[Tensor] | None, dict]:
    """Colour corrections for evaluating ``views`` (``evaluate.eval_colors``); (None, {}) without appearance."""
    if state.appearance is None:
        return None, {}
    return eval_colors(dict(zip([view.name for view in scene.train], state.appearance.detach())), scene, views)


def _print_summary(report: dict, out_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"train → {out_dir}", show_header=False, title_justify="left")
    psnr = "n/a" if report["psnr"] is None else f"{report['psnr']:.2f} dB"
    corrected = "" if report.get("cc_psnr") is None else f" ({report['cc_psnr']:.2f} dB colour-corrected)"
    table.add_row(f"PSNR / SSIM ({report['evaluated_on'].split(' ')[0]})", f"{psnr} / {report['ssim']:.4f}{corrected}")
    if report.get("pose_aligned"):
        table.add_row(*pose_aligned_row(report["pose_aligned"]))
    if report.get("depth_abs_rel") is not None:
        table.add_row("depth error (AbsRel)", f"{100 * report['depth_abs_rel']:.2f}% against the capture's depth maps")
    config, pose = report["config"], report.get("pose_corrections")
    options = [name for name in ("antialiased", "absgrad") if config.get(name)]
    if pose:
        options.append(f"pose-opt (cameras turned {pose['mean_rotation_deg']:.2f}° and moved {pose['mean_shift']:.3g} "
                       "on average)")
    colors = report.get("color_corrections")
    if colors:
        held_out = "their neighbours'" if colors["held_out"].startswith("interpolated") else "the mean colours"
        options.append(f"appearance (exposure gains {colors['min_gain']:.2f}-{colors['max_gain']:.2f} over the views; "
                       f"evaluated in {held_out})")
    if options:
        table.add_row("options", ", ".join(options))
    table.add_row("Gaussians", f"{report['num_gaussians']:,}")
    table.add_row("steps", f"{report['steps']:,} in {report['seconds']:.1f} s on {report['device']}")
    minutes = report["plan"]["minutes"]
    budget = f" (budget {minutes:g} min)" if minutes is not None else ""
    table.add_row("time", f"{_clock(report['wall_seconds'])} from start to metrics.json{budget}; estimated "
                  f"{_clock(report['plan']['estimated_seconds'])}")
    table.add_row("outputs", "splats.ply, splats.splat, metrics.json, training.png, renders/"
                  + (", turntable.mp4" if (out_dir / "turntable.mp4").is_file() else ""))
    console.print(table)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


# --- console and signals ---------------------------------------------------------------------------------------


@contextmanager
def _progress(total: int, start: int) -> Iterator[Callable[[int, float, float, int, int], None]]:
    """A rich progress bar (loss, PSNR, #Gaussians, ETA); plain lines every 10% when stderr is not a terminal.
    ``update(step, loss, psnr, gaussians, total)``: the total may change (a time budget re-plans it)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  PSNR {task.fields[psnr]:.2f} dB  {task.fields[gaussians]:,} splats"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    smooth = {"loss": math.nan, "psnr": math.nan, "tenth": 10 * start // max(total, 1)}
    terminal = console.is_terminal
    with Progress(*columns, console=console, transient=False, disable=not terminal) as bar:
        task = bar.add_task("training", total=total, completed=start, loss=0.0, psnr=0.0, gaussians=0)

        def update(step: int, loss: float, step_psnr: float, gaussians: int, total: int = total) -> None:
            for key, value in (("loss", loss), ("psnr", min(step_psnr, 99.0))):
                smooth[key] = value if math.isnan(smooth[key]) else 0.9 * smooth[key] + 0.1 * value
            bar.update(task, completed=step, total=total, loss=smooth["loss"], psnr=smooth["psnr"],
                       gaussians=gaussians)  # fmt: skip
            tenth = 10 * step // max(total, 1)
            if not terminal and (tenth > smooth["tenth"] or step == total):
                smooth["tenth"] = tenth
                info(f"step {step}/{total}: loss {smooth['loss']:.4f}, PSNR {smooth['psnr']:.2f} dB, "
                     f"{gaussians:,} Gaussians")

        yield update
