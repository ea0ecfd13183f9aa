"""Classic against antialiased rasterization (``orbit4d train --antialiased``): held-out PSNR at the training
resolution and at 1/2 and 1/4 of it, and time per step, on the CPU.

Trains the capture twice with the same settings, once per mode (``orbit4d train``, in this process), then renders
the held-out views of each scene at each resolution in both modes against the photos downscaled by the box filter
(what a viewer shows when the scene is seen smaller or farther away than photographed).

    python bench/antialiasing_bench.py                                  # the Avocado of train_bench, 3,000 steps
    python bench/antialiasing_bench.py CAPTURE --steps 2000 --downscale 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reconstruct import train  # noqa: E402
from reconstruct.data import load_scene  # noqa: E402
from reconstruct.evaluate import evaluate_views  # noqa: E402
from reconstruct.ply import read_ply  # noqa: E402

FACTORS = (1, 2, 4)


def mean_psnr(splats, views, antialiased: bool) -> float:
    results = evaluate_views(splats, views, torch.ones(3), antialiased=antialiased)
    return sum(r["psnr"] for r in results) / len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture", type=Path, nargs="?", default=REPO / "outputs" / "bench_train" / "avocado_capture",
                        help="default: train_bench's Avocado capture (run bench/train_bench.py avocado first)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--downscale", type=int, default=1, help="training resolution: 1 / this of the photos")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_antialiasing")
    args = parser.parse_args()
    config = train.TrainConfig(steps=args.steps, downscale=args.downscale, device="cpu", psnr_samples=0,
                               turntable_frames=0)  # fmt: skip
    rows = []
    for antialiased in (False, True):
        name = "antialiased" if antialiased else "classic"
        ends: list[float] = []
        out = train.run(replace(config, antialiased=antialiased), args.capture, args.out / name, overwrite=True,
                        on_step=lambda state: ends.append(time.perf_counter()))  # fmt: skip
        report = json.loads((out / "metrics.json").read_text())
        splats = read_ply(out / "splats.ply")
        row = {"trained": name, "ms_per_step": 1000 * (ends[-1] - ends[0]) / max(len(ends) - 1, 1),
               "gaussians": report["num_gaussians"]}  # fmt: skip
        for factor in FACTORS:
            views = load_scene(args.capture, args.downscale * factor).test
            for mode in (False, True):
                row[(factor, mode)] = mean_psnr(splats, views, mode)
        rows.append(row)
    print(f"{time.strftime('%Y-%m-%d')}: {args.capture}, {args.steps} steps at downscale {args.downscale}, CPU "
          f"({torch.get_num_threads()} threads); held-out PSNR dB rendered classic / antialiased")
    print("| trained | " + " | ".join(f"1/{f} resolution" for f in FACTORS) + " | ms / step | Gaussians |")
    print("|---|" + "---|" * (len(FACTORS) + 2))
    for row in rows:
        cells = " | ".join(f"{row[(f, False)]:.2f} / {row[(f, True)]:.2f}" for f in FACTORS)
        print(f"| {row['trained']} | {cells} | {row['ms_per_step']:.1f} | {row['gaussians']:,} |")


if __name__ == "__main__":
    main()
