"""Forward and backward seconds of ``reconstruct.rasterize``'s CPU backends against a straightforward baseline.

    python bench/rasterizer_bench.py                      # CPU: 100k Gaussians at 512x512
    python bench/rasterizer_bench.py --gaussians 10000 100000 --size 256 512
    python bench/rasterizer_bench.py --device cuda        # also gsplat's kernels and the PyTorch backend on the GPU
    python bench/rasterizer_bench.py --modes              # the default backend with depth, antialiased, pose grads

The baseline is how one would first write a splat compositor in PyTorch: materialise every overlapping
Gaussian-pixel pair (each Gaussian against every pixel of its 3-sigma box), sort the pairs by (pixel, depth), and
composite with a segmented cumulative product, differentiated by autograd. It shares the projection, SH and culling
of the PyTorch backend, so the three (baseline, ``backend="torch"``, ``backend="numba"``) differ only in compositing.
They are timed side by side in one process,
alternating, median of ``--repeats`` after a warm-up. Random scene: Gaussians in a 2x2x2 cube 2..4 units in front of
one camera (f = 1.2 x size), scales 0.002..0.022, so each covers a few to a few hundred pixels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconstruct import _torch_rasterizer as _tr
from reconstruct.rasterize import rasterize

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def random_scene(num: int, size: int, device: str = "cpu", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(num, 3, generator=g) * 2 - 1
    means[:, 2] += 3.0
    scene = {
        "means": means,
        "quats": torch.nn.functional.normalize(torch.randn(num, 4, generator=g), dim=-1),
        "scales": torch.rand(num, 3, generator=g) * 0.02 + 0.002,
        "opacities": torch.rand(num, generator=g) * 0.8 + 0.1,
        "colors": torch.rand(num, 3, generator=g),
        "viewmats": torch.eye(4)[None],
        "Ks": torch.tensor([[1.2 * size, 0, (size - 1) / 2], [0, 1.2 * size, (size - 1) / 2], [0, 0, 1]])[None],
    }
    scene = {k: v.to(device) for k, v in scene.items()}
    for k in PARAMS:
        scene[k].requires_grad_(True)
    return dict(scene, width=size, height=size)


def baseline_rasterize(scene: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every overlapping Gaussian-pixel pair as one tensor, composited with autograd (one camera)."""
    W, H = scene["width"], scene["height"]
    Ks = scene["Ks"].clone()
    Ks[:, :2, 2] += 0.5
    proj = _tr.project(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmats"], Ks,
                       W, H, 0.01, 1e10)  # fmt: skip
    ids = torch.nonzero((proj.radii[0] > 0).all(-1)).squeeze(1)
    m, r = proj.means2d[0, ids], proj.radii[0, ids]
    lo = torch.clamp(torch.floor(m.detach() - r), min=0).long()
    hi = torch.minimum(torch.ceil(m.detach() + r).long(), torch.tensor([W, H], device=m.device))
    span = (hi - lo).clamp_min(0)
    count = span[:, 0] * span[:, 1]
    g = torch.repeat_interleave(torch.arange(ids.numel(), device=m.device), count)
    local = torch.arange(g.numel(), device=m.device) - (torch.cumsum(count, 0) - count)[g]
    px = lo[g, 0] + local % span[g, 0]
    py = lo[g, 1] + local // span[g, 0]
    pixel = py * W + px
    depth_rank = torch.argsort(torch.argsort(proj.depths[0, ids].detach()))
    order = torch.argsort(pixel * ids.numel() + depth_rank[g])
    g, pixel, px, py = g[order], pixel[order], px[order], py[order]

    d = m[g] - torch.stack([px, py], -1).to(m.dtype) - 0.5
    q = proj.conics[0, ids][g]
    sigma = 0.5 * (q[:, 0] * d[:, 0] ** 2 + q[:, 2] * d[:, 1] ** 2) + q[:, 1] * d[:, 0] * d[:, 1]
    alpha = torch.clamp_max(scene["opacities"][ids][g] * torch.exp(-sigma), 0.999)
    alpha = alpha * (alpha >= 1 / 255)
    # Transmittance within each pixel's run of pairs: a cumulative sum of log(1 - alpha), in float64 because it runs
    # over the whole image, minus its value at the run's start.
    first = torch.ones_like(pixel, dtype=torch.bool)
    first[1:] = pixel[1:] != pixel[:-1]
    run_start = torch.cummax(torch.where(first, torch.arange(pixel.numel(), device=m.device), 0), 0).values

    def transmittance(alpha):  # (T after, T before) each pair
        log_t = torch.log1p(-alpha).double()
        cum = torch.cumsum(log_t, 0)
        before = cum - log_t
        return torch.exp(cum - before[run_start]).to(alpha.dtype), torch.exp(before - before[run_start]).to(alpha.dtype)

    with torch.no_grad():
        keep = transmittance(alpha)[0] > 1e-4  # a pixel stops before T would reach 1e-4
    alpha = alpha * keep
    w = alpha * transmittance(alpha)[1]
    image = torch.zeros(H * W, 3, device=m.device, dtype=m.dtype).index_add(0, pixel, w[:, None] * scene["colors"][ids][g])
    acc = torch.zeros(H * W, device=m.device, dtype=m.dtype).index_add(0, pixel, w)
    return image.reshape(1, H, W, 3), acc.reshape(1, H, W, 1)


def gsplat_direct(scene: dict, packed: bool = False):
    """``gsplat.rasterization`` called directly, the reference for ``rasterize(backend="gsplat")``'s overhead."""
    from gsplat import rasterization

    Ks = scene["Ks"].clone()
    Ks[:, :2, 2] += 0.5
    return rasterization(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["colors"],
                         scene["viewmats"], Ks, scene["width"], scene["height"], packed=packed)  # fmt: skip


def timed(fn, repeats: int, sync) -> list[float]:
    samples = []
    for _ in range(repeats):
        sync()
        tic = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - tic)
    return samples


def measure(methods: dict, scene: dict, repeats: int, sync) -> dict[str, tuple[float, float]]:
    """Median forward and forward+backward seconds of each method, alternating between methods."""
    weights = torch.rand(1, scene["height"], scene["width"], 1, device=scene["means"].device)  # any channel count

    def forward(fn):
        with torch.no_grad():
            fn(scene)

    def forward_backward(fn):
        for k in PARAMS:
            scene[k].grad = None
        image = fn(scene)[0]
        (image * weights).sum().backward()

    for fn in methods.values():  # warm-up
        forward_backward(fn)
    samples = {name: ([], []) for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            samples[name][0].extend(timed(lambda fn=fn: forward(fn), 1, sync))
            samples[name][1].extend(timed(lambda fn=fn: forward_backward(fn), 1, sync))
    return {name: (statistics.median(f), statistics.median(fb)) for name, (f, fb) in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, nargs="+", default=[100_000])
    parser.add_argument("--size", type=int, nargs="+", default=[512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--skip-cpu", action="store_true", help="with --device cuda: time the GPU only")
    parser.add_argument("--modes", action="store_true",
                        help="time render_mode RGB+ED, rasterize_mode antialiased and camera gradients against RGB "
                        "classic instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", end="")
    print(f", {torch.cuda.get_device_name()}" if args.device == "cuda" else "")

    rows = []
    for num in args.gaussians:
        for size in args.size:
            scene = random_scene(num, size)
            with torch.no_grad():
                meta = rasterize(**scene)[2]
            isects = meta["flatten_ids"].numel()
            row = {"num": num, "size": size, "isects": isects}
            if args.modes:
                device = args.device
                row[device] = measure(MODES, random_scene(num, size, device), max(args.repeats, 3 if device == "cpu"
                                      else 10), torch.cuda.synchronize if device == "cuda" else lambda: None)  # fmt: skip
                rows.append(row)
                print_row(row)
                continue
            if not args.skip_cpu:
                row["cpu"] = measure(
                    {"baseline": baseline_rasterize, "torch": lambda s: rasterize(**s, backend="torch"),
                     "numba": lambda s: rasterize(**s, backend="numba")},
                    scene, args.repeats, lambda: None,
                )  # fmt: skip
            if args.device == "cuda":
                gpu_scene = random_scene(num, size, "cuda")
                row["cuda"] = measure(
                    {"gsplat": lambda s: rasterize(**s, backend="gsplat"),
                     "gsplat direct": gsplat_direct,
                     "gsplat direct packed": lambda s: gsplat_direct(s, packed=True),
                     "torch": lambda s: rasterize(**s, backend="torch")},
                    gpu_scene, max(args.repeats, 10), torch.cuda.synchronize,
                )  # fmt: skip
            rows.append(row)
            print_row(row)

    if args.modes:
        print("\n| Gaussians | image | mode | fwd ms | fwd+bwd ms |")
        print("|---|---|---|---|---|")
        for r in rows:
            for name, (f, fb) in r[args.device].items():
                print(f"| {r['num']:,} | {r['size']}×{r['size']} | {name} | {1e3 * f:.1f} | {1e3 * fb:.1f} |")
        return
    print_tables(rows, cpu=not args.skip_cpu, cuda=args.device == "cuda")


MODES = {  # rasterize(backend="auto") in each mode
    "RGB, classic": lambda s: rasterize(**s),
    "RGB+ED (depth)": lambda s: rasterize(**s, render_mode="RGB+ED"),
    "RGB, antialiased": lambda s: rasterize(**s, rasterize_mode="antialiased"),
    # --pose-opt: gradients to the camera pose; with the intrinsics too, the CPU backends take the twin's PyTorch
    # projection (which every camera gradient took before the compiled one differentiated poses)
    "RGB, pose gradients": lambda s: rasterize(**{**s, "viewmats": s["viewmats"].detach().requires_grad_(True)}),
    "RGB, pose and intrinsics gradients (twin projection)": lambda s: rasterize(
        **{**s, "viewmats": s["viewmats"].detach().requires_grad_(True), "Ks": s["Ks"].detach().requires_grad_(True)}
    ),
}


def print_tables(rows: list[dict], cpu: bool, cuda: bool) -> None:
    if cpu:
        print_cpu_table(rows)
    if cuda:
        print_cuda_table(rows)


def print_cpu_table(rows: list[dict]) -> None:
    print("\n| Gaussians | image | tile pairs | baseline fwd / fwd+bwd s | torch fwd / fwd+bwd s "
          "| numba fwd / fwd+bwd s | numba vs baseline | numba vs torch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        (bf, bfb), (tf, tfb), (nf, nfb) = r["cpu"]["baseline"], r["cpu"]["torch"], r["cpu"]["numba"]
        print(f"| {r['num']:,} | {r['size']}×{r['size']} | {r['isects']:,} | {bf:.3f} / {bfb:.3f} | {tf:.3f} / "
              f"{tfb:.3f} | {nf:.3f} / {nfb:.3f} | {bf / nf:.1f}× / {bfb / nfb:.1f}× | {tf / nf:.1f}× / "
              f"{tfb / nfb:.1f}× |")


def print_cuda_table(rows: list[dict]) -> None:
    print("\n| Gaussians | image | method | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|---|")
    names = {"gsplat": "rasterize(backend='gsplat')", "gsplat direct": "gsplat.rasterization, packed=False",
             "gsplat direct packed": "gsplat.rasterization, packed=True", "torch": "rasterize(backend='torch')"}
    for r in rows:
        for key, name in names.items():
            f, fb = r["cuda"][key]
            print(f"| {r['num']:,} | {r['size']}×{r['size']} | {name} | {1e3 * f:.2f} | {1e3 * fb:.2f} |")


def print_row(row: dict) -> None:
    line = f"{row['num']:>9,} Gaussians {row['size']}², {row['isects']:,} tile pairs:"
    if "cpu" in row:
        line += " CPU " + ", ".join(f"{k} {f:.3f} / {fb:.3f} s" for k, (f, fb) in row["cpu"].items())
        line += " (fwd / fwd+bwd)"
    if "cuda" in row:
        line += " CUDA " + ", ".join(f"{k} {1e3 * f:.2f} / {1e3 * fb:.2f} ms" for k, (f, fb) in row["cuda"].items())
    print(line, flush=True)


if __name__ == "__main__":
    main()
