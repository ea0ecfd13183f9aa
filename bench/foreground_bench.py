"""How well ``image-to-3d`` finds the object in a photo without transparency (GrabCut seeded from the border).

Blender renders assets with a transparent background (the exact mask); each render is then flattened onto
backgrounds of growing difficulty: plain colours, a gradient with noise, and crops of real photos (the bundled
Sacré-Cœur photos, blurred as a shallow depth of field would, and sharp). ``multiview.foreground.find_foreground``
runs on each, and its mask is compared with the exact one (IoU); a photo it refuses (no object or no background
found: the line that suggests an RGBA image, --mask or --no-segment) is counted apart.

    python bench/foreground_bench.py                       # spot, Avocado and Duck, 4 views each at 256 px
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFilter

from orbit_truth import REPO, asset_path, iou  # noqa: E402  (puts REPO on sys.path)

from multiview.errors import InputError  # noqa: E402
from multiview.foreground import find_foreground  # noqa: E402
from multiview.render_asset import RenderConfig, render_asset  # noqa: E402


def backgrounds(size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Name -> [size, size, 3] float background."""
    v, u = np.mgrid[0:size, 0:size] / size
    photos = sorted((REPO / "examples" / "sacre_coeur").glob("*.jpg"))
    photo = np.asarray(PIL.Image.open(photos[int(rng.integers(len(photos)))]).convert("RGB"))
    top, left = (int(rng.integers(0, max(1, s - size))) for s in photo.shape[:2])
    crop = PIL.Image.fromarray(photo[top : top + size, left : left + size]).resize((size, size))
    return {
        "white": np.full((size, size, 3), 255.0),
        "grey": np.full((size, size, 3), 128.0),
        "light colour": np.full((size, size, 3), rng.uniform(150, 255, 3)),
        "gradient + noise": np.stack([60 + 120 * v, 90 + 80 * u, 150 - 60 * v], -1) + rng.normal(0, 4, (size, size, 3)),
        "photo, blurred": np.asarray(crop.filter(PIL.ImageFilter.GaussianBlur(size / 64)), np.float64),
        "photo, sharp": np.asarray(crop, np.float64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", nargs="+", default=["spot", "Avocado", "Duck"])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_foreground")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results: dict[str, list] = {}
    seconds = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.assets:
            out = args.work / f"{name}_{args.size}"
            if not (out / "transforms.json").is_file():
                out.mkdir(parents=True, exist_ok=True)
                render_asset(RenderConfig(num_views=args.views, elevations_deg=(15.0,), width=args.size,
                                          height=args.size, samples=16), asset_path(name, args.work), out)  # fmt: skip
            for image_path in sorted((out / "images").glob("*.png")):
                rgba = np.asarray(PIL.Image.open(image_path).convert("RGBA"), np.float64)
                alpha = rgba[..., 3:] / 255.0
                truth = alpha[..., 0] > 0.5
                for kind, background in backgrounds(args.size, rng).items():
                    photo = np.clip(rgba[..., :3] * alpha + background * (1 - alpha), 0, 255).astype(np.uint8)
                    path = Path(scratch) / "photo.jpg"
                    PIL.Image.fromarray(photo).save(path, quality=92)
                    tic = time.perf_counter()
                    try:
                        found = find_foreground(path)
                        results.setdefault(kind, []).append(iou(found.alpha > 0.5, truth))
                    except InputError:
                        results.setdefault(kind, []).append(None)
                    seconds.append(time.perf_counter() - tic)
    print(f"\n{platform.node()}, load {os.getloadavg()[0]:.1f}; {len(args.assets)} assets x {args.views} views at "
          f"{args.size} px; GrabCut {np.median(seconds):.2f} s per photo (median)\n")
    print("| background | photos | refused | IoU median | IoU worst | IoU >= 0.9 |")
    print("|---|---|---|---|---|---|")
    for kind, values in results.items():
        found = [v for v in values if v is not None]
        median, worst = (np.median(found), min(found)) if found else (float("nan"), float("nan"))
        print(f"| {kind} | {len(values)} | {len(values) - len(found)} | {median:.3f} | {worst:.3f} | "
              f"{sum(v >= 0.9 for v in found)} |")


if __name__ == "__main__":
    main()
