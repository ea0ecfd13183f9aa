"""``orbit4d video-to-4d``: argparse only; the stages (``multiview.video4d``, ``reconstruct.train4d``) are imported
when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orbit4d import options

MOTION_BASES = ("bspline", "poly")  # reconstruct.splats4d.BASES, repeated so that --help imports nothing


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``video-to-4d`` on the ``orbit4d`` sub-command parser."""
    p = sub.add_parser(
        "video-to-4d",
        help="a video, synchronized videos or a capture with times to a 4D (moving) splat scene",
        description="Make a 4D Gaussian scene: canonical Gaussians plus a smooth motion and a lifespan each. INPUT is "
        "a video file (one moving camera: posed by SfM on the static background, what moves masked), a folder of "
        "synchronized videos (one camera each), or a capture whose frames carry time and camera_id (orbit4d "
        "render-asset --layout rig, an imported multi-camera set). Writes DIR/capture (unless INPUT is a capture) "
        "and DIR/scene: splats4d.ply (the 4D file the viewer plays), sequence/frame_NNNN.ply (one 3DGS .ply per time "
        "step), metrics.json (held-out PSNR / SSIM over all time steps and per time step), renders/, playback.mp4, "
        "checkpoint/, and with --mesh meshes/mesh_NNNN.glb and meshes.blend. With several cameras one whole camera is "
        "held out (--test-camera).",
    )
    p.add_argument("input", type=Path, help="a video file, a folder of synchronized videos, or a capture folder with "
                   "times")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for capture/ and scene/")
    p.add_argument("--time-steps", type=int, default=None, metavar="T",
                   help="videos: time steps taken evenly over the video(s) (default 24)")
    p.add_argument("--max-size", type=int, default=None, metavar="PX",
                   help="videos: longest image side in pixels (default 960)")
    p.add_argument("--test-camera", type=int, default=None, metavar="ID",
                   help="the camera held out for evaluation when there are several (default: the highest id)")
    p.add_argument("--test-every", type=int, default=None, metavar="N",
                   help="one camera: hold out every N-th time step (default 8; 0: none)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="optimisation steps (default 6000)")
    p.add_argument("--motion", choices=MOTION_BASES, default=None,
                   help="motion basis per Gaussian: bspline (cubic B-spline, default) or poly (polynomial in time)")
    p.add_argument("--motion-points", type=int, default=None, metavar="M",
                   help="position coefficients per Gaussian (default: a third of the time steps, 4 to 16)")
    p.add_argument("--smoothness", type=float, default=None, metavar="W",
                   help="weight of the temporal smoothness term (default 1; 0: none)")
    p.add_argument("--no-lifespans", dest="lifespans", action="store_false", default=None,
                   help="keep every Gaussian at every time (no opacity over time)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="auto: CUDA (gsplat kernels) when available, else CPU (numba-compiled rasterizer)")
    p.add_argument("--downscale", type=int, default=None, metavar="K", help="divide image sides by K for training")
    p.add_argument("--max-gaussians", type=int, default=None, metavar="N", help="cap on the number of Gaussians")
    p.add_argument("--init-points", type=int, default=None, metavar="N",
                   help="random Gaussians to start from when the capture has no points (default 10,000 on the CPU)")
    p.add_argument("--sh-degree", type=int, choices=[0, 1, 2, 3], default=None, help="highest SH degree of colours")
    p.add_argument("--background", default=None, metavar="COLOR",
                   help="random (default), black, white or #rrggbb: behind splats and masked-out pixels")
    p.add_argument("--allow-outside-paths", action="store_true", default=None, help=options.ALLOW_OUTSIDE_HELP)
    p.add_argument("--seed", type=options.seed, default=None, metavar="N", help="random seed (default 0)")
    p.add_argument("--mesh", action="store_true",
                   help="after training, a mesh per time step: DIR/scene/meshes/mesh_NNNN.glb, and DIR/scene/"
                   "meshes.blend playing them (with the render extra)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the scene's checkpoint (an interrupted run, or a finished one to train further)")
    p.add_argument("--overwrite", action="store_true", help="replace existing capture and scene folders once the new "
                   "ones are complete")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and COLMAP's own log")
    p.set_defaults(func=_run_video_to_4d)


_OPTION_FIELDS = {
    "steps": "steps", "motion": "basis", "motion_points": "motion_points", "smoothness": "smoothness",
    "lifespans": "lifespans", "device": "device", "downscale": "downscale", "max_gaussians": "max_gaussians",
    "init_points": "random_init_points", "sh_degree": "sh_degree", "background": "background",
    "test_camera": "test_camera", "test_every": "test_every", "seed": "seed",
    "allow_outside_paths": "allow_outside_paths",
}  # fmt: skip


def _train_config(args: argparse.Namespace, scene_dir: Path):
    """Defaults (or, with --resume, the checkpoint's settings) with the options given on the command line."""
    from dataclasses import replace

    from reconstruct import train4d

    overrides = {field: getattr(args, option) for option, field in _OPTION_FIELDS.items()
                 if getattr(args, option) is not None}  # fmt: skip
    saved = train4d.saved_config(scene_dir) if args.resume else None
    return replace(saved or train4d.Train4DConfig(), **overrides)


def _run_video_to_4d(args: argparse.Namespace) -> int:
    from multiview import video4d
    from multiview.errors import InputError
    from multiview.outputs import checked_out_dir, output_lock
    from reconstruct import train, train4d

    if not args.input.exists():
        raise InputError(f"{args.input} does not exist: give a video file, a folder of synchronized videos or a "
                         "capture with times")
    scene_dir = args.out / "scene"
    is_capture = video4d.is_capture(args.input)
    capture_dir = (args.input.parent if args.input.is_file() else args.input) if is_capture else args.out / "capture"
    for folder in [args.out, scene_dir] + ([] if is_capture else [capture_dir]):
        checked_out_dir(folder, [args.input])
    config = _train_config(args, scene_dir)
    config.validate()  # settings first, before minutes of SfM
    with output_lock(args.out):  # one run per OUT, from the capture to the scene
        train.check_out_dir(scene_dir, capture_dir, resume=args.resume, overwrite=args.overwrite)
        if is_capture:
            _check_capture(capture_dir, args)
        elif (capture_dir / "transforms.json").is_file() and not args.overwrite:
            _check_made_from(capture_dir, args.input)
        else:
            video4d.run(_capture_config(args), args.input, capture_dir, overwrite=args.overwrite)
        train4d.run(config, capture_dir, scene_dir, resume=args.resume, overwrite=args.overwrite)
        if args.mesh:
            from viewers.meshes4d import export_scene_meshes4d

            from multiview.errors import InputError

            try:
                written = export_scene_meshes4d(scene_dir, overwrite=True)  # the scene was just (re)written
            except InputError as error:  # the scene stays: say so, and how to mesh it again
                raise InputError(f"{error} (the 4D scene in {scene_dir} is complete; mesh it again with orbit4d "
                                 f"export {scene_dir} --mesh glb)") from None
            blend = [path for path in written if path.suffix == ".blend"]
            print(f"{len(written) - len(blend)} meshes in {scene_dir / 'meshes'}"
                  + (f", the sequence in {blend[0]}" if blend else ""), file=sys.stderr)
    where = "" if is_capture else f"capture in {capture_dir}, "
    print(f"{where}4D scene in {scene_dir}", file=sys.stderr)
    return 0


def _capture_config(args: argparse.Namespace):
    from multiview import sfm, video4d

    given = {"time_steps": args.time_steps, "max_size": args.max_size}
    return video4d.Video4DConfig(**{name: value for name, value in given.items() if value is not None},
                                 sfm=sfm.SfmConfig(verbose=args.debug))  # fmt: skip


def _check_capture(capture_dir: Path, args: argparse.Namespace) -> None:
    """A capture given as INPUT: its times are checked before training (``reconstruct.data4d.check_times``); the
    video options do not apply to it."""
    from multiview.capture import read_capture
    from multiview.console import warn
    from reconstruct.data4d import check_times

    if args.time_steps is not None or args.max_size is not None:
        warn("--time-steps and --max-size apply to videos; the capture is used as it is (--downscale reduces it)")
    check_times(read_capture(capture_dir, bool(args.allow_outside_paths)))


def _check_made_from(capture_dir: Path, source: Path) -> None:
    """Reuse DIR/capture only when its report.json says it was made from ``source``."""
    import json

    from multiview.console import info
    from multiview.errors import InputError

    try:
        report = json.loads((capture_dir / "report.json").read_text())
    except (OSError, ValueError):
        report = {}
    made_from = report.get("input") if isinstance(report, dict) else None
    if made_from and Path(made_from).resolve() != Path(source).resolve():
        raise InputError(f"{capture_dir} was made from {made_from}, not {source}: pass --overwrite to make it again "
                         "from this input, or choose another --out")
    info(f"reusing the 4D capture in {capture_dir} (pass --overwrite to make it again)")
