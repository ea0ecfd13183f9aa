"""Mesh accuracy of trained scenes against the ground truth they were rendered from (issue 18).

For each asset: ``orbit4d render-asset`` (48 orbit views at 256², elevations 5° and 30°), ``orbit4d train --preset
fast`` on the CPU (with ``--surface`` when asked), then the scene's mesh (``viewers.meshes.scene_mesh``, the
function ``orbit4d export`` calls) measured against ``ground_truth/mesh_t000.ply``: symmetric mean Chamfer distance
and F-score at 1% of the ground truth's bounding-box diagonal (``reconstruct.mesh.mesh_accuracy``), and the time to
mesh. Captures and scenes already in --out are reused (delete them to redo). Results: one JSON line per run in
OUT/results.jsonl, and a table.

    python bench/mesh_bench.py avocado spot                 # plain 3DGS
    python bench/mesh_bench.py avocado spot --surface       # trained with --surface
    python bench/mesh_bench.py avocado --depth expected     # another depth to fuse
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ASSETS = {"avocado": SHARED / "models" / "Avocado" / "Avocado.gltf",
          "spot": SHARED / "models" / "spot" / "spot" / "spot_triangulated.obj"}  # fmt: skip


def orbit4d(*argv) -> float:
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orbit4d", *(str(a) for a in argv)], check=True, cwd=REPO)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assets", nargs="+", choices=sorted(ASSETS))
    parser.add_argument("--surface", action="store_true", help="train with --surface")
    parser.add_argument("--depth", default="median", help="depth to fuse (MeshConfig.depth)")
    parser.add_argument("--resolution", type=int, default=None, help="voxels along the region's longest side")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_mesh")
    args = parser.parse_args()

    import numpy as np
    import trimesh

    from reconstruct.mesh import MeshConfig, mesh_accuracy
    from viewers.meshes import scene_mesh, write_mesh

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for asset in args.assets:
        capture = args.out / f"capture_{asset}"
        if not (capture / "transforms.json").is_file():
            orbit4d("render-asset", ASSETS[asset], "--out", capture, "--views", 48, "--elevation", 5, 30, "--size", 256,
                    "--overwrite")  # fmt: skip
        tag = "surface" if args.surface else "plain"  # scenes are kept per training: rerun to try another --depth
        scene = args.out / f"scene_{asset}_{tag}"
        if not (scene / "splats.ply").is_file():
            orbit4d("train", capture, "--out", scene, "--preset", "fast", "--device", "cpu", "--overwrite",
                    *(["--surface"] if args.surface else []))  # fmt: skip
        trained = json.loads((scene / "metrics.json").read_text())
        config = MeshConfig(depth=args.depth, **({"resolution": args.resolution} if args.resolution else {}))
        tic, cpu = time.perf_counter(), time.process_time()
        result = scene_mesh(scene, config)
        seconds, cpu = time.perf_counter() - tic, time.process_time() - cpu
        write_mesh(args.out / f"mesh_{asset}_{tag}_{args.depth}.ply", result.mesh, result.frame)
        truth = trimesh.load(capture / "ground_truth" / "mesh_t000.ply", process=False)
        accuracy = mesh_accuracy(result.mesh, np.asarray(truth.vertices), np.asarray(truth.faces))
        row = {"asset": asset, "training": tag, "depth": args.depth, "resolution": config.resolution,
               "psnr": trained["psnr"], "gaussians": trained["num_gaussians"], "train_s": trained["seconds"],
               "mesh_s": round(seconds, 1), "mesh_cpu_s": round(cpu, 1), "faces": len(result.mesh), "voxel": result.report.voxel_size,
               "load": os.getloadavg()[0], **accuracy}  # fmt: skip
        rows.append(row)
        with open(args.out / "results.jsonl", "a") as file:
            file.write(json.dumps(row) + "\n")
    print("| asset | training | depth | PSNR | Gaussians | train s | mesh s (CPU s) | triangles | Chamfer (% diag) | "
          "F@1% | precision / recall | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['asset']} | {r['training']} | {r['depth']} | {r['psnr']:.2f} | {r['gaussians']:,} | "
              f"{r['train_s']:.0f} | {r['mesh_s']:.1f} ({r['mesh_cpu_s']:.1f}) | {r['faces']:,} | {100 * r['chamfer_share']:.3f} | "
              f"{r['fscore']:.3f} | {r['precision']:.3f} / {r['recall']:.3f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
