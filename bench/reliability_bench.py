"""What reading inputs safely costs, and what the memory bomb costs now (issue 16).

    python bench/reliability_bench.py                    # 100k-point model; the survey's 2.3 KB bomb
    python bench/reliability_bench.py --points 300000

1. A synthetic COLMAP model (pycolmap.synthesize_dataset, 20 images of 640x480, ``--points`` points): seconds of
   ``check_binary_model`` (the walk of every record against the file size) beside seconds of pycolmap's own read of
   the same model.
2. ``orbit4d import`` of a project whose points3D.bin is the survey's memory bomb (2.3 KB promising a billion points)
   in a subprocess: wall seconds and peak memory (the survey saw over 4 GB and 100 s before the check).

Paste the printed lines into bench/RESULTS.md with the date, the machine and ``uptime``'s load.
"""

from __future__ import annotations

import PIL.Image  # noqa: F401  # isort: skip  (before pycolmap: it breaks PIL's PNG encoder when loaded first)

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pycolmap

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multiview.colmap_files import check_binary_model  # noqa: E402


def synthetic_model(folder: Path, points: int) -> Path:
    """A 20-image 640x480 synthetic model of ``points`` points (pycolmap.synthesize_dataset), written binary."""
    options = pycolmap.SyntheticDatasetOptions(num_rigs=1, num_cameras_per_rig=1, num_frames_per_rig=20,
                                               num_points3D=points, camera_width=640, camera_height=480)  # fmt: skip
    pycolmap.set_random_seed(0)
    model = folder / "sparse" / "0"
    model.mkdir(parents=True)
    pycolmap.synthesize_dataset(options).write_binary(model)
    return model


def time_check_and_read(model: Path) -> tuple[float, float]:
    tic = time.perf_counter()
    check_binary_model(model)
    checked = time.perf_counter() - tic
    tic = time.perf_counter()
    pycolmap.Reconstruction(model)
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
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}, pycolmap {pycolmap.__version__}")
    with tempfile.TemporaryDirectory() as work:
        model = synthetic_model(Path(work) / "model", args.points)
        size = sum(f.stat().st_size for f in model.iterdir()) / 1e6
        checked, read = time_check_and_read(model)
        print(f"| {args.points:,} points, 20 images ({size:.1f} MB) | check {checked:.3f} s | pycolmap read "
              f"{read:.3f} s | check / read {checked / read:.2f} |")
        shutil.rmtree(model.parent.parent)
        seconds, peak, last = memory_bomb(Path(work) / "bomb")
        print(f"| memory bomb: orbit4d import of a 2.3 KB points3D.bin promising 10^9 points | {seconds:.2f} s | "
              f"peak {peak:.0f} MB |")
        print(f"  {last}")


if __name__ == "__main__":
    main()
