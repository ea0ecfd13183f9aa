"""``orbit4d generate``: argparse only; the generator is imported when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``generate`` on the ``orbit4d`` sub-command parser."""
    p = sub.add_parser(
        "generate",
        help="one image to an orbit of generated views with known cameras (a capture)",
        description="Generate an orbit around the object in IMAGE with a camera-conditioned video diffusion model "
        "(SV3D recipe) and write it as a capture: images/, transforms.json with the exact camera of every frame, "
        "input.png, report.json. `orbit4d train` reads the result as it is. RGBA images are centred on white.",
    )
    p.add_argument("image", type=Path, help="the input view (.png with transparency works best)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="capture folder to write")
    p.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="model folder (model_index.json, unet/, vae/, image_encoder/; safetensors only)")
    p.add_argument("--frames", type=int, default=None, metavar="N", help="views in the orbit (model default)")
    p.add_argument("--elevation", type=float, default=None, metavar="DEG", help="camera elevation (model default)")
    p.add_argument("--steps", type=int, default=25, metavar="N", help="sampling steps (default 25)")
    p.add_argument("--sampler", choices=["euler", "ddim"], default="euler",
                   help="euler: EDM Euler with SV3D's noise levels; ddim: deterministic DDIM")
    p.add_argument("--guidance", type=float, nargs=2, default=[1.0, 2.5], metavar=("MIN", "MAX"),
                   help="classifier-free guidance at the input view and opposite it (default 1 2.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same frames)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--half", action="store_true", help="fp16/bf16 on CUDA (ignored on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output once the new one is complete")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from generate.run import GenerateConfig, run
    from multiview.errors import InputError

    if args.steps < 1:
        raise InputError(f"--steps {args.steps}: use at least 1")
    config = GenerateConfig(weights=args.weights, num_frames=args.frames, elevation_deg=args.elevation,
                            steps=args.steps, sampler=args.sampler, min_guidance=args.guidance[0],
                            max_guidance=args.guidance[1], seed=args.seed, device=args.device, half=args.half)  # fmt: skip
    run(config, args.image, args.out, overwrite=args.overwrite)
    print(f"capture written to {args.out}", file=sys.stderr)
    return 0
