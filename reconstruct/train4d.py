"""The 4D reconstruct stage: a capture with times in, a time-varying Gaussian scene out (``orbit4d video-to-4d``).

The model is ``reconstruct.splats4d``'s: canonical Gaussians plus, per Gaussian, a trajectory over a smooth basis
(a cubic B-spline by default), rotation offsets and a lifespan (opacity over time). Each step renders one training
view at its time with the 3D rasterizer (gsplat on CUDA, the numba rasterizer on the CPU) and takes 3DGS's loss, plus
a temporal smoothness term: the mean squared second difference of every Gaussian's position and rotation over the
capture's frame times (an acceleration penalty, in units of the scene size), so that the motion the few views leave
open is the smoothest one. Everything else is the 3D trainer's (``reconstruct.train``): learning rates, SH warm-up,
densification (the motion parameters are cloned, split and pruned with their Gaussians by gsplat's ops), checkpoints
and ``--resume``, the ``.partial`` folder renamed into place when the scene is complete.

Output folder (``scene/``)::

    splats4d.ply        the 4D scene (``reconstruct.splats4d``'s format), what the viewer plays
    sequence/           frame_0000.ply ...: one standard 3DGS .ply per time step (SuperSplat, Brush, Blender)
    metrics.json        held-out PSNR / SSIM over all time steps and per time step, the motion's jitter, settings
    renders/            ground truth | render | depth, per held-out view
    playback.mp4        the scene playing while the camera orbits it
    training.png        PSNR, loss and Gaussians over the run
    checkpoint/         to resume or extend training
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from multiview.console import info, warn
from multiview.errors import InputError
from multiview.outputs import checked_out_dir, output_lock, replace_dir
from reconstruct import metrics as M
from reconstruct import train as train3d
from reconstruct.schedule import Schedule
from reconstruct.checkpoint import TrainState, checkpoint_path, read_checkpoint, restore_state, save_checkpoint
from reconstruct.data import SceneData
from reconstruct.data4d import SceneData4D, load_scene4d
from reconstruct.evaluate import composite, parse_background
from reconstruct.rasterize import rasterize
from reconstruct.splats import camera_extent
from reconstruct.splats4d import BASES, MOTION_NAMES, Splats4D, basis_weights, gaussians_at, static_splats4d
from reconstruct.strategy import Densifier, Relocator, default_strategy

CHECKPOINT_KIND = "orbit4d-splat4d-training"


@dataclass(frozen=True)
class Train4DConfig:
    """Everything ``orbit4d video-to-4d`` can be told about training."""

    steps: int = 6_000
    """Optimisation steps, one training view (a camera at a time) each."""
    basis: str = "bspline"
    """Motion basis (``reconstruct.splats4d``): bspline (a uniform cubic B-spline per Gaussian) or poly (powers of
    time, as SpacetimeGaussians)."""
    motion_points: int | None = None
    """Position coefficients per Gaussian (B-spline control points, or polynomial degree); None: a third of the time
    steps, 4 to 16."""
    rotation_points: int | None = None
    """Rotation coefficients per Gaussian; None: half the position ones, 4 to 8 (at least 4 for a B-spline)."""
    lifespans: bool = True
    """Learn each Gaussian's opacity over time (a temporal Gaussian), so that things can appear and disappear."""
    smoothness: float = 1.0
    """Weight of the temporal smoothness term: mean squared second difference of positions (in units of the scene
    size, per frame) and rotations over the frame times."""
    lr_motion: float = 1.6e-3
    """Initial learning rate of the position coefficients, times the scene scale; decays as the means' (x 0.01).
    Ten times the means' rate: on the Fox rig, 32.8 dB held-out against 29.7 dB at the means' rate (3,000 steps)."""
    lr_rotation: float = 1e-3
    """Learning rate of the rotation coefficients."""
    lr_lifespan: float = 1e-2
    """Learning rate of the lifespans (peak time and fall-off rate)."""
    sh_degree: int = 3
    """Highest spherical-harmonics degree of the colours."""
    ssim_weight: float = 0.2
    """Weight of D-SSIM in the loss."""
    densify: bool = True
    """Clone, split and prune Gaussians (3DGS's strategy, scaled to the steps)."""
    max_gaussians: int | None = None
    """Cap on the number of Gaussians; None: none."""
    random_init_points: int | None = None
    """Gaussians of the random initialisation when the capture has no points3D.ply; None: as 3D training (100k on
    CUDA, 10k on the CPU)."""
    background: str = "random"
    """Background behind the splats and masked-out pixels while training: random, black, white or #rrggbb;
    evaluation uses it when fixed, white when random."""
    downscale: int = 1
    """Divide image width and height by this once at load."""
    test_camera: int | None = None
    """The camera held out for evaluation when the capture has several; None: the highest camera id."""
    test_every: int = 8
    """One camera only: hold out every n-th time step (from the second); 0: none."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    backend: str = "auto"
    """Rasterizer: auto (gsplat on CUDA, numba on the CPU), torch, numba or gsplat."""
    allow_outside_paths: bool = False
    """Read files the capture's transforms.json names outside its folder (refused otherwise)."""
    seed: int = 0
    """Seed of the initialisation, the view order, random backgrounds and densification."""
    checkpoint_every: int = 1000
    """Save a checkpoint every this many steps (and at the end, and on Ctrl-C); 0: only then."""
    psnr_samples: int = 10
    """Times during training that held-out PSNR is measured; 0: none."""
    video_frames: int = 96
    """Frames of playback.mp4 (24 fps: the scene playing while the camera orbits once); 0: no video."""

    def validate(self) -> None:
        """InputError naming the option for values training cannot use."""
        if self.basis not in BASES:
            raise InputError(f"--motion {self.basis}: use one of {', '.join(BASES)}")
        for name in ("motion_points", "rotation_points"):
            value = getattr(self, name)
            least = 4 if self.basis == "bspline" else 1
            if value is not None and not least <= value <= 64:
                raise InputError(f"--{name.replace('_', '-')} {value}: use {least} to 64 for the {self.basis} basis")
        if not (self.smoothness >= 0 and math.isfinite(self.smoothness)):
            raise InputError(f"--smoothness {self.smoothness}: use 0 (none) or a positive weight")
        if self.video_frames < 0 or self.checkpoint_every < 0 or self.psnr_samples < 0:
            raise InputError("video frames, checkpoint interval and PSNR samples must be 0 or more")
        self.as_3d().validate()

    def as_3d(self) -> train3d.TrainConfig:
        """The 3D trainer's config for the shared parts (learning rates, densification, initialisation, devices)."""
        shared = {f.name for f in fields(train3d.TrainConfig)} & {f.name for f in fields(self)}
        return train3d.TrainConfig(**{name: getattr(self, name) for name in shared})

    def coefficient_counts(self, num_times: int) -> tuple[int, int]:
        """(position, rotation) coefficients per Gaussian for ``num_times`` time steps."""
        motion = self.motion_points or min(max(round(num_times / 3), 4), 16)
        rotation = self.rotation_points or min(max(round(motion / 2), 4), 8)
        return motion, rotation


# What a resumed run may change (the rest comes from the checkpoint).
_RUN_CONTROL = ("steps", "device", "backend", "downscale", "max_gaussians", "checkpoint_every", "psnr_samples",
                "video_frames", "allow_outside_paths")  # fmt: skip


def run(config: Train4DConfig, capture_dir: Path, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
        on_step: Callable[[TrainState], None] | None = None) -> Path:  # fmt: skip
    """Train 4D splats on the capture with times at ``capture_dir``; write the scene to ``out_dir``; return it.

    ``resume``: continue from the checkpoint of an interrupted run (``out_dir``'s ``.partial`` sibling) or of the
    finished scene (trained further beside it, and replacing it once complete); its settings win, except
    ``_RUN_CONTROL``'s. ``on_step(state)`` runs after every step (a KeyboardInterrupt there stops like Ctrl-C).
    """
    from reconstruct.evaluate4d import print_summary

    config.validate()
    out_dir = Path(out_dir).absolute()
    checked_out_dir(out_dir, [capture_dir])
    with output_lock(out_dir):  # one run per scene, as 3D training
        report = _run_locked(config, capture_dir, out_dir, resume, overwrite, on_step)
    print_summary(report, out_dir)
    return out_dir


def _run_locked(config: Train4DConfig, capture_dir: Path, out_dir: Path, resume: bool, overwrite: bool,
                on_step: Callable[[TrainState], None] | None) -> dict:  # fmt: skip
    """``run`` while holding ``out_dir``'s lock; returns the scene's report."""
    from reconstruct.evaluate4d import export_scene

    work, resume_from = train3d._work_dir(out_dir, capture_dir, resume, overwrite)
    payload = read_checkpoint(checkpoint_path(resume_from), CHECKPOINT_KIND) if resume_from is not None else None
    if payload is not None:
        config = _resumed_config(payload["config"], config)
        if payload["step"] > config.steps:
            raise InputError(f"{checkpoint_path(resume_from)} is at step {payload['step']}, beyond --steps "
                             f"{config.steps}: pass a larger --steps")
    device = train3d._device(config.as_3d())
    scene = load_scene4d(capture_dir, config.downscale, config.test_camera, config.test_every,
                         config.allow_outside_paths)  # fmt: skip
    info(f"4D capture: {len(scene.times)} time steps, {len(scene.cameras)} camera(s), {len(scene.train)} training "
         f"and {len(scene.test)} held-out views ({scene.evaluated_on()})")
    if payload is not None:
        state = _resumed_state(payload, config, scene, device)
        info(f"resuming {resume_from} at step {state.step} of {config.steps}")
    else:
        state = fresh_state(config, scene, device)
    if work != resume_from:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if resume_from == out_dir:
            (work / train3d.EXTENDS_SCENE).touch()
    clean = False
    try:
        train_loop(config, scene, state, device, work, on_step)
        report = export_scene(config, scene, state, work)
        clean = True
    finally:
        if not clean and not checkpoint_path(work).is_file():
            shutil.rmtree(work, ignore_errors=True)
    if (work / train3d.EXTENDS_SCENE).is_file():
        (work / train3d.EXTENDS_SCENE).unlink()
        for entry in out_dir.iterdir() if out_dir.is_dir() else ():
            if not (work / entry.name).exists():
                os.replace(entry, work / entry.name)
    replace_dir(work, out_dir)
    return report


def saved_config(out_dir: Path) -> Train4DConfig | None:
    """The config of the checkpoint ``--resume`` would continue for ``out_dir``, or None."""
    out_dir = Path(out_dir).absolute()
    for folder in (out_dir.parent / f".{out_dir.name}.partial", out_dir):
        if checkpoint_path(folder).is_file():
            return _config_from_dict(read_checkpoint(checkpoint_path(folder), CHECKPOINT_KIND)["config"])
    return None


def _config_from_dict(saved: dict) -> Train4DConfig:
    names = {f.name for f in fields(Train4DConfig)}
    return Train4DConfig(**{k: v for k, v in saved.items() if k in names})


def _resumed_config(saved: dict, given: Train4DConfig) -> Train4DConfig:
    base = _config_from_dict(saved)
    ignored = [f.name for f in fields(Train4DConfig)
               if f.name not in _RUN_CONTROL and getattr(given, f.name) != getattr(base, f.name)]  # fmt: skip
    if ignored:
        warn("--resume keeps the checkpoint's settings; ignoring "
             + ", ".join(f"{name}={getattr(given, name)!r}" for name in ignored))
    return replace(base, **{name: getattr(given, name) for name in _RUN_CONTROL})


# --- state -------------------------------------------------------------------------------------------------------


def make_optimizers(config: Train4DConfig, params: dict, scene_scale: float) -> dict[str, torch.optim.Adam]:
    """The 3D trainer's Adam per canonical parameter, and one per motion parameter (``MOTION_NAMES``)."""
    optimizers = train3d.make_optimizers(config.as_3d(), params, scene_scale)
    rates = {"motion": config.lr_motion * scene_scale, "drot": config.lr_rotation, "t_center": config.lr_lifespan,
             "t_rate": config.lr_lifespan * 10 if config.lifespans else 0.0}  # fmt: skip
    for name, rate in rates.items():
        optimizers[name] = torch.optim.Adam([params[name]], lr=rate, eps=1e-15, fused=True)
    if not config.lifespans:
        optimizers["t_center"].param_groups[0]["lr"] = 0.0
    return optimizers


def fresh_state(config: Train4DConfig, scene: SceneData4D, device: torch.device) -> TrainState:
    """Canonical Gaussians as 3D training starts them (capture points, else random in the view volume), standing
    still at every time; fresh optimizers and densification state."""
    torch.manual_seed(config.seed)
    shell = _as_3d_scene(scene)
    splats = train3d.initial_splats(config.as_3d(), shell, device)
    motion, rotation = config.coefficient_counts(len(scene.times))
    start = static_splats4d(splats, scene.times, config.basis, motion, rotation)
    params = {name: torch.nn.Parameter(value.to(device)) for name, value in start.tensors().items()}
    scene_scale = camera_extent([view.camera for view in scene.train])
    return TrainState(
        step=0,
        params=params,
        optimizers=make_optimizers(config, params, scene_scale),
        strategy_state=densifier_for(config).initialize_state(scene_scale=scene_scale),
        generator=torch.Generator().manual_seed(config.seed),
        order=[],
        position=0,
        config=asdict(config),
    )


def _as_3d_scene(scene: SceneData4D) -> SceneData:
    return SceneData(scene.capture, scene.train, scene.test)


def _resumed_state(payload: dict, config: Train4DConfig, scene: SceneData4D, device: torch.device) -> TrainState:
    scene_scale = float(payload["strategy_state"]["scene_scale"])
    state = restore_state(payload, device, lambda params, per_view: make_optimizers(config, params, scene_scale))
    if any(i >= len(scene.train) for i in state.order):
        raise InputError(f"the checkpoint was made from a capture with other training views than {scene.capture.root}"
                         ": resume with the capture it was trained on")
    state.config = asdict(config)
    return state


def densifier_for(config: Train4DConfig) -> Densifier | Relocator:
    """3DGS's clone / split / prune scaled to the steps (all parameters, motion included, follow their Gaussian)."""
    strategy = default_strategy(config.steps)
    if not config.densify:
        strategy.refine_stop_iter = 0
    return Densifier(strategy, config.max_gaussians)


def splats4d_of(state: TrainState, scene: SceneData4D, config: Train4DConfig) -> Splats4D:
    """The state's Gaussians as a ``Splats4D`` (detached copies)."""
    return Splats4D.from_parameters(state.params, scene.times, config.basis)


# --- the loop ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothnessTables:
    """Second differences over the frame times of each basis function: [T-2, M] positions, [T-2, R] rotations."""

    motion: Tensor
    rotation: Tensor

    @classmethod
    def for_scene(cls, basis: str, counts: tuple[int, int], times: np.ndarray, device: torch.device):
        u = torch.as_tensor((times - times[0]) / (times[-1] - times[0]), dtype=torch.float32)
        tables = []
        for count in counts:
            w = basis_weights(basis, count, u)  # [T, count]
            tables.append((w[2:] - 2 * w[1:-1] + w[:-2]).to(device))
        return cls(*tables)


def smoothness_penalty(params: dict[str, Tensor], tables: SmoothnessTables, scene_scale: float) -> Tensor:
    """Mean squared second difference over the frame times of positions (in scene-scale units) and rotations."""
    if tables.motion.shape[0] == 0:
        return params["motion"].sum() * 0.0
    acceleration = torch.einsum("tm,nmk->tnk", tables.motion, params["motion"]) / scene_scale
    turning = torch.einsum("tr,nrk->tnk", tables.rotation, params["drot"])
    return (acceleration**2).sum(-1).mean() + (turning**2).sum(-1).mean()


def train_loop(config: Train4DConfig, scene: SceneData4D, state: TrainState, device: torch.device, work: Path,
               on_step: Callable[[TrainState], None] | None = None) -> None:  # fmt: skip
    """Steps until ``config.steps``; checkpoints on schedule, on Ctrl-C and at the end."""
    from reconstruct.evaluate4d import sample_psnr

    densifier = densifier_for(config)
    tables = SmoothnessTables.for_scene(config.basis, (state.params["motion"].shape[1], state.params["drot"].shape[1]),
                                        scene.times, device)  # fmt: skip
    train3d.step_loop(state, Schedule(config.steps), work, _save, config.checkpoint_every,
                      train3d._sample_fractions(config.as_3d()),
                      step=lambda: train_step(config, scene, state, densifier, device, tables),
                      sample=lambda: sample_psnr(config, scene, state),
                      out_of_memory=lambda: train3d._out_of_memory(config.as_3d(), state), on_step=on_step)  # fmt: skip


def _save(state: TrainState, work: Path) -> None:
    for name, value in state.params.items():
        if not torch.isfinite(value).all():
            raise train3d._diverged(state.step, f"the {name}", state)
    save_checkpoint(checkpoint_path(work), state, CHECKPOINT_KIND)
    state.saved_step = state.step


def render_at(params: dict[str, Tensor], basis: str, u: float, viewmat: Tensor, K: Tensor, width: int, height: int,
              sh_degree: int, background: Tensor | None, backend: str = "auto",
              check_finite: bool = True) -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    """One view of 4D parameters at normalised time ``u``: [H, W, 3] colour, [H, W, 1] alpha, the rasterizer's meta;
    differentiable in every parameter."""
    device = params["means"].device
    state = gaussians_at(params, basis, u)
    image, alpha, meta = rasterize(
        state["means"], state["quats"], torch.exp(state["scales"]), state["opacity"],
        torch.cat([params["sh0"], params["shN"]], dim=1), viewmat.to(device)[None], K.to(device)[None], width, height,
        sh_degree=sh_degree, backgrounds=None if background is None else background.to(device)[None],
        backend=backend, check_finite=check_finite,
    )  # fmt: skip
    return image[0], alpha[0], meta


def train_step(config: Train4DConfig, scene: SceneData4D, state: TrainState, densifier: Densifier | Relocator,
               device: torch.device, tables: SmoothnessTables) -> tuple[float, float]:  # fmt: skip
    """One step on the next training view at its time; returns (loss, PSNR of that view)."""
    step, params = state.step, state.params
    scene_scale = state.strategy_state["scene_scale"]
    base = config.as_3d()
    decay = train3d.means_learning_rate(base, step, scene_scale) / (base.lr_means * scene_scale)
    state.optimizers["means"].param_groups[0]["lr"] = base.lr_means * scene_scale * decay
    state.optimizers["motion"].param_groups[0]["lr"] = config.lr_motion * scene_scale * decay
    index = train3d._next_view(state, len(scene.train))
    view = scene.train[index]
    fixed = parse_background(config.background)
    background = (fixed if fixed is not None else torch.rand(3, generator=state.generator)).to(device)
    target = composite(view, background, device)
    interval = max(1, round(1000 * config.steps / 30_000))
    degree = min(config.sh_degree, step // interval)
    image, _, meta = render_at(params, config.basis, scene.normalized_time(view), view.viewmat(), view.K(),
                               view.camera.width, view.camera.height, degree, background, config.backend,
                               check_finite=False)  # fmt: skip
    if config.densify:
        densifier.step_pre_backward(params, state.optimizers, state.strategy_state, step, meta)
    loss = M.photometric_loss(image, target, config.ssim_weight)
    if config.smoothness > 0:
        loss = loss + config.smoothness * smoothness_penalty(params, tables, scene_scale)
    loss.backward()
    for optimizer in state.optimizers.values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        params["t_rate"].clamp_(min=0.0)
    loss_value, error = train3d._read_once(loss, M.mse(image.detach(), target))
    if not math.isfinite(loss_value):
        raise train3d._diverged(step, "the loss", state)
    if config.densify:
        densifier.step_post_backward(params, state.optimizers, state.strategy_state, step, meta)
    return loss_value, math.inf if error == 0.0 else -10.0 * math.log10(error)


__all__ = ["MOTION_NAMES", "Train4DConfig", "render_at", "run", "smoothness_penalty", "train_step"]
