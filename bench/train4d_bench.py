"""4D splats on the synthetic Fox (issue 21): held-out PSNR over all time steps against an independent 3D scene per
time step, and the jitter of the motion, with CPU time and peak memory of each part.

The capture: ``orbit4d render-asset Fox.glb --layout rig --views 9 --animation Walk --time-steps 24 --size 256`` (9
cameras on a ring, camera 8 held out; 24 time steps over the walk cycle), made once in ``--out``.

Parts, each in its own process (its CPU time, user + system, and peak resident memory read from ``os.wait4``):

- ``4d``: ``reconstruct.train4d`` (``--steps``, ``--motion``, ...) on the 8 training cameras, evaluated on camera 8
  at every time step (metrics.json's psnr / ssim / per_time), its motion's jitter with Gaussian identity, and the
  nearest-neighbour-matched jitter of its per-frame .ply files (``evaluate4d.matched_jitter``);
- ``per-frame``: ``reconstruct.train`` on each time step's 8 training views alone (``--frame-steps`` each,
  everything else at its defaults), each scene evaluated on camera 8 at its time; the matched jitter of the scenes.
  ``--first N`` trains the first N time steps only (consecutive, so that the jitter is defined; a scene already
  trained with the same steps is reused), and the 4D results are also given over those time steps
  (``subset_4d``: the mean of its per-time PSNR and the matched jitter of its first N frames), for a like-for-like
  comparison at a fraction of the CPU time.

    python bench/train4d_bench.py --out outputs/bench4d                       # both parts
    python bench/train4d_bench.py --out outputs/bench4d --parts 4d --motion poly --name poly
    python bench/train4d_bench.py --out outputs/bench4d --parts per-frame --frame-steps 1000 --first 8 \
        --name perframe --compare-to outputs/bench4d/scene4d_bspline

Results go to ``OUT/results_NAME.json`` and a line per part to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOX = REPO.parent / "shared" / "data" / "models" / "Fox.glb"
HELD_OUT = 8


def render_capture(capture: Path) -> None:
    if (capture / "transforms.json").is_file():
        return
    subprocess.run([sys.executable, "-m", "orbit4d", "render-asset", FOX, "--out", capture, "--layout", "rig",
                    "--views", "9", "--animation", "Walk", "--time-steps", "24", "--size", "256"],
                   check=True, cwd=REPO)  # fmt: skip


def measured(argv: list[str]) -> dict:
    """Run this script with ``argv`` in a child process; its CPU seconds, peak memory and wall time."""
    tic = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, *argv], cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"part {argv} failed")
    return {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "wall_seconds": round(time.perf_counter() - tic, 1)}  # fmt: skip


def part_4d(args: argparse.Namespace) -> dict:
    from reconstruct import train4d
    from reconstruct.evaluate4d import matched_jitter
    from reconstruct.ply import read_ply

    config = train4d.Train4DConfig(steps=args.steps, basis=args.motion, motion_points=args.motion_points,
                                   smoothness=args.smoothness, lifespans=not args.no_lifespans,
                                   lr_motion=args.lr_motion, device="cpu", checkpoint_every=0)  # fmt: skip
    scene = train4d.run(config, args.capture, args.out / f"scene4d_{args.name}", overwrite=True)
    report = json.loads((scene / "metrics.json").read_text())
    frames = [read_ply(path) for path in sorted((scene / "sequence").glob("frame_*.ply"))]
    return {"psnr": report["psnr"], "ssim": report["ssim"], "per_time_psnr": [p["psnr"] for p in report["per_time"]],
            "jitter_identity": report["jitter"], "jitter_matched": matched_jitter(frames),
            "num_gaussians": report["num_gaussians"], "train_seconds": report["seconds"],
            "file_sizes": report["file_sizes"], "motion": report["motion"], "steps": report["steps"]}  # fmt: skip


def part_per_frame(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from multiview.capture import Frame, read_capture, write_transforms
    from reconstruct import train
    from reconstruct.data import load_scene
    from reconstruct.evaluate import evaluate_views, parse_background
    from reconstruct.evaluate4d import matched_jitter
    from reconstruct.ply import read_ply

    capture = read_capture(args.capture)
    times = sorted({frame.camera.time for frame in capture.frames})[: args.first]
    held_out = load_scene(args.capture, test_every=0).train  # every view, to find camera 8's at each time
    results, frames = [], []
    for index, t in enumerate(times):
        root = args.out / "per_frame" / f"t{index:03d}"
        capture_dir = root / "capture"
        if not (capture_dir / "transforms.json").is_file():
            (capture_dir / "images").mkdir(parents=True, exist_ok=True)
            (capture_dir / "masks").mkdir(exist_ok=True)
            chosen = []
            for frame in capture.frames:
                if frame.camera.time != t or frame.camera.camera_id == HELD_OUT:
                    continue
                image = capture_dir / "images" / frame.image_path.name
                mask = capture_dir / "masks" / frame.mask_path.name
                for link, source in ((image, frame.image_path), (mask, frame.mask_path)):
                    if not link.exists():
                        link.symlink_to(source)
                chosen.append(Frame(image, frame.camera, mask_path=mask))
            write_transforms(capture_dir / "transforms.json", chosen, capture_dir)
        config = train.TrainConfig(steps=args.frame_steps, test_every=0, turntable_frames=0, psnr_samples=0,
                                   checkpoint_every=0, device="cpu", allow_outside_paths=True)  # links to the rig's
        done = root / "scene" / "metrics.json"
        if not done.is_file() or json.loads(done.read_text())["steps"] != args.frame_steps:
            train.run(config, capture_dir, root / "scene", overwrite=True)
        splats = read_ply(root / "scene" / "splats.ply")
        view = next(v for v in held_out if v.camera.time == t and v.camera.camera_id == HELD_OUT)
        results.append(evaluate_views(splats, [view], parse_background("white"))[0])
        frames.append(splats)
    result = {"psnr": float(np.mean([r["psnr"] for r in results])),
              "ssim": float(np.mean([r["ssim"] for r in results])), "per_time_psnr": [r["psnr"] for r in results],
              "jitter_matched": matched_jitter(frames), "num_gaussians_mean": float(np.mean([len(f) for f in frames])),
              "frame_steps": args.frame_steps, "time_steps": len(times), "torch_threads": torch.get_num_threads()}
    if args.compare_to is not None:
        result["subset_4d"] = subset_4d(args.compare_to, len(times))
    return result


def subset_4d(scene: Path, first: int) -> dict:
    """A 4D scene's held-out PSNR / SSIM over its first ``first`` time steps and the matched jitter of those frames."""
    import numpy as np

    from reconstruct.evaluate4d import matched_jitter
    from reconstruct.ply import read_ply

    report = json.loads((scene / "metrics.json").read_text())
    steps = [p for p in report["per_time"] if p["time_index"] < first]
    frames = [read_ply(path) for path in sorted((scene / "sequence").glob("frame_*.ply"))[:first]]
    return {"scene": str(scene), "psnr": float(np.mean([p["psnr"] for p in steps])),
            "ssim": float(np.mean([p["ssim"] for p in steps])), "jitter_matched": matched_jitter(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench4d")
    parser.add_argument("--parts", nargs="+", choices=["4d", "per-frame"], default=["4d", "per-frame"])
    parser.add_argument("--name", default="bspline", help="label of this run's results file and 4D scene")
    parser.add_argument("--steps", type=int, default=6000, help="4D training steps")
    parser.add_argument("--motion", default="bspline")
    parser.add_argument("--motion-points", type=int, default=None)
    parser.add_argument("--smoothness", type=float, default=1.0)
    parser.add_argument("--lr-motion", type=float, default=1.6e-3)
    parser.add_argument("--no-lifespans", action="store_true")
    parser.add_argument("--frame-steps", type=int, default=1000, help="3D training steps per time step")
    parser.add_argument("--first", type=int, default=None, help="per-frame: only the first N time steps")
    parser.add_argument("--compare-to", type=Path, default=None, help="per-frame: a 4D scene to compare over them")
    parser.add_argument("--child", choices=["4d", "per-frame"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out.absolute()
    args.capture = args.out / "fox_rig"
    if args.child:
        result = part_4d(args) if args.child == "4d" else part_per_frame(args)
        (args.out / f".{args.child}_{args.name}.json").write_text(json.dumps(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    render_capture(args.capture)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "load_average_at_start": os.getloadavg(), "argv": sys.argv[1:]}  # fmt: skip
    forwarded = [a for a in sys.argv[1:] if a != "--parts"]
    for part in args.parts:
        argv = [a for a in forwarded if a not in ("4d", "per-frame")] + ["--child", part]
        usage = measured(argv)
        result = json.loads((args.out / f".{part}_{args.name}.json").read_text())
        summary[part] = {**result, **usage}
        print(f"{part}: held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, jitter (matched) "
              f"{result['jitter_matched']['mean_second_difference']:.4g}, CPU {usage['cpu_seconds']} s, peak "
              f"{usage['peak_rss_mb']} MB, wall {usage['wall_seconds']} s", flush=True)
        if "subset_4d" in result:
            four_d = result["subset_4d"]
            print(f"4D over the same {result['time_steps']} time steps: PSNR {four_d['psnr']:.2f} dB, SSIM "
                  f"{four_d['ssim']:.4f}, jitter (matched) {four_d['jitter_matched']['mean_second_difference']:.4g}")
    summary["load_average_at_end"] = os.getloadavg()
    (args.out / f"results_{args.name}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
