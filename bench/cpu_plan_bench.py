"""The CPU's default plan on the shared captures: wall time and held-out PSNR, against longer runs (issue 17).

Every run is the real command line in a subprocess (``orbit4d train CAPTURE --out SCENE`` with nothing else: on a
machine without CUDA that is the CPU's default plan; ``video-to-3d`` for the Great Wall video), timed from start to
exit, with the 1-minute load average before and after (the machine is shared). Runs:

- ``default``: the command as a new user types it;
- ``mcmc``: the same plan with ``--strategy mcmc`` (3DGS-MCMC within the same Gaussian budget);
- ``minutes5``: ``--minutes 5``;
- ``long``: 3DGS's recipe at the resolution the default chose: ``--steps 30000 --max-gaussians 0 --downscale K``.

Captures are made once under ``--out`` (reused afterwards): ``orbit4d import`` of ingp_fox (triangulating, now the
default), ``orbit4d capture`` of the photo folders, ``orbit4d render-asset`` of the Avocado (48 views at 256², as
bench/train_bench.py), and the Great Wall through ``video-to-3d`` (its capture is part of that command's run).

    python bench/cpu_plan_bench.py fox avocado --runs default minutes5
    python bench/cpu_plan_bench.py --runs default           # every scene
    python bench/cpu_plan_bench.py avocado --runs long
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
DATA = REPO.parent / "shared" / "data"
SCENES = ("fox", "kitchen", "statue", "sacre_coeur", "great_wall", "avocado")
RUNS = {"default": [], "mcmc": ["--strategy", "mcmc"], "minutes5": ["--minutes", "5"]}


def orbit4d(*args: object, log: Path | None = None) -> float:
    """Run ``orbit4d ARGS`` with this interpreter; fail loudly; return its wall seconds."""
    tic = time.monotonic()
    with open(log, "w") if log else open(os.devnull, "w") as out:
        subprocess.run([sys.executable, "-m", "orbit4d", *map(str, args)], check=True, cwd=REPO, stderr=out)
    return time.monotonic() - tic


def capture(scene: str, work: Path) -> Path:
    """The scene's capture under ``work`` (made once); the Great Wall's is made by video-to-3d itself."""
    folder = work / "captures" / scene
    if scene == "great_wall" or (folder / "transforms.json").is_file():
        return folder
    sources = {"kitchen": "captures/vggsfm_kitchen/images", "statue": "captures/vggsfm_statue/images",
               "sacre_coeur": "captures/sacre_coeur/mapping"}  # fmt: skip
    if scene == "fox":
        orbit4d("import", DATA / "captures" / "ingp_fox", "--out", folder)
    elif scene == "avocado":
        orbit4d("render-asset", DATA / "models" / "Avocado" / "Avocado.gltf", "--out", folder, "--views", 48,
                "--elevation", 5, 30, "--size", 256)  # fmt: skip
    else:
        orbit4d("capture", DATA / sources[scene], "--out", folder)
    return folder


def run(scene: str, kind: str, work: Path) -> dict:
    source = capture(scene, work)
    out = work / "runs" / f"{scene}_{kind}"
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = RUNS.get(kind, [])
    if kind == "long":
        plan = json.loads((work / "runs" / f"{scene}_default" / _scene_dir(scene) / "metrics.json").read_text())["plan"]
        extra = ["--steps", 30_000, "--max-gaussians", 0, "--downscale", plan["downscale"]]
    load_before = os.getloadavg()[0]
    if scene == "great_wall":
        if kind != "default" and (work / "runs" / "great_wall_default" / "capture").is_dir():
            _link_capture(work / "runs" / "great_wall_default" / "capture", out / "capture")
        wall = orbit4d("video-to-3d", DATA / "videos" / "great_wall_aerial.mp4", "--out", out, *extra,
                       "--overwrite", log=work / "runs" / f"{scene}_{kind}.log")  # fmt: skip
    else:
        wall = orbit4d("train", source, "--out", out, *extra, "--overwrite", log=work / "runs" / f"{scene}_{kind}.log")
    metrics = json.loads((out / _scene_dir(scene) / "metrics.json").read_text())
    return {"scene": scene, "run": kind, "wall": wall, "load": (load_before, os.getloadavg()[0]), "metrics": metrics}


def _scene_dir(scene: str) -> str:
    return "scene" if scene == "great_wall" else "."


def _link_capture(made: Path, target: Path) -> None:
    """Reuse the default run's capture of the video (video-to-3d keeps a capture made from the same input)."""
    import shutil

    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(made, target)


def row(result: dict) -> str:
    m, plan = result["metrics"], result["metrics"]["plan"]
    width, height = m["image_size"]
    budget = f"{plan['minutes']:g} min" if plan["minutes"] else f"{plan['steps']:,} steps"
    return (f"| {result['scene']} | {result['run']} | {budget} | {width}×{height} | {m['steps']:,} | "
            f"{m['num_gaussians']:,} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['seconds']:.0f} | "
            f"{result['wall']:.0f} ({result['wall'] / 60:.1f} min) | {plan['estimated_seconds'] / 60:.1f} min | "
            f"{result['load'][0]:.1f} / {result['load'][1]:.1f} |")


HEADER = ("| scene | run | plan | image | steps | Gaussians | held-out PSNR dB | SSIM | train s | wall s | estimated | "
          "load before / after |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenes", nargs="*", default=list(SCENES), metavar="SCENE", help=", ".join(SCENES))
    parser.add_argument("--runs", nargs="+", default=["default"], choices=[*RUNS, "long"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "cpu_plan_bench")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores\n{HEADER}", flush=True)
    results = []
    for scene in args.scenes:
        for kind in args.runs:
            results.append(run(scene, kind, args.out))
            print(row(results[-1]), flush=True)
            with open(args.out / "results.jsonl", "a") as log:
                log.write(json.dumps({k: v for k, v in results[-1].items() if k != "metrics"} |
                                     {"psnr": results[-1]["metrics"]["psnr"], "steps": results[-1]["metrics"]["steps"],
                                      "plan": results[-1]["metrics"]["plan"],
                                      "psnr_vs_time": results[-1]["metrics"]["psnr_vs_time"]}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
