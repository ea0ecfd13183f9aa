"""Rendering trained splats for people: held-out metrics, side-by-side images with depth, a turntable video; and the
``orbit4d eval`` stage (``run``), which measures any 3DGS ``.ply`` on a capture's held-out views."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from multiview.camera import Camera
from multiview.console import console, info, warn
from multiview.errors import InputError
from multiview.outputs import write_json
from reconstruct.corrections import (
    corrected_colors,
    corrected_viewmat,
    corrections_from_report,
    held_out_colors,
    pose_centre,
    pose_report,
)
from reconstruct.data import SceneData, View, load_scene
from reconstruct.metrics import color_corrected, depth_abs_rel, lpips, lpips_status, psnr, ssim
from reconstruct.rasterize import rasterize
from reconstruct.ply import read_ply
from reconstruct.splats import Splats, view_volume


@dataclass(frozen=True)
class EvalConfig:
    """What ``orbit4d eval`` can be told: the split and resolution the splats were trained with, and how to render."""

    downscale: int = 1
    """Divide image width and height by this once at load, as training did."""
    test_every: int = 8
    """The held-out views: every n-th (sorted by name, from the first), as training held them out; 0: every view."""
    background: str = "white"
    """Colour behind the splats and masked-out pixels: black, white or #rrggbb."""
    antialiased: bool = False
    """Rasterize antialiased, for splats trained so (``--antialiased``)."""
    backend: str = "auto"
    """Rasterizer (``rasterize``'s ``backend``)."""
    align_poses: bool = False
    """Also measure the views with their poses fitted to the splats (``align_poses``), as for splats trained with
    ``pose_opt``: metrics.json's "pose_aligned", beside the plain metrics."""
    allow_outside_paths: bool = False
    """Read files the capture's transforms.json names outside the capture's folder (refused otherwise)."""


@dataclass(frozen=True)
class TrainedScene:
    """What a scene's metrics.json (``orbit4d train``'s) says that measuring it again needs."""

    capture: Path | None
    """The capture it was trained on."""
    config: EvalConfig
    """Its resolution, split, background (white when training's was random) and rasterization."""
    color_corrections: dict[str, Tensor] | None
    """Its training views' colour corrections by name (``appearance``), else None."""


def read_trained_scene(scene_dir: Path) -> TrainedScene:
    """``TrainedScene`` from ``scene_dir``/metrics.json; everything unknown (no metrics.json) at EvalConfig's
    defaults. InputError when the file is unreadable."""
    path = Path(scene_dir) / "metrics.json"
    trained: object = {}
    if path.is_file():
        try:
            trained = json.loads(path.read_text())
        except (OSError, ValueError):
            trained = None
    if not isinstance(trained, dict):
        raise InputError(f"{path} is not a scene's metrics (readable JSON, an object): pass --capture and the "
                         "settings the scene was trained with")
    settings = trained.get("config", {})
    config = EvalConfig(downscale=settings.get("downscale", 1), test_every=settings.get("test_every", 8),
                        background=evaluation_background(settings.get("background", "white")),
                        antialiased=bool(settings.get("antialiased", False)),
                        align_poses=bool(settings.get("pose_opt", False)))  # fmt: skip
    colors = trained.get("color_corrections")
    corrections = corrections_from_report(colors) if colors else None
    capture = Path(trained["capture"]) if "capture" in trained else None
    return TrainedScene(capture=capture, config=config, color_corrections=corrections)


def run(config: EvalConfig, splats_path: Path, capture_dir: Path, out_dir: Path,
        color_corrections: Mapping[str, Tensor] | None = None) -> Path:  # fmt: skip
    """Measure the splats of ``splats_path`` (a 3DGS ``.ply``: orbit4d's, gsplat's, the reference 3DGS code's, in the
    capture's world frame) on the held-out views of ``capture_dir``: ``out_dir``/metrics.json (the keys and meaning of
    ``orbit4d train``'s: PSNR, SSIM, cc_psnr, LPIPS, depth error, per view) and ``out_dir``/renders/. Returns
    ``out_dir``.

    ``color_corrections``: the [3, 4] colour correction of each training view by name, for splats trained with
    ``appearance``; the held-out views get theirs as training evaluated them (``held_out_colors``)."""
    if config.test_every < 0:
        raise InputError(f"--test-every {config.test_every}: use 0 to evaluate on every view, or N for every N-th")
    background = parse_background(config.background)
    if background is None:
        raise InputError("--background random: evaluation renders on one colour: use white, black or #rrggbb")
    splats = read_ply(splats_path)
    if len(splats) == 0:
        raise InputError(f"{splats_path} holds no Gaussians: there is nothing to evaluate")
    # every view held out is a valid split to measure another tool's splats on: evaluate on them all
    scene = load_scene(capture_dir, config.downscale, 0 if config.test_every == 1 else config.test_every,
                       config.allow_outside_paths)  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() and config.backend in ("auto", "gsplat") else "cpu")
    views = scene.test or scene.train
    which = "" if config.test_every == 1 else " held-out" if scene.test else " training"
    info(f"evaluating {len(splats):,} Gaussians on {len(views)}{which} views")
    tic = time.perf_counter()
    colors, color_rule = eval_colors(color_corrections, scene, views)
    per_view = evaluate_views(splats.to(device), views, background, config.backend, with_lpips=True, with_depth=True,
                              antialiased=config.antialiased, renders_dir=Path(out_dir) / "renders",
                              colors=colors)  # fmt: skip
    report = {
        **summarize(per_view),
        "num_gaussians": len(splats),
        "sh_degree": splats.sh_degree,
        "evaluation_seconds": round(time.perf_counter() - tic, 3),
        "evaluated_on": evaluated_on(scene, every_view=config.test_every == 1),
        "test_views": [view.name for view in views] if config.test_every == 1 else [view.name for view in scene.test],
        "per_view": per_view_json(per_view),
        "image_size": [views[0].camera.width, views[0].camera.height],
        "color_corrections": color_rule or None,
        "pose_aligned": pose_aligned_metrics(splats.to(device), scene, views, background, config.backend,
                                             config.antialiased, colors) if config.align_poses else None,
        "device": str(device),
        "splats": str(Path(splats_path).absolute()),
        "capture": str(scene.capture.root),
        "config": asdict(config),
    }
    write_json(Path(out_dir) / "metrics.json", report)
    return Path(out_dir)


def eval_colors(corrections: Mapping[str, Tensor] | None, scene: SceneData,
                 views: Sequence[View]) -> tuple[list[Tensor] | None, dict]:  # fmt: skip
    """(colour correction per view of ``views`` or None, how they were chosen) from the training views' named
    ``corrections``; (None, {}) without; the mean colours, with a warning, when they name other training views."""
    if not corrections:
        return None, {}
    names = [view.name for view in scene.train]
    if sorted(corrections) != sorted(names):
        warn(f"the scene's colour corrections are for other training views than {scene.capture.root}'s (another "
             "capture or split): evaluating in the mean colours")
        return None, {"held_out": "mean colours (the corrections' views are not this capture's training views)"}
    stacked = torch.stack([torch.as_tensor(corrections[name], dtype=torch.float32) for name in names])
    if views is scene.train:
        return list(stacked), {"held_out": "evaluated on the training views, with their own"}
    centres = [np.stack([view.camera.center for view in group]) for group in (scene.train, views)]
    return held_out_colors(centres[0], stacked, centres[1])


def print_summary(report: Mapping, out_dir: Path) -> None:
    """The table ``orbit4d eval`` ends with, from its metrics.json ``report``."""
    from rich.table import Table

    table = Table(title=f"eval → {out_dir}", show_header=False, title_justify="left")
    psnr_text = "n/a" if report["psnr"] is None else f"{report['psnr']:.2f} dB"
    corrected = "" if report["cc_psnr"] is None else f" ({report['cc_psnr']:.2f} dB colour-corrected)"
    table.add_row(f"PSNR / SSIM ({report['evaluated_on'].split(' ')[0]})",
                  f"{psnr_text} / {report['ssim']:.4f}{corrected}")  # fmt: skip
    if report["lpips"] is not None:
        table.add_row("LPIPS", f"{report['lpips']:.4f}")
    if report.get("pose_aligned"):
        table.add_row(*pose_aligned_row(report["pose_aligned"]))
    if report["depth_abs_rel"] is not None:
        table.add_row("depth error (AbsRel)", f"{100 * report['depth_abs_rel']:.2f}% against the capture's depth maps")
    table.add_row("Gaussians", f"{report['num_gaussians']:,} (SH degree {report['sh_degree']})")
    table.add_row("views", f"{len(report['per_view'])} at {report['image_size'][0]}×{report['image_size'][1]}")
    table.add_row("outputs", "metrics.json, renders/ (photo | render | depth)")
    console.print(table)


def pose_aligned_row(aligned: Mapping) -> tuple[str, str]:
    """The summary tables' row for metrics.json's "pose_aligned"."""
    psnr = "n/a" if aligned["psnr"] is None else f"{aligned['psnr']:.2f} dB"
    return ("PSNR / SSIM, poses aligned", f"{psnr} / {aligned['ssim']:.4f} (cameras turned "
            f"{aligned['mean_rotation_deg']:.2f}° and moved {aligned['mean_shift']:.3g} on average)")


def render_tensors(
    tensors: Mapping[str, Tensor],  # Splats.tensors() or the training parameters
    viewmat: Tensor,  # [4, 4] cam_from_world
    K: Tensor,  # [3, 3] Camera.K convention
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor | None = None,  # [3]
    backend: str = "auto",
    check_finite: bool = True,
    render_mode: str = "RGB",
    antialiased: bool = False,
    absgrad: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """One view of the splats: ([H, W, X] colour (and depth, per ``render_mode``), [H, W, 1] alpha, rasterizer
    meta); differentiable. ``antialiased``: ``rasterize_mode="antialiased"``; ``absgrad``: the backward pass sets
    ``meta["means2d"].absgrad`` (``rasterize``)."""
    device = tensors["means"].device
    colors = torch.cat([tensors["sh0"], tensors["shN"]], dim=1)
    image, alpha, meta = rasterize(
        tensors["means"],
        tensors["quats"],
        torch.exp(tensors["scales"]),
        torch.sigmoid(tensors["opacities"]),
        colors,
        viewmat.to(device)[None],
        K.to(device)[None],
        width,
        height,
        sh_degree=sh_degree,
        backgrounds=None if background is None else background.to(device)[None],
        backend=backend,
        check_finite=check_finite,
        render_mode=render_mode,
        rasterize_mode="antialiased" if antialiased else "classic",
        absgrad=absgrad,
    )
    return image[0], alpha[0], meta


@torch.no_grad()
def render_camera(
    splats: Splats, camera: Camera, background: Tensor | None = None, backend: str = "auto", antialiased: bool = False
) -> Tensor:
    """[H, W, 3] float image of ``splats`` seen by ``camera``, clamped to [0, 1]; ``antialiased``: rasterize as
    splats trained with ``rasterize_mode="antialiased"`` must be."""
    return render_with_depth(splats, camera, background, backend, depth=False, antialiased=antialiased)[0]


@torch.no_grad()
def render_with_depth(
    splats: Splats, camera: Camera, background: Tensor | None = None, backend: str = "auto", depth: bool = True,
    antialiased: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:  # fmt: skip
    """([H, W, 3] image clamped to [0, 1], [H, W] expected camera-z depth or None, [H, W] alpha)."""
    viewmat = torch.as_tensor(camera.cam_from_world, dtype=torch.float32)
    K = torch.as_tensor(camera.K, dtype=torch.float32)
    image, alpha, _ = render_tensors(splats.tensors(), viewmat, K, camera.width, camera.height, splats.sh_degree,
                                     background, backend, render_mode="RGB+ED" if depth else "RGB",
                                     antialiased=antialiased)  # fmt: skip
    return image[..., :3].clamp(0.0, 1.0), image[..., 3] if depth else None, alpha[..., 0]


def composite(view: View, background: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """[H, W, 3] the view's image, its masked-out part replaced by ``background`` [3]."""
    image = view.image_float(device)
    mask = view.mask_float(device)
    return image if mask is None else image * mask + background.to(device) * (1.0 - mask)


@torch.no_grad()
def evaluate_views(
    splats: Splats, views: Sequence[View], background: Tensor, backend: str = "auto", with_lpips: bool = False,
    with_depth: bool = False, antialiased: bool = False, renders_dir: Path | None = None,
    colors: Sequence[Tensor] | None = None,
) -> list[dict]:  # fmt: skip
    """Per view: {"name", "psnr", "ssim"} of the render against the (composited) image, "cc_psnr" (PSNR after
    ``color_corrected``: blind to the photo's exposure and white balance), "lpips" (None without local weights) when
    ``with_lpips``, and when ``with_depth``, for views with ground-truth depth, "depth_abs_rel" (NaN where the render
    covers none of the surface) and "depth_coverage" (``metrics.depth_abs_rel``).

    ``colors``: a colour correction per view (``corrected_colors``), applied to the renders.
    ``renders_dir``: also write a PNG per view there (created), named after the image: ground truth | render | depth
    (``depth_colors``, spanning the view's ground-truth depth where the capture has it, else the render's own).
    """
    results = []
    if renders_dir is not None:
        renders_dir.mkdir(parents=True, exist_ok=True)
    for i, view in enumerate(views):
        target = composite(view, background, splats.device)
        true_depth = _true_depth(view, splats.device) if with_depth or renders_dir is not None else None
        image, depth, alpha = render_with_depth(splats, view.camera, background, backend,
                                                true_depth is not None or renders_dir is not None,
                                                antialiased)  # fmt: skip
        if colors is not None:
            image = corrected_colors(image, alpha[..., None], background.to(image), colors[i].to(image)).clamp(0, 1)
        results.append({"name": view.name, "psnr": psnr(image, target), "ssim": float(ssim(image, target)),
                        "cc_psnr": psnr(color_corrected(image, target), target)})  # fmt: skip
        if with_lpips:
            results[-1]["lpips"] = lpips(image, target)
        if with_depth and true_depth is not None:
            results[-1]["depth_abs_rel"], results[-1]["depth_coverage"] = depth_abs_rel(depth, alpha, true_depth)
        if renders_dir is not None:
            reference = true_depth[true_depth > 0] if true_depth is not None else depth[alpha > 0.5]
            panel = depth_colors(depth, alpha, reference, background.to(splats.device))
            name = view.name.replace("/", "_").rsplit(".", 1)[0] + ".png"
            PIL.Image.fromarray(to_uint8(torch.cat([target, image, panel], dim=1))).save(renders_dir / name)
    return results


POSE_ALIGN_STEPS = 100
"""Adam steps per held-out view of ``align_poses``."""
MAX_ALIGN_TURN_DEG, MAX_ALIGN_SHIFT = 3.0, 0.05
"""How far ``align_poses`` may move a camera: degrees, and a share of ``scale`` (the cameras' distance)."""


def align_poses(splats: Splats, views: Sequence[View], background: Tensor, centre: Tensor, scale: float,
                backend: str = "auto", antialiased: bool = False, colors: Sequence[Tensor] | None = None,
                steps: int = POSE_ALIGN_STEPS, lr: float = 1e-2) -> tuple[list[View], Tensor]:  # fmt: skip
    """(``views`` with each camera moved to where the splats, frozen, match its photo best; the motions [V, 6]).

    BARF's test-time pose optimisation, for splats trained with ``pose_opt``: their world has moved a little from the
    SfM poses the held-out views keep, and a held-out photo should not be scored for that. Each motion is a rigid one
    about ``centre`` [3] (``corrected_viewmat``, translations in units of ``scale``), fitted by Adam on the mean
    squared error for ``steps`` steps (learning rate decaying to a hundredth), within ``MAX_ALIGN_TURN_DEG`` and
    ``MAX_ALIGN_SHIFT``: the errors of a pose are small, and an unbounded motion can score by turning the splats out
    of view or backing away from blurry ones. The best motion met is kept, so a view whose pose no motion improves
    keeps it. The photos are looked at: metrics on the aligned views measure the splats, not the poses, and are
    reported beside the plain ones, never instead. ``colors``: the views' colour corrections.
    """
    tensors = {name: value.detach() for name, value in splats.tensors().items()}
    device, decay = splats.device, 0.01 ** (1.0 / max(steps - 1, 1))
    centre, background = centre.to(device), background.to(device)
    aligned, motions = [], []
    for i, view in enumerate(views):
        viewmat, K, target = view.viewmat().to(device), view.K().to(device), composite(view, background, device)
        motion = torch.zeros(6, device=device, requires_grad=True)
        optimizer = torch.optim.Adam([motion], lr=lr)
        best, best_error = motion.detach().clone(), math.inf
        for step in range(steps + 1):
            image, alpha, _ = render_tensors(tensors, corrected_viewmat(viewmat, motion, centre, scale), K,
                                             view.camera.width, view.camera.height, splats.sh_degree, background,
                                             backend, check_finite=False, antialiased=antialiased)  # fmt: skip
            if colors is not None:
                image = corrected_colors(image, alpha, background, colors[i].to(image))
            error = ((image.clamp(0.0, 1.0) - target) ** 2).mean()
            if error.item() < best_error:
                best, best_error = motion.detach().clone(), error.item()
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            error.backward()
            optimizer.step()
            optimizer.param_groups[0]["lr"] *= decay
            with torch.no_grad():
                for part, bound in ((motion[:3], math.radians(MAX_ALIGN_TURN_DEG)), (motion[3:], MAX_ALIGN_SHIFT)):
                    part.mul_(torch.clamp(bound / part.norm().clamp_min(1e-12), max=1.0))
        moved = corrected_viewmat(viewmat, best, centre, scale).detach().cpu().double().numpy()
        aligned.append(replace(view, camera=view.camera.replace(cam_from_world=moved)))
        motions.append(best)
    return aligned, torch.stack(motions).cpu()


def pose_aligned_metrics(splats: Splats, scene: SceneData, views: Sequence[View], background: Tensor,
                         backend: str = "auto", antialiased: bool = False,
                         colors: Sequence[Tensor] | None = None) -> dict:  # fmt: skip
    """metrics.json's "pose_aligned": PSNR, SSIM and cc_psnr of ``views`` after ``align_poses`` (about the training
    cameras' centre, in units of their mean distance from it), the steps and seconds it took, how far the cameras
    moved, and per view."""
    centre = pose_centre(scene.train)
    scale = float(np.mean([np.linalg.norm(view.camera.center - centre.numpy()) for view in scene.train]))
    info(f"aligning the poses of {len(views)} views to the splats ({POSE_ALIGN_STEPS} steps each)")
    tic = time.perf_counter()
    aligned, motions = align_poses(splats, views, background, centre, scale, backend, antialiased, colors)
    results = evaluate_views(splats, aligned, background, backend, antialiased=antialiased, colors=colors)
    moved = pose_report(motions, views, scale, centre)
    summary = summarize(results)
    return {
        **{key: summary[key] for key in ("psnr", "ssim", "cc_psnr")},
        "steps": POSE_ALIGN_STEPS,
        "seconds": round(time.perf_counter() - tic, 3),
        **{key: value for key, value in moved.items() if key != "per_view"},
        "per_view": per_view_json([{**{k: r[k] for k in ("name", "psnr", "ssim")}, **{k: m[k] for k in
                                    ("rotation_deg", "shift")}} for r, m in zip(results, moved["per_view"])]),
    }  # fmt: skip


def parse_background(text: str) -> torch.Tensor | None:
    """[3] colour for black, white or #rrggbb; None for random."""
    named = {"black": "#000000", "white": "#ffffff"}
    if text == "random":
        return None
    value = named.get(text, text)
    if len(value) != 7 or value[0] != "#" or any(c not in "0123456789abcdefABCDEF" for c in value[1:]):
        raise InputError(f"--background {text}: use random, black, white or #rrggbb")
    return torch.tensor([int(value[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])


def evaluation_background(text: str) -> str:
    """The background evaluation renders on for a training ``--background``: the same, white for random."""
    return "white" if text == "random" else text


def evaluated_on(scene: SceneData, every_view: bool = False) -> str:
    """metrics.json's "evaluated_on": "test", "train (...)" when the scene holds no views out, or "all (...)" for
    ``orbit4d eval --test-every 1`` (``every_view``: any view may be scored, none is a training view)."""
    if every_view:
        return "all (every view of the capture, --test-every 1)"
    return "test" if scene.test else "train (no views held out)"


def summarize(per_view: Sequence[Mapping]) -> dict:
    """metrics.json's means of ``evaluate_views``' results: PSNR, SSIM, cc_psnr, LPIPS (None unless every view has
    it, with ``lpips_status``), and the depth error and coverage over the views with ground-truth depth."""
    depth = [r for r in per_view if "depth_abs_rel" in r]
    lpips_values = [r.get("lpips") for r in per_view]
    return {
        "psnr": finite_or_none(float(np.mean([r["psnr"] for r in per_view]))),
        "ssim": float(np.mean([r["ssim"] for r in per_view])),
        "cc_psnr": finite_or_none(float(np.mean([r["cc_psnr"] for r in per_view]))),
        "lpips": None if not lpips_values or None in lpips_values else float(np.mean(lpips_values)),
        "lpips_reason": lpips_status(),
        # geometry, where the capture has ground-truth depth (synthetic captures): mean AbsRel of the expected depth
        "depth_abs_rel": _finite_mean([r["depth_abs_rel"] for r in depth]),
        "depth_coverage": _finite_mean([r["depth_coverage"] for r in depth]),
    }


def per_view_json(per_view: Sequence[Mapping]) -> list[dict]:
    """``evaluate_views``' results with infinities (identical images' PSNR) as None: JSON has no Infinity."""
    return [{k: finite_or_none(v) if isinstance(v, float) else v for k, v in r.items()} for r in per_view]


def finite_or_none(value: float) -> float | None:
    """``value``, or None where it is not finite (JSON has no Infinity: identical images' PSNR is reported as null)."""
    return value if math.isfinite(value) else None


def _finite_mean(values: list[float]) -> float | None:
    """Mean of the finite values; None when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _true_depth(view: View, device: torch.device) -> Tensor | None:
    """The view's ground-truth depth, or None with a warning when its file is unreadable: a broken depth map costs
    its metric, not the trained scene's outputs."""
    try:
        return view.depth(device)
    except InputError as error:
        warn(f"{error}; evaluating {view.name} without depth")
        return None


QUANTILE_SAMPLES = 1_000_000  # depth values the colour range of a depth picture is taken from, at most


def depth_colors(depth: Tensor, alpha: Tensor, reference: Tensor, background: Tensor) -> Tensor:
    """[H, W, 3] picture of ``depth`` [H, W]: turbo colours from near (blue) to far (red) over the 1st to 99th
    percentile of ``reference`` (depth values), blended over ``background`` [3] by ``alpha`` [H, W]."""
    from matplotlib import colormaps

    if reference.numel() == 0:
        reference = depth.new_ones(1)
    reference = reference.reshape(-1)[:: max(1, reference.numel() // QUANTILE_SAMPLES)]  # quantile takes < 16M
    near, far = torch.quantile(reference.double().cpu(), torch.tensor([0.01, 0.99], dtype=torch.float64)).tolist()
    t = ((torch.nan_to_num(depth.double().cpu()) - near) / max(far - near, 1e-9)).clamp(0.0, 1.0).numpy()
    colors = torch.from_numpy(colormaps["turbo"](t)[..., :3]).float().to(depth.device)
    a = alpha.clamp(0.0, 1.0)[..., None]
    return colors * a + background * (1.0 - a)


def write_training_plot(report: Mapping, path: Path) -> Path:
    """PNG of a training run from its metrics.json ``report``, written atomically: PSNR against training time (the
    training views' window means, the held-out samples), and loss and Gaussians against steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    curve, samples = report.get("training_curve") or [], report.get("psnr_vs_time") or []
    figure = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    psnr_axes, loss_axes = figure.subplots(1, 2)
    psnr_axes.plot([p["seconds"] for p in curve], [p["psnr"] for p in curve], lw=1, color="tab:blue",
                   label="training steps")  # fmt: skip
    held_out = [p for p in samples if p["psnr"] is not None]
    label = "held-out views" if report.get("evaluated_on", "test") == "test" else "training views (sampled)"
    psnr_axes.plot([p["seconds"] for p in held_out], [p["psnr"] for p in held_out], "o-", color="tab:orange",
                   label=label)  # fmt: skip
    psnr_axes.set(xlabel="training time (s)", ylabel="PSNR (dB)", title="PSNR")
    psnr_axes.grid(alpha=0.3)
    psnr_axes.legend(loc="lower right")
    loss_axes.plot([p["step"] for p in curve], [p["loss"] for p in curve], lw=1, color="tab:blue")
    loss_axes.set(xlabel="step", ylabel="loss (L1 + D-SSIM)", title="loss and Gaussians")
    if curve and min(p["loss"] for p in curve) > 0:
        loss_axes.set_yscale("log")
        loss_axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        loss_axes.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        loss_axes.yaxis.set_minor_formatter(NullFormatter())
    loss_axes.grid(alpha=0.3)
    count_axes = loss_axes.twinx()
    count_axes.plot([p["step"] for p in curve], [p["num_gaussians"] for p in curve], lw=1, color="tab:green")
    count_axes.set_ylabel("Gaussians", color="tab:green")
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def to_uint8(image: Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 numpy (rounded)."""
    return (image.detach().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def turntable_cameras(cameras: Sequence[Camera], num_frames: int) -> list[Camera]:
    """``num_frames`` cameras orbiting the scene centre, starting from ``cameras[0]`` (its intrinsics too).

    Centre: ``view_volume``'s; axis: the cameras' mean up direction. Each frame is the first camera carried round
    the axis, so height, distance and tilt stay those of a real view. When the cameras surround the scene (no gap
    wider than 135 degrees between their azimuths) the orbit is a full turn; otherwise (a front-facing capture) it
    sweeps back and forth over the arc the cameras cover, which is all the scene there is to see. Width and height
    are cut to even numbers (H.264 needs them).
    """
    first = cameras[0]
    center, _ = view_volume(cameras)
    up = -np.mean([c.world_from_cam[:3, 1] for c in cameras], axis=0)
    up = up / max(np.linalg.norm(up), 1e-9)
    width, height = first.width - first.width % 2, first.height - first.height % 2
    result = []
    for angle in _orbit_angles(cameras, center, up, num_frames):
        R = _rotation(up, angle)
        world_from_moved = np.eye(4)  # x' = R (x - c) + c
        world_from_moved[:3, :3] = R
        world_from_moved[:3, 3] = center - R @ center
        cam_from_world = first.cam_from_world @ np.linalg.inv(world_from_moved)
        result.append(first.replace(cam_from_world=cam_from_world, width=width, height=height))
    return result


def _orbit_angles(cameras: Sequence[Camera], center: np.ndarray, up: np.ndarray, num_frames: int) -> list[float]:
    """Rotation angles about ``up`` (radians, first camera at 0): a full turn, or a sweep over the covered arc."""
    offsets = np.stack([c.center for c in cameras]) - center
    offsets -= np.outer(offsets @ up, up)  # project onto the plane normal to the axis
    reference = offsets[0]
    azimuths = np.arctan2(np.cross(reference, offsets) @ up, offsets @ reference)  # (-pi, pi], first at 0
    ordered = np.sort(azimuths)
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + 2 * np.pi]))
    widest = int(np.argmax(gaps))
    phases = 2.0 * np.pi * np.arange(num_frames) / max(num_frames, 1)
    if gaps[widest] <= 0.75 * np.pi:
        return phases.tolist()
    # the covered arc runs from the azimuth after the widest gap round to the one before it; it contains 0
    start = ordered[(widest + 1) % len(ordered)]
    end = ordered[widest] + (0.0 if widest == len(ordered) - 1 else 2 * np.pi)
    if start > 0:
        start, end = start - 2 * np.pi, end - 2 * np.pi
    middle, half = (start + end) / 2, max((end - start) / 2, 1e-6)
    phase = math.asin(float(np.clip(-middle / half, -1.0, 1.0)))  # so that frame 0 is the first camera
    return (middle + half * np.sin(phases + phase)).tolist()


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: [3, 3] rotation by ``angle`` radians about unit ``axis``."""
    x, y, z = axis
    K = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * K + (1.0 - math.cos(angle)) * K @ K


@torch.no_grad()
def write_turntable(
    splats: Splats,
    cameras: Sequence[Camera],
    path: Path,
    num_frames: int = 120,
    fps: float = 30.0,
    background: Tensor | None = None,
    backend: str = "auto",
    antialiased: bool = False,
) -> Path:
    """An H.264 MP4 orbiting the scene once (``turntable_cameras``), written atomically; returns ``path``."""
    from multiview.video import write_video

    frames = (to_uint8(render_camera(splats, camera, background, backend, antialiased))
              for camera in turntable_cameras(cameras, num_frames))  # fmt: skip
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write_video(tmp, frames, fps=fps)
    os.replace(tmp, path)
    return path
