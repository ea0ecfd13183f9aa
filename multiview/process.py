"""The capture stage: a video or a photo folder in, a posed capture folder out (``orbit4d capture``).

hloc-style: a short sequence of stage calls passing paths. Everything is built in a staging folder
beside ``out_dir`` and renamed into place at the end, so an existing capture is never half overwritten.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from multiview import capture, frames, importers, sfm
from multiview.console import console, info
from multiview.errors import InputError
from multiview.outputs import staged_dir, write_json


@dataclass(frozen=True)
class CaptureConfig:
    """Everything ``orbit4d capture`` can be told: frame selection, then structure from motion."""

    frames: frames.FrameSelectConfig = field(default_factory=frames.FrameSelectConfig)
    sfm: sfm.SfmConfig = field(default_factory=sfm.SfmConfig)

    @classmethod
    def from_options(
        cls,
        frames: int | None = None,
        max_size: int | None = None,
        matcher: str = "auto",
        mapper: str = "incremental",
        camera_model: str = "SIMPLE_RADIAL",
        camera: str = "auto",
        threads: int = -1,
        verbose: bool = False,
    ) -> "CaptureConfig":
        """Build a config from command-line options; ``None`` keeps each default."""
        frame_options = {"num_frames": frames, "max_image_size": max_size}
        frame_config = _frames_config(**{k: v for k, v in frame_options.items() if v is not None})
        single_camera = {"auto": None, "single": True, "per-image": False}[camera]
        sfm_config = sfm.SfmConfig(
            matcher=matcher,
            mapper=mapper,
            camera_model=camera_model,
            single_camera=single_camera,
            num_threads=threads,
            verbose=verbose,
        )
        return cls(frames=frame_config, sfm=sfm_config)


def _frames_config(**options) -> frames.FrameSelectConfig:
    if options.get("num_frames", 3) < 3:
        raise InputError(f"--frames {options['num_frames']}: structure from motion needs at least 3 frames")
    if options.get("max_image_size", 64) < 64:
        raise InputError(f"--max-size {options['max_image_size']}: use at least 64 pixels (1600 is a good default)")
    return frames.FrameSelectConfig(**options)


def run(config: CaptureConfig, input_path: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Pose ``input_path`` (a video file or an image folder) and write the capture to ``out_dir``."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{input_path} does not exist: give a video file or a folder of images")
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    with staged_dir(out_dir, overwrite, inputs=[input_path]) as stage:
        work = stage / "work"
        tic = time.perf_counter()
        selection, ordered = _select(config.frames, input_path, work / "frames")
        seconds["frames"] = time.perf_counter() - tic
        result = sfm.run(config.sfm, work / "frames", work, ordered=ordered, source=input_path)
        seconds.update({step: s for step, s in result.seconds.items() if step != "total"})
        tic = time.perf_counter()
        capture.capture_from_colmap(result.model_dir, work / "frames", stage)
        seconds["undistort"] = time.perf_counter() - tic
        shutil.rmtree(work)
        seconds["total"] = time.perf_counter() - start
        report = _report(config, input_path, selection, result, seconds)
        write_json(stage / "report.json", report)
    _print_summary(report, Path(out_dir))
    return Path(out_dir)


def _select(config: frames.FrameSelectConfig, input_path: Path, frames_dir: Path):
    """Frames for SfM and whether they are in temporal order (a video) or not (a photo folder)."""
    frames_dir.mkdir(parents=True)
    if input_path.is_dir():
        info(f"Reading images from {input_path}")
        return frames.load_image_folder(config, input_path, frames_dir), False
    info(f"Selecting frames from {input_path}")
    return frames.select_frames(config, input_path, frames_dir), True


def _report(config: CaptureConfig, input_path: Path, selection, result, seconds: dict[str, float]) -> dict:
    summary = result.summary()
    return {
        "command": "capture",
        "input": str(input_path.resolve()),
        "input_kind": "image_folder" if input_path.is_dir() else "video",
        "registered": result.registered,
        "total": result.total,
        "mean_reprojection_error_px": result.mean_reprojection_error_px,
        "num_points": result.num_points,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "frames": selection.summary(),
        "sfm": summary,
        "config": asdict(config),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }


def _print_summary(report: dict, out_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"capture → {out_dir}", show_header=False, title_justify="left")
    frames_summary = report["frames"]
    table.add_row("input", f"{report['input']} ({report['input_kind'].replace('_', ' ')})")
    table.add_row("frames used", f"{frames_summary.get('kept', report['total'])} "
                  f"(dropped {frames_summary.get('dropped', 0)})")
    ratio = report["registered"] / max(report["total"], 1)
    table.add_row("registered", f"{report['registered']} / {report['total']} ({ratio:.0%})")
    table.add_row("attempts", str(len(report["sfm"].get("attempts", [1]))))
    table.add_row("mean reprojection error", f"{report['mean_reprojection_error_px']:.3f} px")
    table.add_row("3D points", str(report["num_points"]))
    table.add_row("seconds", ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items()))
    console.print(table)


def run_import(src: Path, out_dir: Path, overwrite: bool = False, triangulate: bool = False,
               verbose: bool = False, allow_outside: bool = False) -> Path:  # fmt: skip
    """Convert an existing capture (COLMAP, nerfstudio / instant-ngp, LLFF) into ``out_dir``.

    ``triangulate``: when the source has no points, triangulate them from its known cameras (``multiview.triangulate``).
    ``allow_outside``: import files the source names outside its folder (``importers.import_capture``).
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src} does not exist: give a COLMAP model folder, a transforms.json or an LLFF folder")
    with staged_dir(out_dir, overwrite, inputs=[src]) as stage:
        importers.import_capture(src, stage, allow_outside=allow_outside)
        if triangulate:
            add_points(stage, verbose, source=src)
    info(f"Imported {src} → {out_dir}")
    return Path(out_dir)


def add_points(capture_dir: Path, verbose: bool = False, source: Path | None = None) -> None:
    """Triangulate points3D.ply for a capture that has none, recording how in its report.json.

    ``source``: what the capture was imported from, named in messages instead of ``capture_dir`` (a staging folder).
    """
    from multiview.triangulate import triangulate_capture

    scene = capture.read_capture(capture_dir)
    if scene.points is not None and len(scene.points):
        info(f"{source or capture_dir} already has {len(scene.points):,} points: not triangulating")
        return
    work = Path(capture_dir) / ".triangulation"
    result = triangulate_capture(scene, work, verbose=verbose, source=source)
    shutil.rmtree(work, ignore_errors=True)
    capture.write_capture(capture.Capture(scene.root, scene.frames, result.xyz, result.rgb))
    report_path = Path(capture_dir) / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    write_json(report_path, {**report, "triangulation": result.summary()})
