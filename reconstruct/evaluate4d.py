"""Measuring and exporting 4D splats: held-out PSNR / SSIM over all time steps and per time step, how smoothly the
Gaussians move (jitter), and the 4D scene folder's files (``reconstruct.train4d``'s docstring lists them)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from multiview.camera import Camera
from multiview.console import console, info, track
from multiview.outputs import replace_dir, write_json
from reconstruct.checkpoint import TrainState
from reconstruct.data import View
from reconstruct.data4d import SceneData4D
from reconstruct.evaluate import (
    evaluate_views,
    evaluation_background,
    finite_or_none,
    parse_background,
    per_view_json,
    render_camera,
    summarize,
    to_uint8,
    turntable_cameras,
    write_training_plot,
)
from reconstruct.ply import write_ply
from reconstruct.splats import Splats
from reconstruct.splats4d import Splats4D, write_splats4d

MAX_SAMPLE_VIEWS = 8  # held-out views rendered for each PSNR-vs-time sample, spread over the time steps
SEQUENCE_DIR = "sequence"
VISIBLE = 0.05  # opacity above which a Gaussian counts in the jitter at a time


def frame_name(index: int) -> str:
    """``sequence/``'s file name of time step ``index``."""
    return f"frame_{index:04d}.ply"


def evaluate_views4d(splats: Splats4D, scene: SceneData4D, views: Sequence[View], background: Tensor,
                     backend: str = "auto", with_lpips: bool = False,
                     renders_dir: Path | None = None) -> list[dict]:  # fmt: skip
    """``evaluate.evaluate_views``' results per view, each rendered at its own time, with "time" (seconds) and
    "time_index"; depth error where the capture has depth; ``renders_dir``: ground truth | render | depth PNGs."""
    results = []
    for view in views:
        index = scene.time_index(view)
        at_time = splats.frame(index)
        result = evaluate_views(at_time, [view], background, backend, with_lpips=with_lpips, with_depth=True,
                                renders_dir=renders_dir)[0]  # fmt: skip
        results.append({**result, "time": float(scene.times[index]), "time_index": index})
    return results


def per_time(results: Sequence[dict]) -> list[dict]:
    """PSNR and SSIM per time step (means over that step's views), in time order."""
    steps = sorted({r["time_index"] for r in results})
    out = []
    for index in steps:
        group = [r for r in results if r["time_index"] == index]
        out.append({"time_index": index, "time": group[0]["time"], "views": len(group),
                    "psnr": finite_or_none(float(np.mean([r["psnr"] for r in group]))),
                    "ssim": float(np.mean([r["ssim"] for r in group]))})  # fmt: skip
    return out


def trajectory_jitter(frames: Sequence[Splats]) -> dict:
    """How smoothly Gaussians that keep their identity move over consecutive time steps: the mean norm of the second
    difference of each centre, ``|x(t+1) - 2 x(t) + x(t-1)|`` (world units; a still or uniformly moving Gaussian
    scores 0), weighted by the Gaussian's opacity at t (those under ``VISIBLE`` left out), and the mean step
    ``|x(t+1) - x(t)|`` for scale. ``frames``: the same N Gaussians at each time step (``Splats4D.frame``)."""
    means = torch.stack([f.means.double() for f in frames])  # [T, N, 3]
    opacity = torch.stack([torch.sigmoid(f.opacities.double()) for f in frames])  # [T, N]
    if len(frames) < 3:
        return {"mean_second_difference": None, "mean_step": None, "matching": "identity"}
    second = (means[2:] - 2 * means[1:-1] + means[:-2]).norm(dim=-1)  # [T-2, N]
    step = (means[1:] - means[:-1]).norm(dim=-1)  # [T-1, N]
    w2 = opacity[1:-1] * (opacity[1:-1] > VISIBLE)
    w1 = opacity[:-1] * (opacity[:-1] > VISIBLE)
    return {"mean_second_difference": _weighted(second, w2), "mean_step": _weighted(step, w1), "matching": "identity"}


def matched_jitter(frames: Sequence[Splats]) -> dict:
    """``trajectory_jitter`` for frames whose Gaussians have no identity across time (independent per-frame scenes):
    each visible Gaussian of frame t is matched to the nearest visible centre of frames t-1 and t+1, and the second
    difference taken over that matched triple. Applies to any sequence, so it compares a 4D scene with per-frame
    ones on equal terms."""
    from scipy.spatial import cKDTree

    if len(frames) < 3:
        return {"mean_second_difference": None, "mean_step": None, "matching": "nearest"}
    visible = []
    for f in frames:
        opacity = torch.sigmoid(f.opacities.double())
        keep = opacity > VISIBLE
        visible.append((f.means.double()[keep].numpy(), opacity[keep].numpy()))
    trees = [cKDTree(points) for points, _ in visible]
    seconds, steps, weights = [], [], []
    for t in range(1, len(frames) - 1):
        points, opacity = visible[t]
        before = visible[t - 1][0][trees[t - 1].query(points)[1]]
        after = visible[t + 1][0][trees[t + 1].query(points)[1]]
        seconds.append(np.linalg.norm(after - 2 * points + before, axis=1))
        steps.append(np.linalg.norm(after - points, axis=1))
        weights.append(opacity)
    w = np.concatenate(weights)
    return {"mean_second_difference": float(np.average(np.concatenate(seconds), weights=w)),
            "mean_step": float(np.average(np.concatenate(steps), weights=w)), "matching": "nearest"}  # fmt: skip


def lifespan_summary(splats: Splats4D) -> dict:
    """How the lifespans are used: the mean share of the frame times at which a Gaussian is at least half as opaque
    as at its peak, and how many Gaussians are so for less than half of them (things that appear or disappear)."""
    u = torch.as_tensor((splats.times - splats.times[0]) / (splats.times[-1] - splats.times[0]), dtype=torch.float32)
    fade = torch.exp(-splats.t_rate[:, None].float() * (u[None] - splats.t_center[:, None].float()) ** 2)  # [N, T]
    visible = (fade >= 0.5).float().mean(dim=1)
    return {"mean_visible_share": round(float(visible.mean()), 4) if len(splats) else None,
            "short_lived": int((visible < 0.5).sum())}  # fmt: skip


def _weighted(values: Tensor, weights: Tensor) -> float | None:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 0 else None


@torch.no_grad()
def sample_psnr(config, scene: SceneData4D, state: TrainState) -> dict:
    """One PSNR-vs-time sample on up to ``MAX_SAMPLE_VIEWS`` held-out views (training views when none), spread over
    the time steps."""
    splats = Splats4D.from_parameters(state.params, scene.times, config.basis)
    views = scene.test or scene.train
    picked = [views[i] for i in np.linspace(0, len(views) - 1, min(MAX_SAMPLE_VIEWS, len(views))).round().astype(int)]
    background = parse_background(evaluation_background(config.background))
    results = evaluate_views4d(splats, scene, picked, background, config.backend)
    psnr = finite_or_none(float(np.mean([r["psnr"] for r in results])))
    return {"step": state.step, "seconds": round(state.seconds, 3), "psnr": psnr, "num_gaussians": len(splats)}


def write_sequence(splats: Splats4D, folder: Path) -> list[Path]:
    """``folder``/frame_NNNN.ply: the Gaussians at each frame time, standard 3DGS ``.ply`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_ply(folder / frame_name(i), splats.frame(i)) for i in range(len(splats.times))]


@torch.no_grad()
def write_playback(splats: Splats4D, cameras: Sequence[Camera], path: Path, num_frames: int, fps: float = 24.0,
                   background: Tensor | None = None, backend: str = "auto") -> Path:  # fmt: skip
    """An H.264 MP4 of the scene playing (time step ``i mod T`` at video frame i) while the camera goes once round
    ``evaluate.turntable_cameras``' orbit; written atomically."""
    from multiview.video import write_video

    orbit = turntable_cameras(cameras, num_frames)
    frames = (to_uint8(render_camera(splats.frame(i % len(splats.times)), camera, background, backend))
              for i, camera in enumerate(orbit))  # fmt: skip
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write_video(tmp, frames, fps=fps)
    os.replace(tmp, path)
    return path


def export_scene(config, scene: SceneData4D, state: TrainState, work: Path) -> dict:
    """Evaluate, then write splats4d.ply, sequence/, renders/, playback.mp4, training.png and metrics.json into
    ``work``; return the report (metrics.json's contents)."""
    tic = time.perf_counter()
    splats = Splats4D.from_parameters(state.params, scene.times, config.basis)
    views = scene.test or scene.train
    background = parse_background(evaluation_background(config.background))
    info(f"evaluating on {len(views)} {'held-out' if scene.test else 'training'} views over {len(scene.times)} "
         "time steps")
    staging = work / ".renders.partial"
    shutil.rmtree(staging, ignore_errors=True)
    results = evaluate_views4d(splats, scene, list(track(views, "evaluating")), background, config.backend,
                               with_lpips=True, renders_dir=staging)  # fmt: skip
    replace_dir(staging, work / "renders")
    cpu = splats.to("cpu")
    write_splats4d(work / "splats4d.ply", cpu)
    sequence = work / ".sequence.partial"
    shutil.rmtree(sequence, ignore_errors=True)
    names = [path.name for path in write_sequence(cpu, sequence)]
    replace_dir(sequence, work / SEQUENCE_DIR)
    frames = [work / SEQUENCE_DIR / name for name in names]
    if config.video_frames > 0:
        info("rendering playback.mp4")
        write_playback(splats, [view.camera for view in scene.train], work / "playback.mp4", config.video_frames,
                       background=background, backend=config.backend)  # fmt: skip
    report = _report(config, scene, state, splats, results, work, frames)
    report["evaluation_seconds"] = round(time.perf_counter() - tic, 3)
    write_json(work / "metrics.json", report)
    write_training_plot(report, work / "training.png")
    return report


def _report(config, scene: SceneData4D, state: TrainState, splats: Splats4D, results: list[dict], work: Path,
            frames: list[Path]) -> dict:  # fmt: skip
    size_4d = (work / "splats4d.ply").stat().st_size
    frame_bytes = float(np.mean([f.stat().st_size for f in frames]))
    cpu = splats.to("cpu")
    return {
        **summarize(results),
        "evaluated_on": scene.evaluated_on(),
        "test_camera": scene.test_camera,
        "per_time": per_time(results),
        "jitter": trajectory_jitter([cpu.frame(i) for i in range(len(scene.times))]),
        "num_gaussians": len(splats),
        "steps": state.step,
        "seconds": round(state.seconds, 3),
        "times": [float(t) for t in scene.times],
        "cameras": scene.cameras,
        "motion": {
            "basis": splats.basis,
            "motion_points": splats.motion.shape[1],
            "rotation_points": splats.drot.shape[1],
            **lifespan_summary(cpu),
        },
        "file_sizes": {
            "splats4d_ply": size_4d,
            "frame_ply_mean": round(frame_bytes),
            "splats4d_over_one_frame": round(size_4d / frame_bytes, 3),
            "sequence_total": int(sum(f.stat().st_size for f in frames)),
        },
        "test_views": [view.name for view in scene.test],
        "per_view": per_view_json(results),
        "psnr_vs_time": state.history,
        "training_curve": state.curve,
        "image_size": [scene.train[0].camera.width, scene.train[0].camera.height],
        "device": str(splats.device),
        "capture": str(scene.capture.root),
        "config": asdict(config),
    }


def print_summary(report: dict, out_dir: Path) -> None:
    """The table ``orbit4d video-to-4d`` ends with."""
    from rich.table import Table

    table = Table(title=f"video-to-4d → {out_dir}", show_header=False, title_justify="left")
    psnr = "n/a" if report["psnr"] is None else f"{report['psnr']:.2f} dB"
    table.add_row(f"PSNR / SSIM ({report['evaluated_on']})", f"{psnr} / {report['ssim']:.4f}")
    steps = [p["psnr"] for p in report["per_time"] if p["psnr"] is not None]
    if steps:
        table.add_row("PSNR per time step", f"{min(steps):.2f} to {max(steps):.2f} dB over {len(steps)} steps")
    jitter = report["jitter"]
    if jitter["mean_second_difference"] is not None:
        table.add_row("motion", f"{report['motion']['basis']}, jitter {jitter['mean_second_difference']:.3g} "
                      f"(mean step {jitter['mean_step']:.3g}) per time step; {report['motion']['short_lived']:,} "
                      "Gaussians visible less than half the time")
    sizes = report["file_sizes"]
    table.add_row("splats4d.ply", f"{sizes['splats4d_ply'] / 1e6:.2f} MB ({sizes['splats4d_over_one_frame']:.2f}x one "
                  f"frame's .ply; the {len(report['times'])} frames: {sizes['sequence_total'] / 1e6:.1f} MB)")
    table.add_row("Gaussians", f"{report['num_gaussians']:,}")
    table.add_row("steps", f"{report['steps']:,} in {report['seconds']:.1f} s on {report['device']}")
    table.add_row("outputs", "splats4d.ply, sequence/, metrics.json, renders/, training.png"
                  + (", playback.mp4" if (out_dir / "playback.mp4").is_file() else ""))
    console.print(table)
