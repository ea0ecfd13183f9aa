"""Training splats on a generated orbit: which settings make the 3D scene robust to views that disagree.

A generator's orbit has few small views with exact cameras, an object on white, and views that do not quite agree
with each other. Before a real model exists this stands in for one: Blender renders an asset at the orbit's azimuths
(radius 2, 33.8 degrees, as the generator's training renders), and every view but the input is disturbed a little,
each in its own way: shifted, scaled and turned in the image (up to ``--shift`` of the side, ``--zoom``,
``--turn`` degrees), its colours scaled (up to ``--gain``) and blurred (``--blur`` px). The capture is then written
as ``orbit4d image-to-3d`` writes its own (masks found on the white background, points in their visual hull), and
each variant of the training settings trains on it. The scenes are measured against clean Blender renders at the
orbit's azimuths and between them: PSNR on white and the foreground mask IoU.

    python bench/orbit_train_bench.py                                   # spot and Avocado, five variants
    python bench/orbit_train_bench.py --assets a.glb --variants orbit 3dgs --size 64 --frames 8

Paste the table into bench/RESULTS.md with the date, the machine and the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFilter
import torch

from orbit_truth import REPO, asset_path, load_truth, mean, measure, render_truth  # noqa: E402  (REPO on sys.path)

from generate.cameras import Orbit  # noqa: E402
from multiview.capture import Capture, read_capture, write_capture  # noqa: E402
from orbit4d.image_to_3d import ImageTo3DConfig, write_masked_orbit  # noqa: E402
from reconstruct import train  # noqa: E402
from reconstruct.ply import read_ply  # noqa: E402

DEFAULT_VARIANTS = ["3dgs", "orbit", "orbit-sh3", "orbit-random-init", "orbit-appearance"]

# name -> (TrainConfig changes from the orbit preset, capture kind: "orbit" masks + 20,000 hull points (image-to-3d's),
# "orbit-5k" masks + 5,000, "masks" masks and no points (random start), "plain" neither)
VARIANTS = {
    "3dgs": (dict(sh_degree=3, background="white", max_gaussians=None), "plain"),
    "orbit": ({}, "orbit"),
    "orbit-sh3": (dict(sh_degree=3), "orbit"),
    "orbit-random-init": ({}, "masks"),
    "orbit-appearance": (dict(appearance=True), "orbit"),
    "orbit-pose-opt": (dict(pose_opt=True), "orbit"),
    "orbit-reg": (dict(opacity_reg=0.01, scale_reg=0.01), "orbit"),
    "orbit-hull-5k": ({}, "orbit-5k"),
    "orbit-800": (dict(steps=800), "orbit"),
    "orbit-3000": (dict(steps=3000), "orbit"),
}


def disturb(rgb: np.ndarray, args, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` [S, S, 3] uint8 on white, shifted / scaled / turned, colour-scaled and blurred at random."""
    size = rgb.shape[0]
    angle = math.radians(rng.uniform(-args.turn, args.turn))
    zoom = 1.0 + rng.uniform(-args.zoom, args.zoom)
    shift = rng.uniform(-args.shift, args.shift, 2) * size
    c = (size - 1) / 2.0
    # PIL maps output to input: x_in = a x + b y + e
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    coefficients = (cos, sin, c - cos * (c + shift[0]) - sin * (c + shift[1]),
                    -sin, cos, c + sin * (c + shift[0]) - cos * (c + shift[1]))  # fmt: skip
    image = PIL.Image.fromarray(rgb).transform((size, size), PIL.Image.Transform.AFFINE, coefficients,
                                               PIL.Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))  # fmt: skip
    if args.blur > 0:
        image = image.filter(PIL.ImageFilter.GaussianBlur(args.blur))
    gain = 1.0 + rng.uniform(-args.gain, args.gain, 3)
    return np.clip(np.asarray(image, np.float32) * gain, 0, 255).astype(np.uint8)


def make_captures(asset: Path, work: Path, args) -> tuple[dict[str, Path], list]:
    """({kind: capture folder}, truth views at the bench size) for ``asset``."""
    truth_dir = render_truth(asset, work / "truth", args.frames, args.elevation, args.size)
    truth = load_truth(truth_dir)
    ring = [view for view in truth if not view.between]
    rng = np.random.default_rng(args.seed)
    pixels = [(view.rgb * 255 + 0.5).astype(np.uint8) for view in ring]
    inputs = int(np.argmin([min(v.azimuth_deg, 360 - v.azimuth_deg) for v in ring]))
    frames = [pixels[i] if i == inputs else disturb(pixels[i], args, rng) for i in range(len(ring))]
    orbit = Orbit([v.camera for v in ring], np.full(len(ring), args.elevation), np.array([v.azimuth_deg for v in ring]))
    captures = {kind: work / kind for kind in ("orbit", "orbit-5k", "masks", "plain")}
    for kind, points in (("orbit", 20_000), ("orbit-5k", 5_000)):
        if not (captures[kind] / "transforms.json").is_file():
            stage = work / f".{kind}.partial"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
            tensor = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
            write_masked_orbit(stage, pixels[inputs], ring[inputs].mask.astype(np.float32), tensor, orbit,
                               {"source": str(asset)}, ImageTo3DConfig(seed=args.seed, hull_points=points))  # fmt: skip
            os.replace(stage, captures[kind])
    full = read_capture(captures["orbit"])
    for kind, keep_masks in (("masks", True), ("plain", False)):
        if not (captures[kind] / "transforms.json").is_file():
            shutil.copytree(captures["orbit"] / "images", captures[kind] / "images", dirs_exist_ok=True)
            if keep_masks:
                shutil.copytree(captures["orbit"] / "masks", captures[kind] / "masks", dirs_exist_ok=True)
            moved = [replace(f, image_path=captures[kind] / "images" / f.image_path.name,
                             mask_path=(captures[kind] / "masks" / f.image_path.name) if keep_masks else None)
                     for f in full.frames]  # fmt: skip
            write_capture(Capture(captures[kind], moved))
    return captures, truth


def train_variant(name: str, captures: dict[str, Path], truth: list, work: Path, args) -> dict:
    changes, kind = VARIANTS[name]
    config = train.TrainConfig.preset("orbit", device="cpu", steps=args.steps, seed=args.seed, turntable_frames=0,
                                      psnr_samples=0, checkpoint_every=0)  # fmt: skip
    config = replace(config, **changes)
    tic = time.perf_counter()
    scene = train.run(config, captures[kind], work / f"scene-{name}", overwrite=True)
    seconds = time.perf_counter() - tic
    rows = measure(read_ply(scene / "splats.ply"), truth)
    return {"variant": name, "seconds": seconds, "between_psnr": mean(rows, "psnr", True),
            "orbit_psnr": mean(rows, "psnr", False), "between_iou": mean(rows, "iou", True),
            "orbit_iou": mean(rows, "iou", False), "gaussians": len(read_ply(scene / "splats.ply"))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", nargs="+", default=["spot", "Avocado"],
                        help="spot, Avocado, Duck, Fox (../shared/data) or paths to assets")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--elevation", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=train.PRESETS["orbit"]["steps"])
    parser.add_argument("--shift", type=float, default=0.015, help="largest shift, in image sides")
    parser.add_argument("--zoom", type=float, default=0.03)
    parser.add_argument("--turn", type=float, default=2.0, help="largest in-plane turn, degrees")
    parser.add_argument("--gain", type=float, default=0.08, help="largest colour gain change")
    parser.add_argument("--blur", type=float, default=0.6, help="Gaussian blur, pixels (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_orbit_train")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.assets:
        asset = asset_path(name, args.work)
        work = args.work / f"{asset.stem}_{args.size}_{args.frames}"
        captures, truth = make_captures(asset, work, args)
        for name in args.variants:
            results[(asset.stem, name)] = train_variant(name, captures, truth, work, args)
    print(f"\n{platform.node()}, {os.cpu_count()} cores; {args.frames} views at {args.size} px, elevation "
          f"{args.elevation}, disturbed by shift {args.shift}, zoom {args.zoom}, turn {args.turn} deg, gain "
          f"{args.gain}, blur {args.blur} px; {args.steps} steps unless the variant says\n")
    print("| asset | variant | PSNR between | PSNR at orbit | IoU between | IoU at orbit | Gaussians | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for (asset, _), r in results.items():
        print(f"| {asset} | {r['variant']} | {r['between_psnr']:.2f} | {r['orbit_psnr']:.2f} | {r['between_iou']:.3f} "
              f"| {r['orbit_iou']:.3f} | {r['gaussians']:,} | {r['seconds']:.0f} |")
    print("\n| variant | mean PSNR between | mean PSNR at orbit | mean IoU between | mean IoU at orbit |")
    print("|---|---|---|---|---|")
    for name in args.variants:
        rows = [r for (_, variant), r in results.items() if variant == name]
        print(f"| {name} | {np.mean([r['between_psnr'] for r in rows]):.2f} | "
              f"{np.mean([r['orbit_psnr'] for r in rows]):.2f} | {np.mean([r['between_iou'] for r in rows]):.3f} | "
              f"{np.mean([r['orbit_iou'] for r in rows]):.3f} |")


if __name__ == "__main__":
    main()
