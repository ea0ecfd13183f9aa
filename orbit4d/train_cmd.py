"""``orbit4d train``, ``eval``, ``video-to-3d`` and ``image-to-3d``: argparse only; the stages are imported when a
command runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from orbit4d import options

PRESET_NAMES = ("default", "fast", "preview", "orbit")  # reconstruct.train.PRESETS, repeated: --help imports nothing


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``eval``, ``video-to-3d`` and ``image-to-3d`` on the ``orbit4d`` sub-command parser."""
    _train_parser(sub)
    _eval_parser(sub)
    _video_to_3d_parser(sub)
    _image_to_3d_parser(sub)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train 3D Gaussian splats on a posed capture",
        description="Train 3D Gaussian splats on a capture folder (3DGS recipe: L1 + D-SSIM, Adam, SH warm-up, "
        "densification) and write a scene: splats.ply (3DGS layout), splats.splat, metrics.json (held-out PSNR, "
        "SSIM), renders/, turntable.mp4, checkpoint/. Ctrl-C saves a checkpoint; --resume continues from it.",
    )
    p.add_argument("capture", type=Path, help="a capture folder (transforms.json, images/, optional points3D.ply)")
    p.add_argument("--out", type=Path, required=True, metavar="SCENE", help="scene folder to write")
    _add_train_options(p)
    p.add_argument("--view", action="store_true", help="watch training in the browser: the splats as they train, "
                   "loss and PSNR (orbit4d view's viewer on 127.0.0.1; it stays open after training until Ctrl-C)")
    p.add_argument("--port", type=int, default=8080, help="the viewer's port with --view (default 8080)")
    p.set_defaults(func=_run_train)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="held-out PSNR / SSIM of splats (orbit4d's or another 3DGS tool's .ply) on a capture",
        description="Render the splats of a scene folder (orbit4d train's) or of any 3DGS .ply (gsplat's, the "
        "reference 3DGS code's, in the capture's world frame) at the capture's held-out views and write "
        "metrics.json (PSNR, SSIM, colour-corrected PSNR, LPIPS when its weights are local, depth error where the "
        "capture has depth maps) and renders/. For a scene folder, the capture, downscale, split and rendering "
        "settings default to the ones it was trained with.",
    )
    p.add_argument("splats", type=Path, help="a scene folder (with splats.ply and metrics.json) or a .ply file")
    p.add_argument("--capture", type=Path, default=None, metavar="DIR",
                   help="the capture to evaluate on (default for a scene folder: the one it was trained on)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for metrics.json and renders/ (default for a scene folder: SCENE/eval)")
    p.add_argument("--downscale", type=int, default=None, metavar="K",
                   help="divide image width and height by K (default: the scene's, else 1)")
    p.add_argument("--test-every", type=int, default=None, metavar="N",
                   help="evaluate on every N-th view, as training held them out (default: the scene's, else 8; "
                   "0: every view)")
    p.add_argument("--background", default=None, metavar="COLOR",
                   help="black, white or #rrggbb (default: the scene's when fixed, else white)")
    p.add_argument("--antialiased", action="store_true", default=None,
                   help="rasterize antialiased (default: as the scene was trained)")
    p.add_argument("--align-poses", action="store_true", default=None,
                   help="also measure with each view's pose fitted to the splats (BARF's test-time pose optimisation; "
                   "default: when the scene was trained with --pose-opt)")
    p.add_argument("--allow-outside-paths", action="store_true", default=None, help=options.ALLOW_OUTSIDE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import contextlib
    import json
    from dataclasses import replace

    from multiview.errors import InputError
    from multiview.outputs import output_lock, staged_dir
    from reconstruct import evaluate

    if not args.splats.exists():
        raise InputError(f"{args.splats} does not exist: give a scene folder (orbit4d train --out) or a .ply file")
    scene_dir = args.splats if args.splats.is_dir() else _scene_of(args.splats)
    trained = evaluate.read_trained_scene(scene_dir) if scene_dir else None
    capture = args.capture or (trained.capture if trained else None)
    if capture is None:
        raise InputError(f"{args.splats}: no scene metrics.json names its capture: pass --capture")
    out = args.out or (scene_dir / "eval" if scene_dir else None)
    if out is None:
        raise InputError(f"{args.splats} is a file: pass --out for metrics.json and renders/")
    given = {"downscale": args.downscale, "test_every": args.test_every, "background": args.background,
             "antialiased": args.antialiased, "align_poses": args.align_poses,
             "allow_outside_paths": args.allow_outside_paths}  # fmt: skip
    config = replace(trained.config if trained else evaluate.EvalConfig(),
                     **{name: value for name, value in given.items() if value is not None})  # fmt: skip
    splats_path = args.splats if args.splats.is_file() else scene_dir / "splats.ply"
    inside_scene = scene_dir is not None and Path(scene_dir).absolute() in Path(out).absolute().parents
    with output_lock(scene_dir) if inside_scene else contextlib.nullcontext():  # SCENE/eval: not while it trains
        with staged_dir(out, args.overwrite, inputs=[args.splats, capture]) as stage:
            evaluate.run(config, splats_path, capture, stage, trained.color_corrections if trained else None)
    evaluate.print_summary(json.loads((out / "metrics.json").read_text()), out)
    return 0


def _scene_of(ply: Path) -> Path | None:
    """The scene folder a ``.ply`` lies in (orbit4d train's: a metrics.json beside it that names its capture), whose
    settings evaluating it takes; None for splats from elsewhere."""
    import json

    try:
        metrics = json.loads((ply.parent / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return ply.parent if isinstance(metrics, dict) and "capture" in metrics else None


def _video_to_3d_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "video-to-3d",
        help="a video or photo folder to a 3D splat scene (capture, then train)",
        description="Pose a video or a folder of photos with structure from motion into DIR/capture (as "
        "`orbit4d capture`), then train 3D Gaussian splats on it into DIR/scene (as `orbit4d train`). An existing "
        "DIR/capture is reused unless --overwrite.",
    )
    p.add_argument("input", type=Path, help="a video file (.mp4, .mov, ...) or a folder of images")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for capture/ and scene/")
    p.add_argument("--frames", type=int, default=None, metavar="N",
                   help="how many frames to select from a video (default 100)")
    p.add_argument("--max-size", type=int, default=None, metavar="PX",
                   help="longest image side in pixels for SfM (default 1600)")
    _add_mesh_option(p)
    _add_train_options(p)
    p.set_defaults(func=_run_video_to_3d)


def _image_to_3d_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "image-to-3d",
        help="one photo to a 3D splat scene, a mesh and a viewer (foreground, generated orbit, splats)",
        description="Find the object in IMAGE (its alpha channel, --mask, or GrabCut from the border), frame it as "
        "the generator was trained, generate an orbit of views around it into DIR/capture (exact cameras, a mask "
        "per view), train 3D Gaussian splats on it into DIR/scene (the orbit preset), export DIR/scene/mesh.glb "
        "(unless --no-mesh), and print the viewer command. Without --weights the embedded model is "
        "used; an SV3D checkpoint gives SV3D's published setting (21 views at 576 px). An existing DIR/capture made "
        "from the same photo and settings is reused unless --overwrite.",
    )
    p.add_argument("image", type=Path, help="the photo (.png with transparency works best; .jpg is segmented)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for capture/ and scene/")
    p.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="generator: a model folder or an SV3D .safetensors checkpoint (default: the embedded model)")
    p.add_argument("--mask", type=Path, default=None, metavar="FILE",
                   help="a mask of the object, the photo's size, white on the object (instead of segmentation)")
    p.add_argument("--no-segment", action="store_true",
                   help="the photo is on a plain background: use it as it is (the object is found only to frame it)")
    p.add_argument("--frames", type=int, default=None, metavar="N", help="views in the orbit (model default)")
    p.add_argument("--elevation", type=float, default=None, metavar="DEG",
                   help="the photo's camera elevation, and the orbit's (model default)")
    p.add_argument("--sample-steps", type=int, default=None, metavar="N",
                   help="sampling steps (default: the model's own)")
    p.add_argument("--half", action="store_true", help="generate in fp16/bf16 on CUDA")
    _add_mesh_option(p)
    _add_train_options(p)
    for action in p._actions:  # the splats start in the orbit's visual hull, not at random
        if action.dest == "init_points":
            action.help = "points in the visual hull of the orbit's masks that the splats start from (default 20,000)"
    p.set_defaults(func=_run_image_to_3d)


def _add_mesh_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-mesh", action="store_true",
                   help="skip DIR/scene/mesh.glb (the mesh for Blender; orbit4d export makes it later)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="default: chosen for the device (CUDA: 3DGS's 30k steps; CPU: a 12-minute plan, see "
                   "--minutes); fast: 7k steps; preview: 2k steps, SH degree 1, at most 200k Gaussians; orbit: a "
                   "generated orbit (image-to-3d's default)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="optimisation steps (default: 30,000 on CUDA; on the CPU as many as fit in the time "
                   "budget); with --minutes, the most steps the budget may plan")
    p.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="time budget of the whole run: the number of steps, and the schedule with it (learning "
                   "rate decay, densification, opacity resets, SH warm-up), is planned and re-planned from the "
                   "measured pace so that the scene is written within M minutes (default on the CPU: 12)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="auto: CUDA (gsplat kernels) when available, else CPU (numba-compiled rasterizer)")
    p.add_argument("--downscale", type=int, default=None, metavar="K",
                   help="divide image width and height by K once at load (default: 1 on CUDA; on the CPU the "
                   "smallest K that brings the images to 0.5 megapixels or less)")
    p.add_argument("--strategy", choices=["default", "mcmc"], default=None,
                   help="default: 3DGS's clone / split / prune; mcmc: 3DGS-MCMC relocation within a fixed budget "
                   "(--max-gaussians)")
    p.add_argument("--max-gaussians", type=int, default=None, metavar="N",
                   help="cap on the number of Gaussians (mcmc's budget); 0: none (default: none on CUDA, 1M for "
                   "mcmc; on the CPU sized from the images and the time budget)")
    p.add_argument("--init-points", type=int, default=None, metavar="N",
                   help="random Gaussians to start from when the capture has no points3D.ply "
                   "(default 100,000 on CUDA, 10,000 on the CPU)")
    p.add_argument("--sh-degree", type=int, choices=[0, 1, 2, 3], default=None, help="highest SH degree of colours")
    p.add_argument("--background", default=None, metavar="COLOR",
                   help="random (default), black, white or #rrggbb: behind splats and masked-out pixels")
    p.add_argument("--antialiased", action="store_true", default=None,
                   help="gsplat's antialiased rasterization (Mip-Splatting's 2D filter), for viewing at other "
                   "resolutions than the photos' in viewers that have an antialiased mode")
    p.add_argument("--absgrad", action="store_true", default=None,
                   help="grow Gaussians by their absolute screen gradients (AbsGS): finer detail from fewer "
                   "Gaussians (default strategy)")
    p.add_argument("--pose-opt", action="store_true", default=None,
                   help="refine the training views' camera poses with the splats (for slightly-off SfM poses); "
                   "held-out views are measured as posed and again with their poses fitted to the splats")
    p.add_argument("--appearance", action="store_true", default=None,
                   help="learn a colour correction per training view (for photos of differing exposure or white "
                   "balance: phones' auto exposure, photos from the internet)")
    p.add_argument("--surface", action="store_true", default=None,
                   help="train for meshes (orbit4d export --mesh): flattened Gaussians and depth-normal consistency "
                   "(PGSR, 2DGS); about 1.5x the time on the CPU")
    p.add_argument("--test-every", type=int, default=None, metavar="N",
                   help="hold out every N-th view for evaluation (default 8, 3DGS's llffhold); 0: train on all views "
                   "(evaluated on them)")
    p.add_argument("--allow-outside-paths", action="store_true", default=None, help=options.ALLOW_OUTSIDE_HELP)
    p.add_argument("--lr-scale", type=float, default=None, metavar="X",
                   help="multiply every learning rate (0.5 if it diverges)")
    p.add_argument("--seed", type=options.seed, default=None, metavar="N", help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the scene's checkpoint (an interrupted run, or a finished one to train further)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing scene once the new one is complete")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


_OPTION_FIELDS = {
    "steps": "steps",
    "minutes": "minutes",
    "device": "device",
    "downscale": "downscale",
    "max_gaussians": "max_gaussians",
    "strategy": "strategy",
    "init_points": "random_init_points",
    "sh_degree": "sh_degree",
    "background": "background",
    "antialiased": "antialiased",
    "absgrad": "absgrad",
    "pose_opt": "pose_opt",
    "appearance": "appearance",
    "test_every": "test_every",
    "allow_outside_paths": "allow_outside_paths",
    "lr_scale": "lr_scale",
    "seed": "seed",
}


def _train_config(args: argparse.Namespace, scene_dir: Path, default_preset: str = "default"):
    """The preset (``default_preset`` when none is given; with --resume, the checkpoint's settings) with the options
    given on the command line."""
    from dataclasses import replace

    from reconstruct import train

    overrides = {field: getattr(args, option) for option, field in _OPTION_FIELDS.items()
                 if getattr(args, option) is not None}  # fmt: skip
    if args.surface:
        overrides.update(train.SURFACE_REGULARIZERS)
    saved = train.saved_config(scene_dir) if args.resume else None
    if saved is not None:
        return replace(saved, **overrides)
    return train.TrainConfig.preset(args.preset or default_preset, **overrides)


def _run_train(args: argparse.Namespace) -> int:
    from reconstruct import train

    started = getattr(args, "started", None) or time.monotonic()  # --minutes counts from the command's start
    config = _train_config(args, args.out)
    if not args.view:
        train.run(config, args.capture, args.out, resume=args.resume, overwrite=args.overwrite, started=started)
        print(f"scene written to {args.out}", file=sys.stderr)
        return 0
    from viewers.server import training_viewer

    config.validate()
    viewer, on_step = training_viewer(args.capture, config.steps, port=args.port)
    try:
        print(f"watch training at {viewer.url}", file=sys.stderr, flush=True)
        train.run(config, args.capture, args.out, resume=args.resume, overwrite=args.overwrite, on_step=on_step,
                  started=started)  # fmt: skip
        print(f"scene written to {args.out}; the viewer stays open at {viewer.url} (Ctrl-C to stop)", file=sys.stderr,
              flush=True)  # fmt: skip
        viewer.wait()
    finally:
        viewer.stop()
    return 0


def _run_video_to_3d(args: argparse.Namespace) -> int:
    from multiview import process
    from multiview.errors import InputError

    if not args.input.exists():
        raise InputError(f"{args.input} does not exist: give a video file or a folder of images")

    def capture(capture_dir: Path) -> None:
        capture_config = process.CaptureConfig.from_options(frames=args.frames, max_size=args.max_size,
                                                            verbose=args.debug)  # fmt: skip
        process.run(capture_config, args.input, capture_dir, overwrite=args.overwrite)

    return _capture_then_train(args, capture, [args.input])


def _run_image_to_3d(args: argparse.Namespace) -> int:
    from orbit4d.image_to_3d import ImageTo3DConfig, run

    config = ImageTo3DConfig(weights=args.weights, mask=args.mask, segment=not args.no_segment,
                             num_frames=args.frames, elevation_deg=args.elevation, sample_steps=args.sample_steps,
                             seed=args.seed or 0, device=args.device or "auto", half=args.half,
                             **({"hull_points": args.init_points} if args.init_points else {}))  # fmt: skip
    train_config = _train_config(args, args.out / "scene", default_preset="orbit")
    started = (getattr(args, "started", None) or time.monotonic()) if args.minutes is not None else None
    run(config, train_config, args.image, args.out, overwrite=args.overwrite, resume=args.resume,
        mesh=not args.no_mesh, started=started)  # fmt: skip
    return 0


def _capture_then_train(args: argparse.Namespace, capture, inputs: list[Path]) -> int:
    """OUT/capture made by ``capture(folder)`` from ``inputs[0]`` (kept when it exists and was made from it, unless
    --overwrite), then splats in OUT/scene. Neither folder may be or hold one of ``inputs`` (the weights, say)."""
    from multiview.console import info
    from multiview.outputs import checked_out_dir, output_lock
    from reconstruct import train

    # --minutes counts from the command's start, capture included; the CPU's default budget is the training's own
    started = (getattr(args, "started", None) or time.monotonic()) if args.minutes is not None else None
    capture_dir, scene_dir = args.out / "capture", args.out / "scene"
    for folder in (args.out, capture_dir, scene_dir):  # OUT too: --overwrite replaces what it holds
        checked_out_dir(folder, inputs)
    config = _train_config(args, scene_dir)
    config.validate()  # settings are checked before minutes of capture or sampling
    with output_lock(args.out):  # one run per OUT, from the capture to the scene
        train.check_out_dir(scene_dir, capture_dir, resume=args.resume, overwrite=args.overwrite)  # before capturing
        if (capture_dir / "transforms.json").is_file() and not args.overwrite:
            _check_made_from(capture_dir, inputs[0])
            info(f"reusing the capture in {capture_dir}, made from {inputs[0]} with its own settings (pass "
                 "--overwrite to redo it)")
        else:
            capture(capture_dir)
        train.run(config, capture_dir, scene_dir, resume=args.resume, overwrite=args.overwrite, started=started)
        mesh = None if args.no_mesh else _scene_mesh(scene_dir)
    print(f"capture in {capture_dir}, scene in {scene_dir}" + (f", mesh in {mesh}" if mesh else ""), file=sys.stderr)
    return 0


def _scene_mesh(scene_dir: Path) -> Path | None:
    """SCENE/mesh.glb (``viewers.meshes.export_scene_mesh``); a warning and None when the scene yields no mesh (a
    scene is still a scene)."""
    from multiview.console import warn
    from multiview.errors import InputError
    from viewers.meshes import export_scene_mesh

    try:
        return export_scene_mesh(scene_dir, overwrite=True)
    except InputError as error:
        warn(f"no mesh.glb: {error}")
        return None


def _check_made_from(capture_dir: Path, source: Path) -> None:
    """InputError when ``capture_dir``'s report.json says it was made from something other than ``source``."""
    import json

    from multiview.errors import InputError

    try:
        report = json.loads((capture_dir / "report.json").read_text())
    except (OSError, ValueError):
        return  # a capture made elsewhere: nothing says what from
    made_from = report.get("input") or report.get("source") if isinstance(report, dict) else None
    if made_from and Path(made_from).resolve() != Path(source).resolve():
        raise InputError(f"{capture_dir} was made from {made_from}, not {source}: pass --overwrite to make it again "
                         "from this input, or choose another --out")
