"""Sampling speed and memory of the orbit generator (issue 5), random weights.

Per-step time is one guided denoising step (the UNet on a batch of 2: conditional and unconditional), measured as
(time of N steps - time of 1 step) / (N - 1) of the whole pipeline, so encoding and decoding cancel out. Memory is
the process's peak resident size on CPU and ``torch.cuda.max_memory_allocated`` on CUDA.

    python bench/generator_bench.py                      # CPU: tiny and small architectures
    python bench/generator_bench.py --device cuda --sv3d # GPU: also SV3D's size, 21 x 576 x 576, fp16
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generate.pipeline import OrbitDefaults  # noqa: E402
from generate.presets import ARCHITECTURES  # noqa: E402

CASES = {  # architecture, frames, image size
    "tiny": ("tiny", 4, 32),
    "small": ("small", 12, 128),
    "sv3d": ("sv3d", 21, 576),
}


def measure(name: str, device: str, dtype: torch.dtype, steps: int) -> dict:
    architecture, frames, size = CASES[name]
    defaults = OrbitDefaults(num_frames=frames, image_size=size)
    pipeline = ARCHITECTURES[architecture].build(defaults).to(device, dtype)
    image, orbit = torch.rand(3, size, size), defaults.orbit()

    def timed(n: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        pipeline(image, orbit, num_steps=n, decode_chunk=7)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - tic

    timed(1)  # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    one, many = timed(1), timed(steps)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
    unet_params = sum(p.numel() for p in pipeline.unet.parameters())
    return {"case": name, "frames": frames, "size": size, "dtype": str(dtype).removeprefix("torch."),
            "unet_params_m": unet_params / 1e6, "step_s": (many - one) / (steps - 1), "total_s": many,
            "peak_mib": peak}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sv3d", action="store_true", help="also SV3D's size (needs a GPU with ~20 GB)")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    cases = ["tiny", "small"] + (["sv3d"] if args.sv3d else [])
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.machine()} CPU"
    threads = torch.get_num_threads()
    print(f"{time.strftime('%Y-%m-%d')} — {device_name}, torch {torch.__version__}, {threads} threads\n")
    print("| case | frames × size | dtype | UNet params | s / step (CFG batch 2) | total for N steps | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for name in cases:
        r = measure(name, args.device, dtype, args.steps)
        print(f"| {r['case']} | {r['frames']} × {r['size']}² | {r['dtype']} | {r['unet_params_m']:.1f} M | "
              f"{r['step_s']:.3f} | {r['total_s']:.2f} s ({args.steps}) | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
