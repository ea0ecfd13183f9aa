"""How well the orbit generator sees round objects it never trained on (issue 15's bar).

For each evaluation asset (the procedural assets the training set held out, and the permissive models of
``../shared/data/models``: Fox, Avocado, spot with its texture), Blender renders one orbit at the model's frame count
and size, at an elevation drawn from 10-20 degrees, on white; the model generates the orbit from the first view,
with the exact cameras; every other view is compared with Blender's: PSNR, SSIM, LPIPS (when its weights are on disk)
and the foreground's IoU against the renderer's mask, beside two baselines, the input copied to every view and the
input mirrored left-right. Writes OUT/metrics.json, OUT/table.md (overall, per azimuth, per group) and a contact
sheet per asset (OUT/sheets/: ground truth above generated, the input last).

    python bench/generator_quality.py --assets /work/gen/assets --holdout 40 --out outputs/generator_quality
    python bench/generator_quality.py --weights runs/a/model --assets assets/ --holdout 40 --out outputs/gq --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "models"
EVALUATION_MODELS = ("Fox.glb", "Avocado")  # permissive; Duck's licence is not; spot: textured_spot()


def evaluation_assets(procedural: Path, holdout: int, shared: Path, folder: Path) -> Path:
    """``folder`` with links to the last ``holdout`` procedural assets (the training set's held-out ones) and the
    shared evaluation models, spot with its texture."""
    from generate.dataset import find_assets

    folder.mkdir(parents=True, exist_ok=True)
    held_out = find_assets(procedural)[-holdout:] if holdout else []
    for source in [*held_out, *(shared / name for name in EVALUATION_MODELS if (shared / name).exists())]:
        link = folder / source.name
        if link.exists() or link.is_symlink():
            continue
        if source.is_dir():  # copied: find_assets does not descend into linked folders, nor do files leave theirs
            shutil.copytree(source.resolve(), link)
        else:
            link.symlink_to(source.resolve())
    if (shared / "spot" / "spot").is_dir() and not (folder / "spot").exists():
        textured_spot(shared / "spot" / "spot", folder / "spot")
    return folder


def textured_spot(source: Path, folder: Path) -> None:
    """spot's triangle mesh with its texture: the OBJ as published names no material (Blender would render it in
    its default near-white grey, whose foreground on white cannot be told), so the copy gets a .mtl that maps
    spot_texture.png on its UVs."""
    folder.mkdir(parents=True)
    shutil.copy2(source / "spot_texture.png", folder / "spot_texture.png")
    (folder / "spot.mtl").write_text("newmtl spot\nKd 1 1 1\nmap_Kd spot_texture.png\n")
    text = (source / "spot_triangulated.obj").read_text()
    (folder / "spot.obj").write_text("mtllib spot.mtl\nusemtl spot\n" + text)


class LiftedViews:
    """The lifted views alone, called as a pipeline is: what the UNet is given before it learns anything."""

    def __init__(self, defaults) -> None:
        self.defaults = defaults

    def __call__(self, image, orbit, num_steps=None, seed=0, sampler=None):
        from generate.lift import lift_views

        return lift_views(image, orbit)


def table(report: dict, groups: dict[str, dict]) -> str:
    """Markdown: model against the baselines, overall, per group of assets and per azimuth."""
    def row(name, r):
        b = r["baselines"]
        cells = [name, r.get("views", ""), f"{r['psnr']:.2f}", f"{b['copy']['psnr']:.2f}",
                 f"{b['mirror']['psnr']:.2f}", f"{r['ssim']:.3f}", f"{b['copy']['ssim']:.3f}",
                 f"{b['mirror']['ssim']:.3f}", _f(r["iou"]), _f(r.get("iou_colour")), _f(b["copy"]["iou"]),
                 _f(b["mirror"]["iou"]), _f(r["lpips"]), _f(b["copy"]["lpips"]), _f(b["mirror"]["lpips"])]  # fmt: skip
        return "| " + " | ".join(str(c) for c in cells) + " |"

    head = ("| | views | PSNR model | PSNR copy | PSNR mirror | SSIM model | SSIM copy | SSIM mirror | IoU model | "
            "IoU model (colours) | IoU copy | IoU mirror | LPIPS model | LPIPS copy | LPIPS mirror |\n|" + "---|" * 15)
    lines = [head, row("all (views averaged)", report)]
    lines += [row(f"{name} ({g['clips']} assets)", g) for name, g in groups.items()]
    lines += [row(f"azimuth {r['azimuth_deg']}°", r) for r in report["per_azimuth"]]
    return "\n".join(lines)


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def group_summaries(report: dict) -> dict[str, dict]:
    """Per-clip scores averaged over procedural assets and over each shared model."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for clip in report["per_clip"]:
        name = "procedural (held out)" if clip["asset"].startswith("asset_") else clip["asset"]
        groups.setdefault(name, []).append(clip)
    out = {}
    for name, clips in groups.items():
        def mean(get):
            values = [v for v in (get(c) for c in clips) if v is not None]
            return float(np.mean(values)) if values else None

        keys = ("psnr", "ssim", "lpips", "iou", "iou_colour")
        out[name] = {**{k: mean(lambda c, k=k: c[k]) for k in keys}, "clips": len(clips),
                     "baselines": {m: {k: mean(lambda c, k=k, m=m: c["baselines"][m][k]) for k in keys}
                                   for m in ("copy", "mirror")}}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="model folder (default: the embedded model)")
    parser.add_argument("--assets", type=Path, required=True, help="the procedural assets the model trained on")
    parser.add_argument("--holdout", type=int, default=40, help="how many of them (the last by name) it never saw")
    parser.add_argument("--shared", type=Path, default=SHARED_MODELS, help="folder with Fox.glb, Avocado/, spot/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lift-only", action="store_true",
                        help="score the lifted views (generate.lift, the UNet's geometric guess) in place of the model")
    args = parser.parse_args()

    import PIL.Image
    import torch

    from generate import EMBEDDED_MODEL
    from generate.dataset import DATASET_FILE, DatasetConfig, OrbitClips, build_orbit_dataset
    from generate.pipeline import OrbitPipeline
    from multiview.outputs import write_json
    from orbit4d.eval_generator import contact_sheet, evaluate

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    weights = args.weights or EMBEDDED_MODEL
    pipeline = OrbitPipeline.from_pretrained(weights)
    d = pipeline.defaults
    data = args.out / f"data_{d.num_frames}x{d.image_size}"
    if not (data / DATASET_FILE).is_file():
        assets = evaluation_assets(args.assets, args.holdout, args.shared, args.out / "assets")
        config = DatasetConfig(num_frames=d.num_frames, image_size=d.image_size, radius=d.radius, fov_deg=d.fov_deg,
                               clips_per_asset=1, elevation_range_deg=(10.0, 20.0), holdout="all",
                               background="white", samples=64, seed=1234)  # fmt: skip
        build_orbit_dataset(config, assets, data, workers=2)
    tic = time.perf_counter()
    model = LiftedViews(d) if args.lift_only else pipeline
    report, pairs = evaluate(model, OrbitClips(data, "test"), args.steps, args.seed, weights=weights)
    seconds = time.perf_counter() - tic
    groups = group_summaries(report)
    (args.out / "sheets").mkdir(parents=True, exist_ok=True)
    for clip, pair in zip(report["per_clip"], pairs):
        PIL.Image.fromarray(contact_sheet([pair])).save(args.out / "sheets" / f"{Path(clip['asset']).stem}.png")
    write_json(args.out / "metrics.json", {**report, "groups": groups, "weights": str(Path(weights).resolve()),
                                           "seconds": round(seconds, 1)})  # fmt: skip
    text = table(report, groups)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(f"{len(pairs)} clips, {report['steps']} sampling steps, {seconds:.0f} s")


if __name__ == "__main__":
    main()
