"""What reading inputs safely costs, and what the memory bomb costs now (issue 16).

    python bench/reliability_bench.py                    # 200k-point model; the survey's 2.3 KB bomb
    python bench/reliability_bench.py --points 1000000

1. A synthetic COLMAP model (pycolmap.synthesize_dataset, 30 images) whose points3D.bin is grown to ``--points``
   points with 5-element tracks: seconds of ``check_binary_model`` (the walk of every record against the file size)
   beside seconds of pycolmap's own read of the same model.
2. ``orbit4d import`` of a project whose points3D.bin is the survey's memory bomb (2.3 KB promising a billion points)
   in a subprocess: wall seconds and peak memory (the survey saw over 4 GB and 100 s before the check).

Paste the printed lines into bench/RESULTS.md with the date, the machine and ``uptime``'s load.
"""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap)

import argparse
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multiview.colmap_files import check_binary_model  # noqa: E402


def synthetic_model(folder: Path, points: int) -> Path:
    """A 30-image synthetic model whose points3D.bin holds ``points`` points (tracks of 5 observations)."""
    options = pycolmap.SyntheticDatasetOptions(num_rigs=1, num_cameras_per_rig=1, num_frames_per_rig=30,
                                               num_points3D=100, camera_width=64, camera_height=48)  # fmt: skip
    pycolmap.set_random_seed(0)
    model = folder / "sparse" / "0"
    model.mkdir(parents=True)
    pycolmap.synthesize_dataset(options).write_binary(model)
    track = 5
    record = np.zeros(points, dtype=[("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"),
                                     ("length", "<u8"), ("track", "<u4", (track, 2))])  # fmt: skip
    record["id"] = np.arange(1, points + 1)
    record["xyz"] = np.random.default_rng(0).normal(size=(points, 3))
    record["length"] = track
    record["track"][..., 0] = 1  # image 1 ...
    record["track"][..., 1] = np.arange(points)[:, None] % 10  # ... its first points2D (duplicates are fine here)
    (model / "points3D.bin").write_bytes(struct.pack("<Q", points) + record.tobytes())
    return model


def time_check_and_read(model: Path) -> tuple[float, float]:
    tic = time.perf_counter()
    check_binary_model(model)
    checked = time.perf_counter() - tic
    tic = time.perf_counter()
    try:
        pycolmap.Reconstruction(model)
    except Exception:  # noqa: BLE001 - tracks that point at absent observations: the read still ran over the file
        pass
    return checked, time.perf_counter() - tic


def memory_bomb(folder: Path) -> tuple[float, float, str]:
    """(seconds, peak MB, last stderr line) of orbit4d import of the survey's truncated points3D.bin."""
    sys.path.insert(0, str(REPO / "tests"))
    from hostile_corpus import _colmap_models, _image

    _image(folder / "outside" / "stray.png")
    project = _colmap_models(folder, {})["colmap_lying_points"]
    command = [sys.executable, "-m", "orbit4d", "import", str(project), "--out", str(folder / "out")]
    with open(folder / "stderr.txt", "w") as err:
        tic = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        _, _, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - tic
    lines = (folder / "stderr.txt").read_text().strip().splitlines()
    return seconds, usage.ru_maxrss / 1024, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=200_000)
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}, pycolmap {pycolmap.__version__}")
    with tempfile.TemporaryDirectory() as work:
        model = synthetic_model(Path(work) / "model", args.points)
        size = (model / "points3D.bin").stat().st_size / 1e6
        checked, read = time_check_and_read(model)
        print(f"| {args.points:,} points ({size:.1f} MB points3D.bin) | check {checked:.3f} s | pycolmap read "
              f"{read:.3f} s | check / read {checked / read:.2f} |")
        shutil.rmtree(model.parent.parent)
        seconds, peak, last = memory_bomb(Path(work) / "bomb")
        print(f"| memory bomb: orbit4d import of a 2.3 KB points3D.bin promising 10^9 points | {seconds:.2f} s | "
              f"peak {peak:.0f} MB |")
        print(f"  {last}")


if __name__ == "__main__":
    main()
