"""Reference figures for gsplat's CUDA rasterizer: JIT build time, forward and forward+backward per frame.

    python bench/gsplat_reference.py --gaussians 100000 1000000 --size 512 1080

Needs CUDA (gsplat compiles its kernels on first use). These are the figures orbit4d's CUDA path is held to
(issue: time per step within 10% of a minimal loop calling ``gsplat.rasterization`` directly). Random scenes:
Gaussians in a unit cube in front of the camera, fixed seed.
"""

from __future__ import annotations

import argparse
import time

import torch


def random_scene(num: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    means = torch.rand(num, 3, generator=g) * 2 - 1
    means[:, 2] += 3.0
    quats = torch.nn.functional.normalize(torch.randn(num, 4, generator=g), dim=-1)
    scales = torch.rand(num, 3, generator=g) * 0.02 + 0.002
    opacities = torch.rand(num, generator=g) * 0.8 + 0.1
    colors = torch.rand(num, 3, generator=g)
    scene = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)
    return {k: v.to(device).requires_grad_(True) for k, v in scene.items()}


def camera(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    viewmats = torch.eye(4, device=device)[None]
    f = size * 1.2
    Ks = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], device=device)[None]
    return viewmats, Ks


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` after two warm-up calls, with CUDA synchronised."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - tic)
    return sorted(samples)[len(samples) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--size", type=int, nargs="+", default=[512, 1080])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    tic = time.perf_counter()
    from gsplat import rasterization

    scene = random_scene(1000, "cuda")
    viewmats, Ks = camera(64, "cuda")
    rasterization(**scene, viewmats=viewmats, Ks=Ks, width=64, height=64)
    torch.cuda.synchronize()
    print(f"gsplat first call (JIT build or load): {time.perf_counter() - tic:.1f} s")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| Gaussians | image | forward ms | forward+backward ms | peak memory MiB |")
    print("|---|---|---|---|---|")
    for num in args.gaussians:
        scene = random_scene(num, "cuda")
        for size in args.size:
            viewmats, Ks = camera(size, "cuda")

            def forward():
                with torch.no_grad():
                    return rasterization(**scene, viewmats=viewmats, Ks=Ks, width=size, height=size)

            def forward_backward():
                image, _, _ = rasterization(**scene, viewmats=viewmats, Ks=Ks, width=size, height=size)
                image.sum().backward()

            torch.cuda.reset_peak_memory_stats()
            fwd = timed(forward, args.repeats)
            fwd_bwd = timed(forward_backward, args.repeats)
            peak = torch.cuda.max_memory_allocated() / 2**20
            print(f"| {num:,} | {size}×{size} | {1000 * fwd:.2f} | {1000 * fwd_bwd:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
