"""How much of the frame an object fills in the generator's training renders: what ``image-to-3d`` reproduces.

    python bench/framing_bench.py                                   # the shared assets, 8 views x 4 elevations
    python bench/framing_bench.py --assets path/a.glb path/b.obj --size 128

The generator's clips (``generate.dataset``) are rendered with the asset centred, its largest bounding-box side 1,
the camera at radius 2 with a 33.8 degree field of view. For every view this measures the larger side of the
object's 2D bounding box over the image side ("fill") and how far the box centre lies from the image centre (in
image sides), then prints them per asset and overall. ``generate.framing.TRAINING_FILL`` is the overall median.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from generate.dataset import DatasetConfig  # noqa: E402
from multiview.render_asset import RenderConfig, render_asset  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "models"
ASSETS = [SHARED / "spot" / "spot" / "spot_triangulated.obj", SHARED / "Avocado" / "Avocado.gltf",
          SHARED / "Duck.glb", SHARED / "Fox.glb"]  # fmt: skip


def measure(mask_path: Path) -> tuple[float, float]:
    """(fill, centre offset) of one mask, both in image sides."""
    mask = np.asarray(PIL.Image.open(mask_path)) > 127
    rows, cols = np.nonzero(mask)
    side = max(mask.shape)
    fill = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) / side
    centre = np.array([(rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2])
    offset = float(np.linalg.norm(centre - (np.array(mask.shape) - 1) / 2)) / side
    return fill, offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, nargs="+", default=ASSETS)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--elevations", type=float, nargs="+", default=[-5.0, 5.0, 15.0, 30.0])
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    data = DatasetConfig()
    rows, everything = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for asset in args.assets:
            out = Path(scratch) / asset.stem
            out.mkdir()
            config = RenderConfig(num_views=args.views * len(args.elevations), elevations_deg=tuple(args.elevations),
                                  radius=data.radius, fov_deg=data.fov_deg, width=args.size, height=args.size,
                                  samples=1)  # fmt: skip
            render_asset(config, asset, out)
            values = np.array([measure(path) for path in sorted((out / "masks").glob("*.png"))])
            everything.append(values)
            rows.append((asset.name, values))
    print(f"\n{platform.node()}: radius {data.radius}, fov {data.fov_deg} deg, {args.views} views at elevations "
          f"{args.elevations}, {args.size} px\n")
    print("| asset | views | fill median | fill 10-90% | centre offset median |")
    print("|---|---|---|---|---|")
    for name, values in rows + [("all", np.concatenate(everything))]:
        low, high = np.percentile(values[:, 0], [10, 90])
        print(f"| {name} | {len(values)} | {np.median(values[:, 0]):.3f} | {low:.3f}-{high:.3f} | "
              f"{np.median(values[:, 1]):.3f} |")


if __name__ == "__main__":
    main()
