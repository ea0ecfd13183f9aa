"""The ``orbit4d`` command line: a thin layer over each stage's ``run``.

Only argparse is imported at start-up so that ``--help`` answers at once; each command imports
its stage when it runs.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
import warnings
from pathlib import Path

from orbit4d import generate_cmd, train_cmd

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2
EXIT_INTERRUPTED = 130
# OSErrors that say where a file could not be written or read, not that orbit4d is wrong: one line, not a bug report.
_DISK_ERRORS = {errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
                errno.EROFS: "the disk is read-only: choose another --out",
                errno.ENOSPC: "the disk is full: free some space or choose another --out",
                errno.EDQUOT: "the disk quota is exhausted: free some space or choose another --out"}  # fmt: skip
# What lowers each command's memory (the trainer's own out-of-memory errors name the exact values).
_TRAIN_HINT = "a larger --downscale, or --max-gaussians (and --init-points without SfM points)"
OUT_OF_MEMORY_HINTS = {
    "capture": "a smaller --max-size or fewer --frames",
    "train": _TRAIN_HINT,
    "video-to-3d": f"a smaller --max-size or fewer --frames for the capture; {_TRAIN_HINT} for training",
    "image-to-3d": f"fewer --frames for the orbit; {_TRAIN_HINT} for training",
    "eval": "a larger --downscale",
    "generate": "fewer --frames",
    "render-asset": "a smaller --size",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder once the new one is complete")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and COLMAP's own log")


def _capture_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture",
        help="pose a video or a folder of photos with structure from motion",
        description="Select frames from a video (or take a folder of photos), run SIFT + COLMAP structure from motion "
        "with pycolmap, undistort, and write a posed capture: images/, transforms.json (nerfstudio layout), "
        "sparse/0/, points3D.ply, report.json.",
    )
    p.add_argument("input", type=Path, help="a video file (.mp4, .mov, ...) or a folder of images")
    _add_common(p)
    p.add_argument("--frames", type=int, default=None, help="how many frames to select from a video (default 100)")
    p.add_argument("--max-size", type=int, default=None, help="longest image side in pixels for SfM (default 1600)")
    p.add_argument("--matcher", choices=["auto", "sequential", "exhaustive"], default="auto",
                   help="auto: sequential with loop closure for video frames, exhaustive for photo folders")
    p.add_argument("--mapper", choices=["incremental", "global"], default="incremental",
                   help="COLMAP's incremental mapper, or the global mapper (GLOMAP)")
    p.add_argument("--camera-model", default="SIMPLE_RADIAL",
                   help="COLMAP camera model to estimate: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, ...")
    p.add_argument("--camera", choices=["auto", "single", "per-image"], default="auto",
                   help="share one camera between all images (auto: single for a video, per-image for photos)")
    p.add_argument("--threads", type=int, default=-1, help="CPU threads for COLMAP (-1: all)")
    p.set_defaults(func=_run_capture)


def _import_parser(sub: argparse._SubParsersAction) -> None:
    from orbit4d import options

    p = sub.add_parser(
        "import",
        help="bring an existing capture (COLMAP, nerfstudio / instant-ngp, LLFF) into orbit4d's layout",
        description="Convert a COLMAP model folder, a nerfstudio / instant-ngp transforms.json or an LLFF "
        "poses_bounds.npy capture into orbit4d's capture layout. Images listed but missing are skipped.",
    )
    p.add_argument("src", type=Path, help="a COLMAP project or model folder, a transforms.json (or its folder), "
                   "or a folder with poses_bounds.npy")
    p.add_argument("--triangulate", action="store_true",
                   help="when the source has no sparse points (instant-ngp, LLFF), triangulate them from its known "
                   "cameras with COLMAP (better splat initialisation; about a minute per 50 photos)")
    p.add_argument("--allow-outside-paths", action="store_true", help=options.ALLOW_OUTSIDE_HELP + "; such files are "
                   "copied into the capture's images/ under their own names")
    _add_common(p)
    p.set_defaults(func=_run_import)


def _render_asset_parser(sub: argparse._SubParsersAction) -> None:
    from orbit4d import options

    p = sub.add_parser(
        "render-asset",
        help="render a 3D asset (glTF/GLB/OBJ, animated too) into a capture with exact cameras",
        description="Render a 3D asset with Blender (Cycles, CPU) from a camera layout into a capture with exact "
        "ground truth: RGBA images, depth, normals, masks, transforms.json, and the posed mesh per time step in "
        "ground_truth/. The asset is centred and scaled so that its largest side is 1. Needs the render extra "
        "(pip install 'orbit4d[render]', Python 3.11).",
    )
    p.add_argument("model", type=Path, help="a .glb, .gltf or .obj file")
    _add_common(p)
    p.add_argument("--layout", choices=["orbit", "sphere", "rig"], default="orbit",
                   help="orbit: rings of views; sphere: random directions; rig: fixed cameras for multi-view video")
    p.add_argument("--views", type=int, default=48, help="views (orbit, sphere) or cameras (rig); default 48")
    p.add_argument("--elevation", type=float, nargs="+", default=[20.0],
                   help="elevation(s) in degrees, -90 to 90; an orbit gets one ring per value (default 20)")
    p.add_argument("--radius", type=float, default=2.5, help="camera distance, in units of the asset's largest side")
    p.add_argument("--fov", type=float, default=40.0, help="horizontal field of view in degrees")
    p.add_argument("--size", type=int, nargs="+", default=[256], metavar="PX",
                   help="image size, 8 to 8192: one value for square images, or WIDTH HEIGHT (default 256)")
    p.add_argument("--background", default="transparent",
                   help="transparent, white, black or #rrggbb (images are RGBA either way)")
    p.add_argument("--animation", default=None, help="animation to play (default: the asset's first, if any)")
    p.add_argument("--time-steps", type=int, default=1, help="times evenly over the animation; every camera "
                   "renders every time (default 1)")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel")
    p.add_argument("--seed", type=options.seed, default=0, help="seed for the sphere layout and the renderer")
    p.add_argument("--allow-outside-paths", action="store_true", help=options.ALLOW_OUTSIDE_HELP + " (glTF buffers "
                   "and textures, OBJ materials)")
    p.set_defaults(func=_run_render_asset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orbit4d",
        description="One photo, a video or synchronized videos into 3D and 4D Gaussian-splat scenes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _capture_parser(sub)
    _import_parser(sub)
    _render_asset_parser(sub)
    train_cmd.add_parsers(sub)
    generate_cmd.add_parsers(sub)
    return parser


def _version() -> str:
    from orbit4d import __version__

    return __version__


def _run_capture(args: argparse.Namespace) -> int:
    from multiview import process

    config = process.CaptureConfig.from_options(
        frames=args.frames,
        max_size=args.max_size,
        matcher=args.matcher,
        mapper=args.mapper,
        camera_model=args.camera_model,
        camera=args.camera,
        threads=args.threads,
        verbose=args.debug,
    )
    process.run(config, args.input, args.out, overwrite=args.overwrite)
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from multiview import process

    process.run_import(args.src, args.out, overwrite=args.overwrite, triangulate=args.triangulate,
                       verbose=args.debug, allow_outside=args.allow_outside_paths)
    return 0


def _run_render_asset(args: argparse.Namespace) -> int:
    from multiview import blender, render_asset
    from multiview.asset_files import check_asset_references
    from multiview.errors import InputError
    from multiview.outputs import staged_dir

    if len(args.size) not in (1, 2):
        raise InputError(f"--size takes one value or WIDTH HEIGHT, got {len(args.size)} values")
    width, height = (args.size * 2)[:2]
    config = render_asset.RenderConfig(
        layout=args.layout,
        num_views=args.views,
        elevations_deg=tuple(args.elevation),
        radius=args.radius,
        fov_deg=args.fov,
        width=width,
        height=height,
        background=args.background,
        animation=args.animation,
        time_steps=args.time_steps,
        samples=args.samples,
        seed=args.seed,
        allow_outside_paths=args.allow_outside_paths,
    )
    blender.check_asset_path(args.model)  # before the staging folder: a missing file, a folder, a .fbx
    check_asset_references(args.model, args.allow_outside_paths)  # and files it names outside its folder
    with staged_dir(args.out, args.overwrite, inputs=[args.model]) as stage:
        render_asset.render_asset(config, args.model, stage)
    print(f"capture written to {args.out}", file=sys.stderr)
    return 0


def _terminated(signum, frame) -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) unwinds as Ctrl-C does: staging folders are removed, training saves
    a checkpoint."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        # pycolmap's glog sets its own SIGTERM handler on import (a stack dump, then death, leaving staging folders):
        # import it first, so that ours is the one that stays; PIL before it, always (see multiview.capture)
        import PIL.Image  # noqa: F401
        import pycolmap  # noqa: F401
    previous = signal.signal(signal.SIGTERM, _terminated) if on_main_thread else None
    try:
        with warnings.catch_warnings():
            if not args.debug:  # a library's warning is one line, without the source line that raised it
                warnings.showwarning = _one_line_warning
            return _run(args)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def _one_line(message: object) -> str:
    """``message`` on one line (a file name or a library's reason can hold line breaks)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _run(args: argparse.Namespace) -> int:
    """``args.func(args)``, with what escapes it as one line and an exit code (a traceback with ``--debug``)."""
    if args.debug:
        return args.func(args)
    from multiview.errors import Orbit4dError

    try:
        return args.func(args)
    except Orbit4dError as error:
        print(f"orbit4d {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"orbit4d {args.command}: interrupted; outputs already written are intact", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        hint = OUT_OF_MEMORY_HINTS.get(args.command, "a smaller input")
        print(f"orbit4d {args.command}: error: out of memory; try {hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        if error.errno not in _DISK_ERRORS:
            return _internal_error(args, error)
        where = f"{error.filename}: " if error.filename else ""
        print(f"orbit4d {args.command}: error: {where}{error.strerror}: {_DISK_ERRORS[error.errno]}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # a bug: say so in one line, the traceback is one flag away
        return _internal_error(args, error)


def _internal_error(args: argparse.Namespace, error: Exception) -> int:
    print(f"orbit4d {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
          "(rerun with --debug for the traceback and report it)", file=sys.stderr)
    return EXIT_INTERNAL_ERROR
