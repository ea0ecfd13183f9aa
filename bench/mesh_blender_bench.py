"""A scene's .blend (``orbit4d export SCENE --blend``) rendered by Cycles from capture views, beside the photos
(issue 18): the silhouette's IoU against the capture's mask where it has masks, and a contact sheet (photo above,
render of the mesh below) to look at.

    python bench/mesh_blender_bench.py outputs/bench_mesh/scene_avocado_plain --views 0 9 30 --sheet avocado.png
    python bench/mesh_blender_bench.py scenes/fox --views 0 10 25 --sheet bench/mesh_fox.png --percent 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path)
    parser.add_argument("--views", type=int, nargs="+", default=[0], help="indices of the capture's views (by name)")
    parser.add_argument("--percent", type=int, default=100, help="render resolution, percent of the capture's")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--sheet", type=Path, default=None, help="PNG: photos above, renders below")
    args = parser.parse_args()

    import bpy

    from multiview.blender import quiet_blender
    from reconstruct.mesh import MeshConfig
    from viewers.blend import write_blend
    from viewers.meshes import scene_mesh

    tic = time.perf_counter()
    result = scene_mesh(args.scene, MeshConfig())
    blend = write_blend(args.scene / "bench.blend", result)
    print(f"mesh and .blend in {time.perf_counter() - tic:.1f} s: {len(result.mesh):,} triangles")
    with quiet_blender():
        bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    cameras = {obj.name: obj for obj in scene.objects if obj.type == "CAMERA"}
    scene.render.resolution_percentage, scene.cycles.samples = args.percent, args.samples
    photos, renders = [], []
    for index in args.views:
        name, _ = result.cameras[index]
        scene.camera = cameras[name]
        scene.render.filepath = str(args.scene / f".bench_{index}.png")
        with quiet_blender():
            bpy.ops.render.render(write_still=True)
        render = Image.open(scene.render.filepath).convert("RGBA")
        Path(scene.render.filepath).unlink()
        photo = Image.open(result.capture / name).convert("RGBA").resize(render.size, Image.Resampling.BOX)
        mask_path = result.capture / "masks" / Path(name).name
        if mask_path.is_file():
            mask = np.asarray(Image.open(mask_path).convert("L").resize(render.size, Image.Resampling.BOX)) > 127
            silhouette = np.asarray(render)[..., 3] > 127
            print(f"{name}: silhouette IoU {(silhouette & mask).sum() / (silhouette | mask).sum():.3f}")
        photos.append(photo)
        renders.append(render)
    blend.unlink()
    if args.sheet:
        width, height = renders[0].size
        sheet = Image.new("RGBA", (width * len(renders), 2 * height), (255, 255, 255, 255))
        for k, (photo, render) in enumerate(zip(photos, renders)):
            sheet.paste(photo, (k * width, 0), photo)
            sheet.paste(render, (k * width, height), render)
        sheet.convert("RGB").save(args.sheet)
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
