"""What one CPU training step costs, by Gaussian count and image size (issue 17: the time model behind the CPU plan).

For each ``--downscale`` of a capture and each Gaussian count, N Gaussians are drawn around the capture's points (a
point picked at random, moved by noise of its nearest-neighbour distance, sized by ``splats_from_points``' rule, so
that denser sets have smaller Gaussians as trained scenes do), then full training steps (SH degree 3, loss, backward,
Adam; densification off so that N stays put) are timed: the median of ``--steps`` after two warm-up steps, in wall
seconds and in the process's CPU seconds. A least-squares fit of ``seconds = a + b N + c P + d N P`` (P pixels) is
printed beside the table, for ``reconstruct/budget.py``'s ``CPU_STEP_COST``.

On a shared machine wall time measures the other jobs as much as the step: ``--threads 1`` makes CPU seconds the
measure of the work itself (one thread: CPU time is the step's own), which a quiet machine's two threads divide by
their parallel speed-up.

    python bench/step_cost_bench.py outputs/fox_capture --downscale 8 4 2 --gaussians 10000 30000 100000 300000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reconstruct import train  # noqa: E402
from reconstruct.data import load_scene  # noqa: E402
from reconstruct.splats import nearest_neighbour_distance, splats_from_points  # noqa: E402


def gaussians_around(points: np.ndarray, colors: np.ndarray | None, n: int, seed: int = 0):
    """``n`` Gaussians scattered around ``points`` [P, 3] (see the module docstring)."""
    rng = np.random.default_rng(seed)
    spacing = nearest_neighbour_distance(torch.as_tensor(points, dtype=torch.float32)).numpy()
    pick = rng.integers(0, len(points), n)
    moved = points[pick] + rng.normal(size=(n, 3)) * spacing[pick, None] * 0.5
    return splats_from_points(moved.astype(np.float32), None if colors is None else colors[pick], 3, 0.5)


def time_steps(scene, downscale: int, n: int, steps: int) -> tuple[float, float, int]:
    """(median wall seconds, median CPU seconds per step, pixels per training view) of ``steps`` steps with ``n``
    Gaussians."""
    config = train.TrainConfig(steps=10_000, densify=False, device="cpu", downscale=downscale, psnr_samples=0,
                               turntable_frames=0, sh_degree_interval=1, max_gaussians=0)  # fmt: skip
    splats = gaussians_around(scene.capture.points, scene.capture.colors, n)
    original = train.initial_splats
    train.initial_splats = lambda *args, **kwargs: splats
    try:
        state = train._fresh_state(config, scene, torch.device("cpu"))
    finally:
        train.initial_splats = original
    state.step = 3  # SH degree 3 from the first step
    densifier = train._densifier(config)
    seconds, cpu = [], []
    for i in range(steps + 2):
        tic, tic_cpu = time.perf_counter(), time.process_time()
        train.train_step(config, scene.train, state, densifier, torch.device("cpu"))
        state.step += 1
        if i >= 2:
            seconds.append(time.perf_counter() - tic)
            cpu.append(time.process_time() - tic_cpu)
    camera = scene.train[0].camera
    return statistics.median(seconds), statistics.median(cpu), camera.width * camera.height


def fit(rows: list[tuple[int, int, float]]) -> np.ndarray:
    """Least squares of seconds = a + b N + c P + d N P on (N, P, seconds) rows; returns [a, b, c, d]."""
    design = np.array([[1.0, n, p, n * p] for n, p, _ in rows])
    return np.linalg.lstsq(design, np.array([s for _, _, s in rows]), rcond=None)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", type=Path, help="a capture with points3D.ply")
    parser.add_argument("--downscale", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument("--gaussians", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, torch threads {torch.get_num_threads()}, load "
          f"{os.getloadavg()[0]:.2f} (1-min average)")
    print("| downscale | image px | Gaussians | wall s / step | CPU s / step | load |\n|---|---|---|---|---|---|")
    walls, cpus = [], []
    for downscale in args.downscale:
        scene = load_scene(args.capture, downscale, 8)
        for n in args.gaussians:
            seconds, cpu, pixels = time_steps(scene, downscale, n, args.steps)
            walls.append((n, pixels, seconds))
            cpus.append((n, pixels, cpu))
            print(f"| {downscale} | {pixels:,} | {n:,} | {seconds:.4f} | {cpu:.4f} | {os.getloadavg()[0]:.1f} |",
                  flush=True)  # fmt: skip
    for name, rows in (("wall", walls), ("CPU", cpus)):
        a, b, c, d = fit(rows)
        print(f"fit ({name}): seconds = {a:.4g} + {b:.4g} N + {c:.4g} P + {d:.4g} N P")
        for n, p, s in rows:
            print(f"  N {n:>7,} P {p:>9,}: measured {s:.4f}, fit {a + b * n + c * p + d * n * p:.4f}")


if __name__ == "__main__":
    main()
