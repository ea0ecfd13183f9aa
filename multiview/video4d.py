"""4D captures from video: one moving-camera video, or a folder of synchronized videos, into a capture whose frames
carry ``time`` (seconds) and ``camera_id`` (``orbit4d video-to-4d``'s first half).

Steps, in a staging folder renamed into place at the end:

1. The videos are probed; a synchronized set must agree in frame rate (within ``FPS_TOLERANCE``) and length (within
   one frame), else one line names the ones that differ.
2. ``time_steps`` frame indices evenly over the (shortest) video; the same indices of every video, at the first
   video's timestamps. Frames are written as ``c{camera:02d}_t{step:04d}.png`` at ``max_size`` on the longest side.
3. What moves in each video is masked (``multiview.motion``) so that structure from motion poses the cameras on the
   static background; the masks only steer SfM (kept in ``motion_masks/`` for inspection): training sees whole
   images, where the motion model explains what moves.
4. SfM (``multiview.sfm``): one video is ordered frames of one camera (sequential matching); a synchronized set has
   one camera per image and exhaustive matching up to 150 images. Undistorted into the capture layout; each frame
   gets its time and its video's index as ``camera_id``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from multiview import capture, sfm
from multiview.console import console, track, warn
from multiview.errors import InputError
from multiview.motion import motion_masks
from multiview.outputs import staged_dir, write_json
from multiview.video import iter_frames, probe_video

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg"})
FPS_TOLERANCE = 0.005  # relative: 29.97 and 30 fps differ by 0.1%, within it; 25 and 30 do not
MIN_TIME_STEPS = 2
MOTION_MASK_DIR = "motion_masks"


@dataclass(frozen=True)
class Video4DConfig:
    """How a 4D capture is made from video."""

    time_steps: int = 24
    """Time steps taken evenly over the video(s); every video gives a frame at each."""
    max_size: int = 960
    """Longest image side in pixels (frames are downscaled, never upscaled)."""
    motion_masks: bool = True
    """Mask what moves for structure from motion (``multiview.motion``)."""
    sfm: sfm.SfmConfig = field(default_factory=sfm.SfmConfig)
    """Structure-from-motion settings (matcher, mapper, camera model, threads)."""

    def validate(self) -> None:
        if self.time_steps < MIN_TIME_STEPS:
            raise InputError(f"--time-steps {self.time_steps}: 4D needs at least {MIN_TIME_STEPS} time steps (24 is "
                             "usual); for one time use orbit4d video-to-3d")
        if self.max_size < 64:
            raise InputError(f"--max-size {self.max_size}: use at least 64 pixels")


def list_videos(folder: Path) -> list[Path]:
    """The video files directly in ``folder``, sorted by name (their order gives the camera ids)."""
    videos = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise InputError(f"{folder} holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) and no "
                         "transforms.json: give a video, a folder of synchronized videos, or a capture with times")
    return videos


@dataclass(frozen=True)
class _Clip:
    path: Path
    fps: float
    num_frames: int


def check_synchronized(videos: list[Path]) -> list[_Clip]:
    """Probe ``videos``; InputError naming them when their frame rates or lengths differ (a synchronized set is
    recorded at one rate, over one span)."""
    clips = []
    for path in videos:
        video = probe_video(path)
        if video.num_frames < MIN_TIME_STEPS:
            raise InputError(f"{path} holds {video.num_frames} frame(s): a 4D capture needs at least "
                             f"{MIN_TIME_STEPS} time steps; check the file")
        clips.append(_Clip(path, video.fps, video.num_frames))
    reference = clips[0]
    for clip in clips[1:]:
        if abs(clip.fps - reference.fps) > FPS_TOLERANCE * reference.fps:
            raise InputError(f"{clip.path.name} runs at {clip.fps:g} fps but {reference.path.name} at "
                             f"{reference.fps:g} fps: synchronized videos need one frame rate; re-encode them alike")
        if abs(clip.num_frames - reference.num_frames) > 1:
            raise InputError(f"{clip.path.name} has {clip.num_frames} frames but {reference.path.name} "
                             f"{reference.num_frames}: synchronized videos must cover the same span; trim them to "
                             "the same start and length")
    return clips


def frame_indices(num_frames: int, time_steps: int) -> list[int]:
    """``time_steps`` distinct frame indices evenly over ``num_frames`` frames, first and last included."""
    return sorted({int(i) for i in np.linspace(0, num_frames - 1, min(time_steps, num_frames)).round()})


def frame_name(camera: int, step: int) -> str:
    return f"c{camera:02d}_t{step:04d}.png"


def run(config: Video4DConfig, input_path: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Make a 4D capture in ``out_dir`` from a video file or a folder of synchronized videos; return ``out_dir``."""
    config.validate()
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{input_path} does not exist: give a video file or a folder of synchronized videos")
    videos = list_videos(input_path) if input_path.is_dir() else [input_path]
    clips = check_synchronized(videos)
    indices = frame_indices(min(clip.num_frames for clip in clips), config.time_steps)
    start = time.perf_counter()
    with staged_dir(out_dir, overwrite, inputs=[input_path]) as stage:
        work = stage / "work"
        frames_dir, masks_dir = work / "frames", work / "masks"
        frames_dir.mkdir(parents=True)
        tic = time.perf_counter()
        times, moving = _write_frames(clips, indices, config, frames_dir, masks_dir)
        decode_seconds = time.perf_counter() - tic
        result = sfm.run(config.sfm, frames_dir, work, ordered=len(clips) == 1, source=input_path,
                         mask_dir=masks_dir if config.motion_masks else None)  # fmt: skip
        capture.capture_from_colmap(result.model_dir, frames_dir, stage)
        kept = _attach_times(stage, times, input_path)
        if config.motion_masks:
            shutil.move(str(masks_dir), stage / MOTION_MASK_DIR)
        shutil.rmtree(work)
        seconds = {"frames_and_masks": decode_seconds, **result.seconds, "total": time.perf_counter() - start}
        report = _report(config, input_path, clips, indices, times, result, kept, moving, seconds)
        write_json(stage / "report.json", report)
    _print_summary(report, Path(out_dir))
    return Path(out_dir)


def _report(config: Video4DConfig, input_path: Path, clips: list[_Clip], indices: list[int], times: dict,
            result: sfm.SfmResult, posed: int, moving: float, seconds: dict[str, float]) -> dict:  # fmt: skip
    """report.json of a 4D capture."""
    return {
        "command": "video-to-4d",
        "input": str(input_path.resolve()),
        "input_kind": "synchronized videos" if input_path.is_dir() else "video",
        "videos": [
            {"path": str(clip.path.resolve()), "camera_id": camera, "fps": clip.fps, "num_frames": clip.num_frames}
            for camera, clip in enumerate(clips)
        ],
        "frame_indices": indices,
        "times_s": [times[frame_name(0, step)][0] for step in range(len(indices))],
        "registered": result.registered,
        "total": result.total,
        "time_steps_posed": posed,
        "moving_fraction": moving,
        "mean_reprojection_error_px": result.mean_reprojection_error_px,
        "num_points": result.num_points,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "sfm": result.summary(),
        "config": asdict(config),
    }


def _write_frames(clips: list[_Clip], indices: list[int], config: Video4DConfig, frames_dir: Path,
                  masks_dir: Path) -> tuple[dict[str, tuple], float]:  # fmt: skip
    """Frames (and SfM masks) of every clip at ``indices``; returns ({name: (time, camera_id)}, mean moving
    fraction)."""
    times: dict[str, tuple] = {}
    fractions = []
    reference_times = None
    for camera, clip in enumerate(clips):
        decoded = list(track(iter_frames(clip.path, max_side=config.max_size, indices=indices),
                             f"decoding {clip.path.name}", total=len(indices)))  # fmt: skip
        if len(decoded) != len(indices):
            raise InputError(f"{clip.path}: only {len(decoded)} of the {len(indices)} frames wanted could be decoded "
                             "(a damaged file?): re-encode it, or pass fewer --time-steps")
        if reference_times is None:
            reference_times = [frame.time_s - decoded[0].time_s for frame in decoded]
        images = [frame.image for frame in decoded]
        masks = motion_masks(images) if config.motion_masks else [np.zeros(images[0].shape[:2], bool)] * len(images)
        for step, (image, mask) in enumerate(zip(images, masks)):
            name = frame_name(camera, step)
            Image.fromarray(image).save(frames_dir / name)
            times[name] = (float(reference_times[step]), camera)
            if config.motion_masks:
                masks_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.where(mask, 0, 255).astype(np.uint8)).save(masks_dir / f"{name}.png")
            fractions.append(float(mask.mean()))
    return times, round(float(np.mean(fractions)), 4)


def _attach_times(root: Path, times: dict[str, tuple], source: Path) -> int:
    """Give each registered frame of the capture at ``root`` its time and camera id; return the time steps posed.
    InputError when fewer than two time steps were posed (nothing moves in time then)."""
    scene = capture.read_capture(root)
    frames = []
    for frame in scene.frames:
        stem = frame.image_path.name
        if stem not in times:
            raise InputError(f"{frame.image_path}: not a frame this stage wrote: the capture is inconsistent")
        seconds, camera = times[stem]
        frames.append(replace(frame, camera=frame.camera.replace(time=seconds, camera_id=camera)))
    posed = len({frame.camera.time for frame in frames})
    if posed < MIN_TIME_STEPS:
        raise InputError(f"structure from motion posed frames of {posed} time step(s) of {source}: 4D needs at least "
                         f"{MIN_TIME_STEPS}; more camera motion, more texture or more --time-steps may help")
    skipped = len(times) - len(frames)
    if skipped:
        warn(f"{skipped} of {len(times)} frames could not be posed and are left out")
    capture.write_capture(capture.Capture(scene.root, frames, scene.points, scene.colors))
    return posed


def _print_summary(report: dict, out_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"4D capture → {out_dir}", show_header=False, title_justify="left")
    table.add_row("input", f"{report['input']} ({report['input_kind']}, {len(report['videos'])} camera(s))")
    table.add_row("time steps", f"{len(report['frame_indices'])} over {report['times_s'][-1]:.2f} s, "
                  f"{report['time_steps_posed']} posed")  # fmt: skip
    table.add_row("registered", f"{report['registered']} / {report['total']} frames")
    table.add_row("masked as moving", f"{100 * report['moving_fraction']:.0f}% of the pixels (for SfM only)")
    table.add_row("mean reprojection error", f"{report['mean_reprojection_error_px']:.3f} px")
    table.add_row("3D points", str(report["num_points"]))
    console.print(table)


def is_capture(path: Path) -> bool:
    """Whether ``path`` is a capture folder (or its transforms.json) rather than video."""
    path = Path(path)
    return (path.is_file() and path.name == capture.TRANSFORMS_FILE) or (path / capture.TRANSFORMS_FILE).is_file()
