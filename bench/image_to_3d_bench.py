"""Quality of ``orbit4d image-to-3d`` against ground truth, on assets the generator never trained on.

For each asset, Blender renders the input photo (azimuth 0, ``--elevation``, radius 2, 33.8 degrees, ``--photo-size``
pixels; transparent background, or flattened on ``--background`` to exercise segmentation) and the ground truth at
the orbit's azimuths and between them (``orbit_truth``). ``image-to-3d`` runs on the photo as a user would (the
photo's elevation given), and its final splats are rendered at every ground-truth camera and compared on white at
the model's image size: PSNR and foreground mask IoU per azimuth, against two baselines, the input copied to every
view and the input mirrored. It also reports how well the splats reproduce the generated views (their PSNR after
training: the generator's own 3D consistency), and the time of each stage.

The splats live in the generator's frame: the photo was cropped and scaled to the model's framing
(``generate.framing``), which is, near the object, a similarity of the world (scale ``scale * photo / model`` and
a shift keeping the object at the orbit's distance). The ground-truth cameras are moved by that similarity, which
leaves their images unchanged, before the splats are rendered.

    python bench/image_to_3d_bench.py                              # spot and Avocado, the embedded model
    python bench/image_to_3d_bench.py --weights runs/a/model --assets ... --elevation 10 20 --background "#8090a0"

Paste the tables into bench/RESULTS.md with the date, the machine, the load average and the model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

from orbit_truth import REPO, asset_path, iou, load_truth, mean, measure, psnr, render_truth  # noqa: E402

from multiview.camera import Camera  # noqa: E402
from reconstruct.ply import read_ply  # noqa: E402



def model_defaults(weights: Path | None):
    """The model's OrbitDefaults without loading its weights."""
    from generate import EMBEDDED_MODEL
    from generate.convert import SV3D_DEFAULTS
    from generate.pipeline import INDEX_NAME, OrbitDefaults

    weights = Path(weights or EMBEDDED_MODEL)
    if weights.is_file():
        return SV3D_DEFAULTS
    return OrbitDefaults(**json.loads((weights / INDEX_NAME).read_text()).get("orbit", {}))


def write_photo(view_rgba: Path, path: Path, background: str | None) -> Path:
    """The input photo: the rendered RGBA as it is, or flattened on ``background`` (#rrggbb)."""
    image = PIL.Image.open(view_rgba).convert("RGBA")
    if background is not None:
        colour = tuple(int(background[i : i + 2], 16) for i in (1, 3, 5))
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", image.size, (*colour, 255)), image).convert("RGB")
    image.save(path)
    return path


def scene_cameras(truth, framing: dict, photo_size: int, input_camera: Camera) -> list[Camera]:
    """Each ground-truth camera moved by the similarity that takes the asset into the splats' frame (module
    docstring): scale sigma = scale * photo / model, the object kept at the input camera's distance D, shifted
    sideways by D (principal point of the framed photo - the model's) / f_model."""
    size, scale, origin = framing["size"], framing["scale"], framing["origin"]
    sigma = scale * photo_size / size
    focal = truth[0].camera.fx  # the model-size ground truth: the generator's own intrinsics
    centre_px = (photo_size - 1) / 2.0
    principal = [scale * (centre_px + 0.5 - origin[axis]) - 0.5 for axis in (0, 1)]
    distance = float(np.linalg.norm(input_camera.center))
    tau = np.array([distance * (principal[0] - truth[0].camera.cx) / focal,
                    distance * (principal[1] - truth[0].camera.cy) / focal, distance * (1.0 - sigma)])  # fmt: skip
    rotation = input_camera.cam_from_world[:3, :3]
    shift = rotation.T @ tau - (sigma - 1.0) * input_camera.center
    cameras = []
    for view in truth:
        world_from_cam = view.camera.world_from_cam.copy()
        world_from_cam[:3, 3] = sigma * view.camera.center + shift
        cameras.append(Camera(view.camera.K, np.linalg.inv(world_from_cam), view.camera.width, view.camera.height))
    return cameras


def baselines(truth, input_index: int) -> tuple[list[dict], list[dict]]:
    """Per view: the input copied, the input mirrored (PSNR, IoU against each ground-truth view)."""
    source = truth[input_index]
    copied, mirrored = [], []
    for view in truth:
        for rows, rgb, mask in ((copied, source.rgb, source.mask),
                                (mirrored, source.rgb[:, ::-1], source.mask[:, ::-1])):  # fmt: skip
            rows.append({"azimuth": view.azimuth_deg, "between": view.between, "psnr": psnr(rgb, view.rgb),
                         "iou": iou(mask, view.mask)})  # fmt: skip
    return copied, mirrored


def bench_asset(asset: Path, elevation: float, args, defaults) -> dict:
    from orbit4d.image_to_3d import ImageTo3DConfig, run
    from reconstruct import train

    work = args.work / f"{asset.stem}_e{elevation:g}_{args.background or 'rgba'}"
    truth_dir = render_truth(asset, work / "truth", defaults.num_frames, elevation, args.photo_size)
    truth_full = load_truth(truth_dir)
    input_index = int(np.argmin([min(v.azimuth_deg, 360 - v.azimuth_deg) for v in truth_full]))
    photo = write_photo(truth_full[input_index].image_path,
                        work / f"photo.{'png' if args.background is None else 'jpg'}", args.background)  # fmt: skip
    config = ImageTo3DConfig(weights=args.weights, elevation_deg=elevation, sample_steps=args.sample_steps,
                             seed=args.seed, device=args.device)  # fmt: skip
    train_config = train.TrainConfig.preset("orbit", device=args.device, **({"steps": args.steps} if args.steps
                                                                            else {}))  # fmt: skip
    tic = time.perf_counter()
    result = run(config, train_config, photo, work / "out", overwrite=True)
    wall = time.perf_counter() - tic
    truth = load_truth(truth_dir, defaults.image_size)
    framing = json.loads((result.capture / "report.json").read_text())["framing"]
    cameras = scene_cameras(truth, framing, args.photo_size, truth_full[input_index].camera)
    splats = read_ply(result.scene / "splats.ply")
    ours = measure(splats, truth, cameras)
    copied, mirrored = baselines(truth, input_index)
    metrics = json.loads((result.scene / "metrics.json").read_text())
    return {"asset": asset.stem, "elevation": elevation, "ours": ours, "copied": copied, "mirrored": mirrored,
            "generated_views_psnr": metrics["psnr"], "seconds": result.seconds, "wall": wall,
            "foreground": json.loads((result.capture / "report.json").read_text())["foreground"]}  # fmt: skip


def novel(rows: list[dict]) -> list[dict]:
    """The views other than the photo's own (azimuth 0), where the input copied is exact (PSNR capped at 120 dB): the
    averages are over the views the photo does not show, as eval-generator's."""
    return [row for row in rows if min(row["azimuth"] % 360, 360 - row["azimuth"] % 360) > 1e-3]


def print_tables(results: list[dict]) -> None:
    for r in results:
        print(f"\n{r['asset']}, elevation {r['elevation']:g} ({r['foreground']}); generated views reproduced at "
              f"{r['generated_views_psnr']:.2f} dB; wall {r['wall']:.0f} s ("
              + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items()) + ")\n")
        print("| azimuth | between | PSNR 3D | PSNR copied | PSNR mirrored | IoU 3D | IoU copied | IoU mirrored |")
        print("|---|---|---|---|---|---|---|---|")
        for ours, copied, mirrored in zip(r["ours"], r["copied"], r["mirrored"]):
            print(f"| {ours['azimuth']:.0f} | {'yes' if ours['between'] else ''} | {ours['psnr']:.2f} | "
                  f"{copied['psnr']:.2f} | {mirrored['psnr']:.2f} | {ours['iou']:.3f} | {copied['iou']:.3f} | "
                  f"{mirrored['iou']:.3f} |")
    print("\n| asset (views but the photo's own) | elevation | PSNR 3D | copied | mirrored | margin dB | IoU 3D | "
          "copied | mirrored | margin IoU | generated views dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p = {k: mean(novel(r[k]), "psnr") for k in ("ours", "copied", "mirrored")}
        q = {k: mean(novel(r[k]), "iou") for k in ("ours", "copied", "mirrored")}
        print(f"| {r['asset']} | {r['elevation']:g} | {p['ours']:.2f} | {p['copied']:.2f} | {p['mirrored']:.2f} | "
              f"{p['ours'] - max(p['copied'], p['mirrored']):+.2f} | {q['ours']:.3f} | {q['copied']:.3f} | "
              f"{q['mirrored']:.3f} | {q['ours'] - max(q['copied'], q['mirrored']):+.3f} | "
              f"{r['generated_views_psnr']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", nargs="+", default=["spot", "Avocado"],
                        help="spot, Avocado, Duck, Fox (../shared/data) or paths: assets the model never trained on")
    parser.add_argument("--weights", type=Path, default=None, help="generator (default: the embedded model)")
    parser.add_argument("--elevation", type=float, nargs="+", default=[15.0], help="photo elevations, degrees")
    parser.add_argument("--photo-size", type=int, default=256)
    parser.add_argument("--background", default=None, help="#rrggbb: flatten the photo on it (segmentation)")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="generator sampling steps (default: the model's own)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the orbit preset's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_image_to_3d")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    defaults = model_defaults(args.weights)
    results = [bench_asset(asset_path(name, args.work), elevation, args, defaults) for name in args.assets
               for elevation in args.elevation]  # fmt: skip
    print(f"\n{platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; weights "
          f"{args.weights or 'embedded'}: {defaults.num_frames} views at {defaults.image_size} px")
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    if any(math.isnan(mean(r["ours"], "psnr")) for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
