"""Benchmark of multiview.sfm on the shared real captures: registration, time per step, pose accuracy.

    python bench/sfm_bench.py                       # every dataset, incremental mapper
    python bench/sfm_bench.py --datasets herz_jesus great_wall --mapper global --out bench_sfm.json

Images are downscaled first (``--max-side``, as the frame loader does in production); Herz-Jesus-P8 is
also compared with its ground-truth cameras after similarity alignment (multiview.align).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multiview import sfm  # noqa: E402
from multiview.align import compare_poses, read_strecha_camera  # noqa: E402
from multiview.errors import SfmError  # noqa: E402


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # path under the data folder: an image folder or a video
    ordered: bool
    video_frames: int = 0  # > 0: decode this many evenly spaced frames of a video
    ground_truth: str = ""  # Strecha cameras folder, if any


DATASETS = (
    Dataset(
        "herz_jesus", "captures/herz_jesus_p8/images", False, ground_truth="captures/herz_jesus_p8/gt_dense_cameras"
    ),
    Dataset("sacre_coeur", "captures/sacre_coeur/mapping", False),
    Dataset("statue", "captures/vggsfm_statue/images", False),
    Dataset("kitchen", "captures/vggsfm_kitchen/images", False),
    Dataset("fox", "captures/ingp_fox/images", True),
    Dataset("great_wall", "videos/great_wall_aerial.mp4", True, video_frames=96),
)


def prepare_images(dataset: Dataset, data: Path, dst: Path, max_side: int) -> Path:
    """Downscaled JPEG copies of the dataset's images, or evenly spaced frames of its video."""
    dst.mkdir(parents=True, exist_ok=True)
    source = data / dataset.source
    if dataset.video_frames:
        import av

        with av.open(str(source)) as container:
            frames = [frame.to_image() for frame in container.decode(video=0)]
        picks = np.linspace(0, len(frames) - 1, dataset.video_frames).round().astype(int)
        images = [(f"{k:05d}", frames[i]) for k, i in enumerate(picks)]
    else:
        paths = [p for p in sorted(source.iterdir()) if p.suffix.lower() in sfm.IMAGE_SUFFIXES]
        images = [(p.stem, Image.open(p)) for p in paths]
    for stem, image in images:
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side), Image.LANCZOS)
        image.save(dst / f"{stem}.jpg", quality=95)
    return dst


def pose_accuracy(model_dir: Path, gt_dir: Path) -> dict:
    poses = sfm.registered_poses(model_dir)
    names = sorted(poses)
    reference = np.stack([read_strecha_camera(gt_dir / f"{name}.camera").cam_from_world for name in names])
    return compare_poses(np.stack([poses[name] for name in names]), reference).summary()


def bench_one(dataset: Dataset, data: Path, scratch: Path, config: sfm.SfmConfig, max_side: int) -> dict:
    tic = time.perf_counter()
    images = prepare_images(dataset, data, scratch / dataset.name / "images", max_side)
    row: dict = {"dataset": dataset.name, "prepare_s": round(time.perf_counter() - tic, 2)}
    try:
        result = sfm.run(config, images, scratch / dataset.name / "work", ordered=dataset.ordered)
    except SfmError as error:
        return row | {"error": str(error)}
    row |= result.summary()
    if dataset.ground_truth:
        row["accuracy"] = pose_accuracy(result.model_dir, data / dataset.ground_truth)
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'dataset':<12} {'reg':>7} {'err px':>7} {'points':>7} {'feat s':>7} {'match s':>7} {'map s':>7} "
          f"{'total s':>7} attempts")
    for row in rows:
        if "error" in row:
            print(f"{row['dataset']:<12} failed: {row['error']}")
            continue
        s = row["seconds"]
        print(
            f"{row['dataset']:<12} {row['registered']:>3}/{row['total']:<3} {row['mean_reprojection_error_px']:>7.2f} "
            f"{row['num_points']:>7} {s['features']:>7.1f} {s['matching']:>7.1f} {s['mapping']:>7.1f} "
            f"{s['total']:>7.1f} {len(row['attempts'])} ({row['matcher']})"
        )
        if "accuracy" in row:
            a = row["accuracy"]
            print(
                f"{'':<12} median centre error {100 * a['median_center_error_relative']:.3f}% of extent, "
                f"median rotation error {a['median_rotation_error_deg']:.3f} deg"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--datasets", nargs="*", default=[d.name for d in DATASETS])
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--mapper", default="incremental", choices=sfm.MAPPERS)
    parser.add_argument("--matcher", default="auto", choices=sfm.MATCHERS)
    parser.add_argument("--threads", type=int, default=-1)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    config = sfm.SfmConfig(matcher=args.matcher, mapper=args.mapper, num_threads=args.threads)
    chosen = [d for d in DATASETS if d.name in args.datasets]
    with tempfile.TemporaryDirectory(prefix="sfm_bench_") as scratch:
        rows = [bench_one(d, args.data, Path(scratch), config, args.max_side) for d in chosen]
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
