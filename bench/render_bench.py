"""Benchmark of synthetic captures rendered with Blender (``multiview.render_asset``): seconds per frame.

    python bench/render_bench.py                               # Avocado and Fox, 8 views, 256 and 512 px, 16 samples
    python bench/render_bench.py --sizes 256 --samples 64 --views 4

One frame = one anti-aliased colour render (Cycles, CPU, ``--samples``) plus the one-sample geometry render that gives
depth, normals and the mask, and writing them. Load/normalize time and Blender start-up are outside the per-frame
figures but inside "total s". Paste the printed table into bench/RESULTS.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multiview.render_asset import RenderConfig, render_asset  # noqa: E402

MODELS = {
    "Avocado": ("models/Avocado/Avocado.gltf", None),
    "Fox (Walk)": ("models/Fox.glb", "Walk"),
}


def bench_one(name: str, model: Path, animation: str | None, size: int, args, scratch: Path) -> dict:
    out = scratch / f"{name.split()[0]}_{size}"
    out.mkdir()
    config = RenderConfig(
        num_views=args.views, width=size, height=size, samples=args.samples, animation=animation, time_steps=1
    )
    render_asset(config, model, out)
    report = json.loads((out / "report.json").read_text())
    return {
        "asset": name,
        "size": size,
        "views": report["views"],
        "color": report["seconds_per_frame_color"],
        "passes": report["seconds_per_frame_passes"],
        "frame": report["seconds_per_frame"],
        "total": report["seconds"],
        "blender": report["blender_version"],
    }


def markdown_table(rows: list[dict], samples: int) -> str:
    lines = [
        f"| asset | image | views | colour s/frame ({samples} spp) | depth+normals+mask s/frame | s/frame | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['asset']} | {row['size']}×{row['size']} | {row['views']} | {row['color']:.3f} | "
            f"{row['passes']:.3f} | {row['frame']:.3f} | {row['total']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="render-bench-") as scratch:
        for name, (relative, animation) in MODELS.items():
            for size in args.sizes:
                rows.append(bench_one(name, args.data / relative, animation, size, args, Path(scratch)))
                print(json.dumps(rows[-1]), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    blender = rows[0]["blender"] if rows else "?"
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, bpy {blender}")
    print(markdown_table(rows, args.samples))


if __name__ == "__main__":
    main()
