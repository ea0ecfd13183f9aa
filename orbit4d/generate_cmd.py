"""``orbit4d generate``, ``finetune``, ``eval-generator``: argparse only; the generator is imported when a command
runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orbit4d import options


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``generate``, ``assets``, ``finetune`` and ``eval-generator`` on the ``orbit4d`` sub-command parser."""
    _generate_parser(sub)
    _assets_parser(sub)
    _finetune_parser(sub)
    _eval_generator_parser(sub)


def _assets_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "assets",
        help="make procedural 3D assets (GLB) to train the orbit generator on",
        description="Write COUNT procedural objects (composed primitives, surfaces of revolution, extrusions, tori, "
        "tubes; bent, twisted, tapered and bumped; striped, checked, dotted, noisy, graded or labelled textures, matte "
        "to glossy) as GLB files with assets.json. Asset k of seed S is always the same object; assets already in "
        "OUT are kept, so an interrupted run continues.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the .glb files")
    p.add_argument("--count", type=int, default=2000, metavar="N", help="how many assets (default 2000)")
    p.add_argument("--seed", type=options.seed, default=0, help="which family of assets (default 0)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes making them (default 1)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_assets)


def _run_assets(args: argparse.Namespace) -> int:
    from generate.assets import FactoryConfig, write_assets
    from multiview.errors import InputError
    from multiview.outputs import checked_out_dir, output_lock

    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: use at least 1")
    config = FactoryConfig(count=args.count, seed=args.seed)
    config.validate()
    with output_lock(checked_out_dir(args.out)):  # assets already there are kept: a stopped run continues
        write_assets(config, args.out, workers=args.workers)
    return 0


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune the orbit generator on rendered orbits of 3D assets (full or LoRA)",
        description="Fine-tune the generator's UNet on orbit clips (SV3D recipe) as the JSON file CONFIG says: "
        "data (dataset folder, rendered from assets when new), out (run folder), base (model folder to start "
        "from) or architecture (tiny, small, sv3d), lora_rank (0: full), steps, batch_size, learning_rate, "
        "ema_decay, ... (see generate.finetune.FinetuneConfig). Uses accelerate: run it under `accelerate launch` "
        "for GPUs. Writes out/model (for orbit4d generate --weights), losses.json and checkpoints.",
    )
    p.add_argument("config", type=Path, help="a JSON file of FinetuneConfig settings")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from generate.finetune import FinetuneConfig, run

    out = run(FinetuneConfig.from_file(args.config), resume=args.resume)
    print(f"model written to {out / 'model'}", file=sys.stderr)
    return 0


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="one image to an orbit of generated views with known cameras (a capture)",
        description="Generate an orbit around the object in IMAGE with a camera-conditioned video diffusion model "
        "(SV3D recipe) and write it as a capture: images/, transforms.json with the exact camera of every frame, "
        "input.png, report.json, and masks/ from a model with a foreground head. `orbit4d train` reads the result "
        "as it is. RGBA images are centred on white.",
    )
    p.add_argument("image", type=Path, help="the input view (.png with transparency works best)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="capture folder to write")
    p.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="model folder (model_index.json, unet/, vae/, image_encoder/; safetensors only) or an SV3D "
                   "checkpoint (sv3d_p.safetensors / sv3d_u.safetensors, converted on load); default: the small "
                   "model that ships with orbit4d")
    p.add_argument("--frames", type=int, default=None, metavar="N", help="views in the orbit (model default)")
    p.add_argument("--elevation", type=float, default=None, metavar="DEG", help="camera elevation (model default)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="sampling steps (default: the model's own; "
                   "SV3D 25)")
    p.add_argument("--sampler", choices=["euler", "ddim"], default="euler",
                   help="euler: EDM Euler with SV3D's noise levels; ddim: deterministic DDIM")
    p.add_argument("--guidance", type=float, nargs=2, default=[None, None], metavar=("MIN", "MAX"),
                   help="classifier-free guidance at the input view and opposite it (default: the model's own; "
                   "SV3D 1 2.5)")
    p.add_argument("--seed", type=options.seed, default=0, help="random seed (same seed, same frames)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="average each view with the model's view of the image mirrored (twice the time; default: the "
                   "model's own, mirror_average in its model_index.json)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--half", action="store_true", help="fp16/bf16 on CUDA (ignored on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output once the new one is complete")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from generate.run import GenerateConfig, run

    config = GenerateConfig(weights=args.weights, num_frames=args.frames, elevation_deg=args.elevation,
                            steps=args.steps, sampler=args.sampler, min_guidance=args.guidance[0],
                            max_guidance=args.guidance[1], seed=args.seed, device=args.device, half=args.half,
                            mirror=args.mirror)  # fmt: skip
    run(config, args.image, args.out, overwrite=args.overwrite)
    print(f"capture written to {args.out}", file=sys.stderr)
    return 0


def _eval_generator_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-generator",
        help="PSNR / SSIM of generated orbits against rendered ground truth of held-out assets",
        description="Generate the orbit of every held-out clip of a dataset from its input view and compare with the "
        "rendered ground truth: PSNR and SSIM per azimuth and overall in OUT/metrics.json, and a contact sheet. "
        "The dataset is rendered from --assets first when DATA has no dataset.json.",
    )
    p.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="model folder to evaluate (default: the embedded model)")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder (dataset.json)")
    p.add_argument("--assets", type=Path, default=None, metavar="DIR",
                   help="folder of 3D assets to render DATA from when it is new")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for metrics.json, contact_sheet.png")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="sampling steps (default: the model's own; "
                   "SV3D 25)")
    p.add_argument("--sampler", choices=["euler", "ddim"], default="euler")
    p.add_argument("--max-clips", type=int, default=None, metavar="N", help="evaluate at most N clips")
    p.add_argument("--seed", type=options.seed, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_eval_generator)


def _run_eval_generator(args: argparse.Namespace) -> int:
    import PIL.Image

    from generate.dataset import DATASET_FILE, DatasetConfig, OrbitClips, build_orbit_dataset
    from generate.pipeline import OrbitPipeline
    from generate.run import weights_or_embedded
    from multiview.errors import InputError
    from multiview.outputs import output_lock, staged_dir, writable_out_dir, write_json
    from orbit4d.eval_generator import contact_sheet, evaluate

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps {args.steps}: use at least 1")
    if args.max_clips is not None and args.max_clips < 1:
        raise InputError(f"--max-clips {args.max_clips}: use at least 1 (leave it out to evaluate every held-out clip)")
    if not (args.data / DATASET_FILE).is_file() and args.assets is None:
        raise InputError(f"{args.data} has no {DATASET_FILE}: pass --assets to render it")
    args.weights = weights_or_embedded(args.weights)
    inputs = [args.weights, args.data, *([args.assets] if args.assets else [])]
    writable_out_dir(args.out, args.overwrite, inputs)  # before loading, rendering or generating anything
    with output_lock(args.out):
        clips = OrbitClips(args.data, "test") if (args.data / DATASET_FILE).is_file() else None  # checked first
        pipeline = OrbitPipeline.from_pretrained(args.weights)
        if clips is None:
            d = pipeline.defaults
            build_orbit_dataset(DatasetConfig(num_frames=d.num_frames, image_size=d.image_size, radius=d.radius,
                                              fov_deg=d.fov_deg), args.assets, args.data)  # fmt: skip
            clips = OrbitClips(args.data, "test")
        report, pairs = evaluate(pipeline, clips, args.steps, args.seed, args.sampler, args.max_clips,
                                 weights=args.weights)  # fmt: skip
        with staged_dir(args.out, args.overwrite, inputs=inputs) as stage:
            write_json(stage / "metrics.json", {**report, "weights": str(args.weights.absolute()),
                                                "data": str(args.data.absolute())})  # fmt: skip
            PIL.Image.fromarray(contact_sheet(pairs)).save(stage / "contact_sheet.png")
    print(f"PSNR {_shown(report['psnr'], '.2f')} dB, SSIM {_shown(report['ssim'], '.4f')} over {len(pairs)} held-out "
          f"clips; written to {args.out}", file=sys.stderr)  # fmt: skip
    return 0


def _shown(value: float | None, form: str) -> str:
    """A metric as printed: n/a where none could be measured (null in metrics.json)."""
    return "n/a" if value is None else format(value, form)
