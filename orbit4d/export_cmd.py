"""``orbit4d export``: files made from a trained scene (a mesh for Blender and other tools, a ``.blend``): argparse
only; the stages are imported when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SPLAT_FORMATS = ("ply", "splat", "spz")  # viewers.formats.FORMATS
MESH_KINDS = ("glb", "obj", "ply")  # viewers.meshes.MESH_KINDS, repeated so that --help imports nothing
DEPTH_KINDS = ("median", "expected")  # reconstruct.mesh.DEPTH_KINDS
BLEND_NAME = "scene.blend"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` on the ``orbit4d`` sub-command parser."""
    p = sub.add_parser(
        "export",
        help="a trained scene's mesh (.glb / .obj / .ply), a ready-to-render .blend, or its splats as .splat / .spz",
        description="Extract a coloured triangle mesh from a trained scene (its splats rendered from the capture's "
        "cameras and more around the scene, depth fused in a TSDF, cut to the capture's masks, floaters dropped) and "
        "write it for Blender and other tools: SCENE/mesh.glb (glTF: +Y up, metres when the scale is known, Blender "
        "stands it +Z up), .obj (the same axes, sRGB vertex colours) or .ply (the scene's own frame, like "
        "splats.ply); or a .blend with the mesh, its colours as a material and one camera per capture view "
        "(needs the render extra). --format writes the splats themselves for web viewers and editors: .splat "
        "(antimatter15's 32-byte rows, no view-dependent colour), .spz (Niantic's compressed format, about a tenth of "
        "the .ply) or a copy as 3DGS .ply. For a 4D scene (orbit4d video-to-4d), --mesh glb writes a mesh per time "
        "step (SCENE/meshes/mesh_NNNN.glb) and --blend SCENE/meshes.blend playing them.",
    )
    p.add_argument("scene", type=Path, help="a scene folder (orbit4d train --out); a splat file for --format")
    p.add_argument("--mesh", choices=MESH_KINDS, default=None,
                   help="write the mesh in this format (SCENE/mesh.EXT unless --out)")
    p.add_argument("--blend", action="store_true",
                   help=f"write a .blend (SCENE/{BLEND_NAME} unless --out): mesh, material, a camera per view")
    p.add_argument("--format", choices=SPLAT_FORMATS, default=None,
                   help="write the splats in this format (SCENE/splats.EXT, or beside a splat file, unless --out)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="the file to write, when one output is asked for")
    p.add_argument("--faces", type=int, default=None, metavar="N",
                   help="decimate the mesh to at most N triangles (default: keep all)")
    p.add_argument("--resolution", type=int, default=None, metavar="N",
                   help="voxels along the longest side of the region meshed (default 256)")
    p.add_argument("--depth", choices=DEPTH_KINDS, default=None,
                   help="depth fused: median (where the splats become half opaque, default) or expected")
    p.add_argument("--no-masks", action="store_true",
                   help="ignore the capture's masks (default: masked-out pixels are not meshed)")
    p.add_argument("--capture", type=Path, default=None, metavar="DIR",
                   help="the capture the scene was trained on (default: the one its metrics.json names)")
    p.add_argument("--scale", type=float, default=None, metavar="M",
                   help="metres per scene unit, when known (default: the rendered asset's own units, else the "
                   "capture's, recorded as unknown)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=_run_export)


def requested_outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(kind, file) of each output asked for: ("mesh", SCENE/mesh.EXT), ("blend", SCENE/scene.blend), ("splats",
    SCENE/splats.EXT or FILE.EXT beside a splat file), ``--out`` in
    place of the default when one output is asked for. InputError when none is, or ``--out`` is ambiguous."""
    from multiview.errors import InputError

    defaults = []
    if args.mesh:
        defaults.append(("mesh", args.scene / f"mesh.{args.mesh}"))
    if args.blend:
        defaults.append(("blend", args.scene / BLEND_NAME))
    if args.format:
        source = args.scene / "splats" if args.scene.is_dir() else args.scene
        defaults.append(("splats", source.with_suffix(f".{args.format}")))
    if not defaults:
        raise InputError("say what to export: --mesh glb|obj|ply, --blend, --format ply|splat|spz, or several")
    if args.out is None:
        return defaults
    if len(defaults) > 1:
        raise InputError(f"--out names one file but {len(defaults)} outputs were asked for: leave --out out (they go "
                         f"in {args.scene}) or export them one at a time")
    kind, default = defaults[0]
    expected = default.suffix
    if args.out.suffix.lower() != expected:
        raise InputError(f"--out {args.out}: a {kind} export writes a {expected} file: give a name ending in "
                         f"{expected}")
    return [(kind, args.out)]


def _mesh_config(args: argparse.Namespace):
    from reconstruct.mesh import MeshConfig

    given = {"faces": args.faces, "resolution": args.resolution, "depth": args.depth}
    config = MeshConfig(use_masks=not args.no_masks,
                        **{name: value for name, value in given.items() if value is not None})  # fmt: skip
    config.validate()
    return config


def _run_export(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from multiview.errors import InputError
    from multiview.outputs import output_lock
    from viewers.formats import export_splats, splats_source
    from viewers.meshes import check_output_file

    if args.scale is not None and not 0 < args.scale < float("inf"):
        raise InputError(f"--scale {args.scale}: give the metres one scene unit spans, a positive number")
    if (args.scene / "splats4d.ply").is_file() and not (args.scene / "splats.ply").is_file():
        return _run_export4d(args)
    outputs = requested_outputs(args)
    meshed = [(kind, path) for kind, path in outputs if kind != "splats"]
    config = _mesh_config(args) if meshed else None
    if any(kind == "blend" for kind, _ in outputs):
        from multiview.blender import import_bpy

        import_bpy()  # before anything else: InputError saying how to install the render extra
    if meshed:
        from viewers.meshes import scene_files

        splats, capture, _ = scene_files(args.scene, args.capture)
        inputs = [splats, capture / "transforms.json", args.scene / "metrics.json"]
    else:
        inputs = [splats_source(args.scene)]
    with ExitStack() as stack:  # one writer per output file; every output checked before any is written
        for _, path in outputs:
            stack.enter_context(output_lock(path))
        outputs = [(kind, check_output_file(path, args.overwrite, inputs)) for kind, path in outputs]
        written = [export_splats(args.scene, args.format, path, overwrite=args.overwrite)
                   for kind, path in outputs if kind == "splats"]  # fmt: skip
        if meshed:
            written += _write_meshes(args, config, [(kind, path) for kind, path in outputs if kind != "splats"])
    print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    return 0


def _run_export4d(args: argparse.Namespace) -> int:
    """A 4D scene (``orbit4d video-to-4d``): its meshes, one per time step (SCENE/meshes/mesh_NNNN.glb), and with
    --blend SCENE/meshes.blend playing them (``viewers.meshes4d``)."""
    from dataclasses import replace

    from multiview.errors import InputError
    from viewers.meshes4d import DEFAULT_CONFIG, export_scene_meshes4d

    options = ((f"--mesh {args.mesh}", args.mesh not in (None, "glb")), ("--format", args.format is not None),
               ("--out", args.out is not None), ("--capture", args.capture is not None),
               ("--scale", args.scale is not None))  # fmt: skip
    refused = [option for option, given in options if given]
    if refused:
        raise InputError(f"{args.scene} is a 4D scene: {', '.join(refused)} apply to 3D scenes; export its meshes "
                         "with --mesh glb (SCENE/meshes/mesh_NNNN.glb) and --blend (SCENE/meshes.blend)")
    if not args.mesh and not args.blend:
        raise InputError("say what to export: --mesh glb (a mesh per time step), --blend (and a .blend playing them)")
    chosen = {"faces": args.faces, "resolution": args.resolution, "depth": args.depth}
    config = replace(DEFAULT_CONFIG, use_masks=not args.no_masks,
                     **{name: value for name, value in chosen.items() if value is not None})  # fmt: skip
    written = export_scene_meshes4d(args.scene, overwrite=args.overwrite, config=config, blend=args.blend)
    print(f"wrote {len(written)} files: {written[0].parent}/mesh_*.glb"
          + (f", {written[-1]}" if written[-1].suffix == ".blend" else ""), file=sys.stderr)
    return 0


def _write_meshes(args: argparse.Namespace, config, outputs: list[tuple[str, Path]]) -> list[Path]:
    """The scene's mesh extracted once, written as each of ``outputs`` (mesh files, a .blend); a summary table."""
    from viewers.meshes import scene_mesh, write_mesh, write_output

    result = scene_mesh(args.scene, config, args.capture, args.scale)
    written = []
    for kind, path in outputs:
        if kind == "mesh":
            written.append(write_output(path, lambda file: write_mesh(file, result.mesh, result.frame)))
        else:
            from viewers.blend import write_blend

            written.append(write_output(path, lambda file: write_blend(file, result)))
    _print_summary(result, written)
    return written


def _print_summary(result, written: list[Path]) -> None:
    from rich.table import Table

    from multiview.console import console

    report, frame = result.report, result.frame
    table = Table(title=f"export → {', '.join(str(path) for path in written)}", show_header=False,
                  title_justify="left")  # fmt: skip
    table.add_row("mesh", f"{report.faces:,} triangles, {report.vertices:,} vertices, vertex colours")
    table.add_row("fused", f"{report.views} views into {report.voxel_size:.3g}-unit voxels; {report.fused_faces:,} "
                  f"triangles before cleaning, {report.components_dropped} small pieces dropped")
    scale = "unknown (the capture's units)" if frame.metres_per_unit is None else f"{frame.metres_per_unit:g} m per unit"
    table.add_row("frame", f"+Y up (Blender: +Z), {frame.source}; scale {scale}")
    table.add_row("time", f"{report.seconds:.1f} s")
    console.print(table)
