"""Benchmark of ``orbit4d capture`` on the shared real data: seconds per step, registration, pose accuracy.

    python bench/capture_bench.py                                  # herz_jesus and great_wall, defaults
    python bench/capture_bench.py --datasets all --mapper global --out /tmp/capture_bench.json

Runs the same pipeline as the command (frame selection or photo loading, SfM, undistortion, capture writing).
Herz-Jesus-P8 is also compared with its ground-truth cameras, read back from the written transforms.json, after
similarity alignment. Paste the printed table into bench/RESULTS.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multiview import process  # noqa: E402
from multiview.align import compare_poses, read_strecha_camera  # noqa: E402
from multiview.capture import read_capture  # noqa: E402
from multiview.errors import Orbit4dError  # noqa: E402

STEPS = ("frames", "features", "matching", "mapping", "undistort", "total")


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # under the data folder: an image folder or a video
    ground_truth: str = ""  # Strecha cameras folder, if any


DATASETS = {
    d.name: d
    for d in (
        Dataset("herz_jesus", "captures/herz_jesus_p8/images", "captures/herz_jesus_p8/gt_dense_cameras"),
        Dataset("great_wall", "videos/great_wall_aerial.mp4"),
        Dataset("sacre_coeur", "captures/sacre_coeur/mapping"),
        Dataset("statue", "captures/vggsfm_statue/images"),
        Dataset("kitchen", "captures/vggsfm_kitchen/images"),
        Dataset("fox", "captures/ingp_fox/images"),
    )
}


def pose_accuracy(capture_dir: Path, gt_dir: Path) -> dict:
    """Median/max camera-centre and rotation errors of the written capture against Strecha ground truth."""
    frames = read_capture(capture_dir).frames
    reference = [read_strecha_camera(gt_dir / f"{f.image_path.stem}.jpg.camera").cam_from_world for f in frames]
    estimated = [f.camera.cam_from_world for f in frames]
    return compare_poses(np.stack(estimated), np.stack(reference)).summary()


def bench_one(dataset: Dataset, data: Path, scratch: Path, config: process.CaptureConfig) -> dict:
    out = scratch / dataset.name
    try:
        process.run(config, data / dataset.source, out)
    except Orbit4dError as error:
        return {"dataset": dataset.name, "error": str(error)}
    report = json.loads((out / "report.json").read_text())
    row = {key: report[key] for key in ("registered", "total", "mean_reprojection_error_px", "num_points", "seconds")}
    row |= {"dataset": dataset.name, "attempts": len(report["sfm"]["attempts"]), "matcher": report["sfm"]["matcher"]}
    if dataset.ground_truth:
        row["accuracy"] = pose_accuracy(out, data / dataset.ground_truth)
    return row


def markdown_table(rows: list[dict]) -> str:
    head = "| dataset | registered | reproj. px | points | " + " | ".join(f"{s} s" for s in STEPS) + " | attempts |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['dataset']} | failed: {row['error']} |")
            continue
        seconds = " | ".join(f"{row['seconds'].get(step, 0.0):.1f}" for step in STEPS)
        lines.append(
            f"| {row['dataset']} | {row['registered']}/{row['total']} ({row['registered'] / row['total']:.0%}) | "
            f"{row['mean_reprojection_error_px']:.2f} | {row['num_points']} | {seconds} | "
            f"{row['attempts']} ({row['matcher']}) |"
        )
    for row in rows:
        if "accuracy" in row:
            a = row["accuracy"]
            lines.append(
                f"\n{row['dataset']} against ground truth: median camera-centre error "
                f"{100 * a['median_center_error_relative']:.3f}% of the largest ground-truth distance "
                f"(max {100 * a['max_center_error_relative']:.3f}%), median rotation error "
                f"{a['median_rotation_error_deg']:.3f}° (max {a['max_rotation_error_deg']:.3f}°)."
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--datasets", nargs="*", default=["herz_jesus", "great_wall"],
                        help=f"any of {', '.join(DATASETS)}, or 'all'")
    parser.add_argument("--frames", type=int, default=None, help="frames to select from videos (default 100)")
    parser.add_argument("--max-size", type=int, default=None, help="longest image side (default 1600)")
    parser.add_argument("--mapper", default="incremental", choices=["incremental", "global"])
    parser.add_argument("--matcher", default="auto", choices=["auto", "sequential", "exhaustive"])
    parser.add_argument("--threads", type=int, default=-1)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    names = list(DATASETS) if args.datasets == ["all"] else args.datasets
    config = process.CaptureConfig.from_options(
        frames=args.frames, max_size=args.max_size, matcher=args.matcher, mapper=args.mapper, threads=args.threads
    )
    with tempfile.TemporaryDirectory(prefix="capture_bench_") as scratch:
        rows = [bench_one(DATASETS[name], args.data, Path(scratch), config) for name in names]
    print(f"\n{platform.node()} {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(markdown_table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
