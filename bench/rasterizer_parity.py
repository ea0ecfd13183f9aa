"""Parity of orbit4d's two rasterizer backends on CUDA: the PyTorch twin against gsplat's kernels.

    python bench/rasterizer_parity.py                 # needs CUDA; prints a markdown table

Random scenes (fixed seeds) rendered by ``rasterize(..., backend="torch")`` and ``backend="gsplat"`` on the same
CUDA tensors; compares images (max / mean absolute difference) and the gradients of a random linear loss with
respect to every Gaussian parameter (relative L2 error and cosine similarity).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconstruct.rasterize import rasterize  # noqa: E402

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def random_scene(num: int, size: int, sh_degree: int | None, seed: int) -> dict:
    """N Gaussians in front of two cameras that look at them from slightly different places."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(num, 3, generator=g) * 2 - 1
    means[:, 2] += 4.0
    quats = torch.randn(num, 4, generator=g)
    scales = torch.exp(torch.rand(num, 3, generator=g) * 2.0 - 4.5)
    opacities = torch.rand(num, generator=g) * 0.9 + 0.05
    k = 3 if sh_degree is None else (sh_degree + 1) ** 2
    colors = torch.rand(num, 3, generator=g) if sh_degree is None else torch.randn(num, k, 3, generator=g) * 0.3
    viewmats = torch.eye(4).repeat(2, 1, 1)
    viewmats[1, 0, 3] = 0.3
    focal = 1.2 * size
    Ks = torch.tensor([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]]).repeat(2, 1, 1)
    backgrounds = torch.rand(2, 3, generator=g)
    tensors = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)
    scene = {name: value.cuda().requires_grad_(True) for name, value in tensors.items()}
    scene |= dict(viewmats=viewmats.cuda(), Ks=Ks.cuda(), backgrounds=backgrounds.cuda())
    scene |= dict(width=size, height=size, sh_degree=sh_degree)
    return scene


def render_and_grads(scene: dict, backend: str, weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    for name in PARAMS:
        scene[name].grad = None
    colors, alphas, _ = rasterize(**scene, backend=backend)
    (colors * weights).sum().backward()
    return colors.detach(), {name: scene[name].grad.detach().clone() for name in PARAMS}


def compare(num: int, size: int, sh_degree: int | None, seed: int) -> dict:
    scene = random_scene(num, size, sh_degree, seed)
    weights = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(seed + 1)).cuda()
    image_t, grads_t = render_and_grads(scene, "torch", weights)
    image_g, grads_g = render_and_grads(scene, "gsplat", weights)
    diff = (image_t - image_g).abs()
    row = {"gaussians": num, "size": size, "sh": sh_degree, "max_abs": diff.max().item(), "mean_abs": diff.mean().item()}
    for name in PARAMS:
        a, b = grads_t[name].flatten(), grads_g[name].flatten()
        row[f"{name}_rel"] = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        row[f"{name}_cos"] = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--size", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("rasterizer_parity needs CUDA (gsplat's kernels)")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    head = "| Gaussians | image | SH | image max abs | image mean abs | " + " | ".join(
        f"∇{name} rel. err (cos)" for name in PARAMS
    ) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for num in args.gaussians:
        for size in args.size:
            for sh_degree in (None, 3):
                r = compare(num, size, sh_degree, seed=num + size)
                grads = " | ".join(f"{r[f'{n}_rel']:.2e} ({r[f'{n}_cos']:.6f})" for n in PARAMS)
                print(f"| {num:,} | {size}² | {sh_degree if sh_degree is not None else 'RGB'} | {r['max_abs']:.2e} | "
                      f"{r['mean_abs']:.2e} | {grads} |")


if __name__ == "__main__":
    main()
