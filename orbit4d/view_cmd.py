"""``orbit4d view`` and ``orbit4d render``: argparse only; viewers (and viser, torch) are imported when a command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCENE_HELP = ("a scene folder (orbit4d train --out), a 4D scene, a folder of per-frame .ply files (played in name "
              "order), or a .ply / .splat / .spz file")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``view`` and ``render`` on the ``orbit4d`` sub-command parser."""
    _view_parser(sub)
    _render_parser(sub)


def _view_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view",
        help="look at a scene in the browser (splats, cameras, points, mesh, time), or export a static viewer",
        description="Serve a scene to the browser (viser, on 127.0.0.1 unless --host says otherwise): the splats, the "
        "training cameras with their photos, sparse points and mesh (toggles), a time slider with play / pause and "
        "speed for sequences, and a button that renders a video along a camera path. Drag to orbit, scroll to zoom, "
        "W A S D / Q E and the arrow keys to fly. Ctrl-C stops it. With --export DIR, write a static folder instead "
        "(index.html and its files, nothing fetched from the network) that any static file server can serve.",
    )
    p.add_argument("scene", type=Path, help=SCENE_HELP)
    p.add_argument("--port", type=int, default=8080, help="TCP port to listen on (default 8080)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 shows the scene to the "
                   "network)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second of a folder of per-frame .ply files")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="write a static viewer into DIR instead of serving")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --export folder once the new one is "
                   "complete")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_view)


def _render_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="render a video of a scene along a camera path (orbit4d's rasterizer)",
        description="Render a scene (or splat file, or sequence) into an H.264 video along a camera path: orbit (once "
        "round the scene) or cameras (through the training cameras). A sequence plays once over the video.",
    )
    p.add_argument("scene", type=Path, help=SCENE_HELP)
    p.add_argument("--out", type=Path, required=True, metavar="VIDEO", help="the video to write (.mp4)")
    p.add_argument("--path", choices=["orbit", "cameras"], default="orbit", help="camera path (default orbit)")
    p.add_argument("--frames", type=int, default=120, help="frames in the video (default 120)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second of the video (default 30)")
    p.add_argument("--sequence-fps", type=float, default=10.0, metavar="FPS",
                   help="frames per second of a folder of per-frame .ply files (default 10)")
    p.add_argument("--background", default="white", metavar="COLOR", help="black, white or #rrggbb (default white)")
    p.add_argument("--max-size", type=int, default=1280, metavar="PX", help="longest side of the video (default 1280)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing video once the new one is complete")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_render)


def _run_view(args: argparse.Namespace) -> int:
    from viewers.scene import load_view_scene

    if args.export is None:
        from viewers.server import check_port

        check_port(args.host, args.port)  # before minutes of loading
    scene = load_view_scene(args.scene, fps=args.fps)
    if args.export is not None:
        from viewers import static

        static.run(scene, args.export, overwrite=args.overwrite)
        print(f"static viewer written to {args.export}: serve it with any static file server, e.g. "
              f"python -m http.server --bind 127.0.0.1 --directory {args.export}", file=sys.stderr)
        return 0
    from viewers.server import Viewer, ViewerConfig

    viewer = Viewer(scene, ViewerConfig(host=args.host, port=args.port))
    print(f"viewing {args.scene} at {viewer.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        viewer.wait()
    finally:
        viewer.stop()
    return 0


def _run_render(args: argparse.Namespace) -> int:
    from multiview.errors import InputError, OutputExistsError
    from viewers.render import RenderConfig, render_video
    from viewers.scene import load_view_scene

    config = RenderConfig(path=args.path, frames=args.frames, fps=args.fps, background=args.background,
                          max_size=args.max_size)  # fmt: skip
    config.validate()
    out = args.out
    if out.suffix.lower() not in (".mp4", ".mov", ".mkv"):
        raise InputError(f"--out {out}: name the video .mp4 (H.264)")
    if out.is_dir() or (out.exists() and not args.overwrite):
        raise OutputExistsError(f"{out} already exists: pass --overwrite or choose another --out")
    from multiview.console import track
    from multiview.outputs import output_lock

    with output_lock(out):  # one writer per video (and its folder made, or an unwritable one said, here)
        scene = load_view_scene(args.scene, fps=args.sequence_fps)
        if scene.source.resolve() == out.resolve():
            raise OutputExistsError(f"--out {out} is the input itself: choose another --out")
        bar = iter(track(range(config.frames), "rendering"))
        render_video(scene, config, out, progress=lambda done, total: next(bar, None))
        for _ in bar:  # closes the progress bar
            pass
    print(f"video written to {out} ({config.frames} frames, path {config.path})", file=sys.stderr)
    return 0
