"""Hostile inputs shared by the survey of every command (``tests/test_hostile_inputs.py``): zero-byte, truncated and
lying files, paths that escape their folder, wrong types, numbers out of range.

``build_corpus(root)`` writes them all under ``root`` (a few hundred KB, under a second) and returns their paths by
name, for the survey's argv templates (``{name}``). Every file here is an input: the survey checks that none changes.
"""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap: pycolmap 4.2.1 breaks PIL's PNG encoder when loaded first)

import base64
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from multiview.capture import Frame, write_transforms
from multiview.layouts import orbit

SIZE = 32


def build_corpus(root: Path) -> dict[str, Path]:
    """Write the hostile inputs under ``root``; {name: path}."""
    root.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, Path] = {"root": root}
    for builder in (_captures, _transforms_files, _colmap_models, _llff_folders, _splat_files, _assets,
                    _generator_inputs, _videos, _finetune_configs):  # fmt: skip
        corpus.update(builder(root, corpus))
    return corpus


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _captures(root: Path, corpus: dict) -> dict[str, Path]:
    """A valid capture (4 noise views), and a folder of 3 photos: inputs that get a command as far as its output."""
    capture = root / "capture"
    frames = [Frame(_image(capture / "images" / f"view_{i}.png", i).absolute(), camera)
              for i, camera in enumerate(orbit(4, (20.0,), width=SIZE, height=SIZE))]  # fmt: skip
    write_transforms(capture / "transforms.json", frames, capture)
    for i in range(3):
        _image(root / "photos" / f"photo_{i}.jpg", 10 + i, (64, 48))
    _image(root / "outside" / "stray.png", 99)
    return {"capture": capture, "photos": root / "photos", "stray": root / "outside" / "stray.png"}


def _frame(file_path: object, **extra) -> dict:
    c2w = np.eye(4)
    c2w[:3, 3] = [0.0, 0.0, 2.0]
    return {"file_path": file_path, "transform_matrix": c2w.tolist(), **extra}


def _transforms(folder: Path, frames: list, **meta) -> Path:
    """A transforms.json in ``folder`` with valid images/a.png and images/b.png beside it and ``frames``."""
    for index, name in enumerate(("a", "b")):
        _image(folder / "images" / f"{name}.png", index)
    return _write_json(folder / "transforms.json", {"fl_x": 30.0, "cx": 16.0, "cy": 16.0, "w": SIZE, "h": SIZE,
                                                    **meta, "frames": frames})  # fmt: skip


def _transforms_files(root: Path, corpus: dict) -> dict[str, Path]:
    """nerfstudio captures whose paths escape, repeat, or hold the wrong types and numbers."""
    good = [_frame("images/a.png"), _frame("images/b.png")]
    ns = root / "ns"
    os.makedirs(ns / "link" / "images", exist_ok=True)
    os.symlink(corpus["stray"], ns / "link" / "images" / "c.png")
    made = {
        "ns_parent": _transforms(ns / "parent", [*good, _frame("../../outside/stray.png")]),
        "ns_absolute": _transforms(ns / "absolute", [*good, _frame(str(corpus["stray"]))]),
        "ns_etc": _transforms(ns / "etc", [_frame("/etc/passwd"), *good]),
        "ns_link": _transforms(ns / "link", [*good, _frame("images/c.png")]),
        "ns_mask": _transforms(ns / "mask", [_frame("images/a.png", mask_path="../../outside/stray.png")]),
        "ns_depth": _transforms(ns / "depth", [_frame("images/a.png", depth_file_path="/etc/hostname")]),
        "ns_ply": _transforms(ns / "ply", good, ply_file_path="../../outside/stray.png"),
        "ns_duplicate": _transforms(ns / "duplicate", [*good, _frame("./images/a.png")]),
        "ns_number_path": _transforms(ns / "number_path", [*good, _frame(42)]),
        "ns_nul": _transforms(ns / "nul", [*good, _frame("images/a.png\0.jpg")]),
        "ns_long": _transforms(ns / "long", [*good, _frame("x" * 5000)]),
        "ns_overflow": _transforms(ns / "overflow", [good[0], {"file_path": "images/b.png",
                                                               "transform_matrix": (np.eye(4) * 1e308).tolist()}]),
        "ns_far_camera": _transforms(ns / "far_camera", [good[0], _frame("images/b.png") | {"transform_matrix": [
            [1, 0, 0, 1e30], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]),
        "ns_focal_string": _transforms(ns / "focal_string", good, fl_x="thirty"),
        "ns_focal_huge": _transforms(ns / "focal_huge", good, fl_x=1e308),
        "ns_size_huge": _transforms(ns / "size_huge", good, w=10**12, h=10**12),
        "ns_frames_dict": _write_json(ns / "frames_dict" / "transforms.json", {"frames": {"file_path": "a.png"}}),
    }
    (ns / "zero").mkdir()
    (ns / "zero" / "transforms.json").write_bytes(b"")
    made["ns_zero"] = ns / "zero" / "transforms.json"
    return made


def _colmap_models(root: Path, corpus: dict) -> dict[str, Path]:
    """COLMAP projects: a truncated points3D.bin that promises a billion points, an empty cameras.bin, an image
    named outside its folder."""
    import pycolmap

    made = {}
    for name in ("lying_points", "zero_cameras", "escaping_name", "lying_track"):
        project = root / "colmap" / name
        options = pycolmap.SyntheticDatasetOptions(num_rigs=1, num_cameras_per_rig=1, num_frames_per_rig=3,
                                                   num_points3D=20, camera_width=SIZE, camera_height=SIZE)  # fmt: skip
        pycolmap.set_random_seed(0)
        reconstruction = pycolmap.synthesize_dataset(options)
        if name == "escaping_name":
            next(iter(reconstruction.images.values())).name = "../../../outside/stray.png"
        (project / "sparse" / "0").mkdir(parents=True)
        reconstruction.write_binary(project / "sparse" / "0")
        for index, image in enumerate(reconstruction.images.values()):
            if not image.name.startswith(".."):
                _image(project / "images" / image.name, index)
        made[f"colmap_{name}"] = project
    points = root / "colmap" / "lying_points" / "sparse" / "0" / "points3D.bin"
    points.write_bytes(struct.pack("<Q", 10**9) + points.read_bytes()[8:2300])  # the survey's 2.3 KB bomb
    track = root / "colmap" / "lying_track" / "sparse" / "0" / "points3D.bin"
    data = bytearray(track.read_bytes())
    data[8 + 43 : 8 + 51] = struct.pack("<Q", 2**62)  # the first point's track length
    track.write_bytes(bytes(data))
    (root / "colmap" / "zero_cameras" / "sparse" / "0" / "cameras.bin").write_bytes(b"")
    return made


def _llff_folders(root: Path, corpus: dict) -> dict[str, Path]:
    """LLFF folders whose poses_bounds.npy promises 10^10 rows, or holds a pickle."""
    made = {}
    for name in ("lying", "pickled"):
        folder = root / "llff" / name
        for index in range(2):
            _image(folder / "images" / f"{index}.png", index)
        made[f"llff_{name}"] = folder
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000, 17), }"
    header += " " * (117 - len(header)) + "\n"
    (root / "llff" / "lying" / "poses_bounds.npy").write_bytes(
        b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 272)
    np.save(root / "llff" / "pickled" / "poses_bounds.npy", np.array([{"boom": 1}, {"boom": 2}], dtype=object),
            allow_pickle=True)  # fmt: skip
    return made


def _splat_files(root: Path, corpus: dict) -> dict[str, Path]:
    """Splat .ply files: a valid one (50 Gaussians), one whose header promises a billion, a zero-byte one; a scene
    folder whose metrics.json is a list."""
    import torch

    from reconstruct.ply import write_ply
    from reconstruct.splats import Splats

    g = torch.Generator().manual_seed(0)
    n = 50
    splats = Splats(means=torch.randn(n, 3, generator=g) * 0.3, quats=torch.randn(n, 4, generator=g),
                    scales=torch.full((n, 3), -3.0), opacities=torch.zeros(n), sh0=torch.rand(n, 1, 3, generator=g),
                    shN=torch.zeros(n, 0, 3))  # fmt: skip
    folder = root / "splats"
    folder.mkdir()
    good = write_ply(folder / "good.ply", splats)
    data = good.read_bytes()
    (folder / "lying.ply").write_bytes(data.replace(b"element vertex 50", b"element vertex 1000000000")[:4000])
    (folder / "zero.ply").write_bytes(b"")
    scene = folder / "scene"
    scene.mkdir()
    (scene / "splats.ply").write_bytes(data)
    (scene / "metrics.json").write_text("[1, 2, 3]")
    good_scene = folder / "good_scene"
    good_scene.mkdir()
    (good_scene / "splats.ply").write_bytes(data)
    _write_json(good_scene / "metrics.json", {"capture": str(corpus["capture"]), "config": {"test_every": 2}})
    return {"splats": good, "splats_lying": folder / "lying.ply", "splats_zero": folder / "zero.ply",
            "scene_bad_metrics": scene, "scene": good_scene}  # fmt: skip


def _gltf(triangles: np.ndarray, **extra) -> dict:
    """A glTF of ``triangles`` [T, 3, 3] in an embedded buffer; ``extra`` replaces top-level keys."""
    positions = triangles.reshape(-1, 3).astype(np.float32)
    blob = positions.tobytes()
    meta = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "buffers": [{"byteLength": len(blob), "uri": "data:application/octet-stream;base64,"
                     + base64.b64encode(blob).decode()}],
        "bufferViews": [{"buffer": 0, "byteLength": len(blob)}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": len(positions), "type": "VEC3",
                       "min": positions.min(0).tolist(), "max": positions.max(0).tolist()}],
    }  # fmt: skip
    return {**meta, **extra}


def _assets(root: Path, corpus: dict) -> dict[str, Path]:
    """3D assets: a valid triangle; buffers, images and OBJ materials named outside the asset's folder; a GLB whose
    header promises more than it holds; a mesh whose faces all have zero area."""
    folder = root / "assets"
    triangle = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]]], dtype=np.float32)
    image_escape = {"images": [{"uri": str(corpus["stray"])}], "textures": [{"source": 0}]}
    made = {
        "asset": _write_json(folder / "good" / "triangle.gltf", _gltf(triangle)),
        "asset_buffer_escape": _write_json(folder / "buffer" / "model.gltf", _gltf(triangle, buffers=[
            {"byteLength": 36, "uri": "../../../../../../../../etc/passwd"}])),
        "asset_image_escape": _write_json(folder / "image" / "model.gltf", _gltf(triangle, **image_escape)),
        "asset_degenerate": _write_json(folder / "degenerate" / "model.gltf", _gltf(np.array(
            [[[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 0], [0, 1, 1], [0, 1, 0]]], dtype=np.float32))),
    }  # fmt: skip
    obj = folder / "obj" / "model.obj"
    obj.parent.mkdir(parents=True)
    obj.write_text("mtllib ../../outside/evil.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    map_obj = folder / "obj_map" / "model.obj"
    map_obj.parent.mkdir(parents=True)
    map_obj.write_text("mtllib model.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nusemtl m\nf 1/1 2/2 3/3\n")
    (map_obj.parent / "model.mtl").write_text(f"newmtl m\nKd 1 1 1\nmap_Kd -s 1 1 1 {corpus['stray']}\n")
    glb = folder / "lying.glb"
    glb.write_bytes(b"glTF" + struct.pack("<III", 2, 10**9, 10**9) + b"JSON" + b"{}")
    (folder / "zero.glb").write_bytes(b"")
    made.update({"asset_obj_mtllib": obj, "asset_obj_map": map_obj, "asset_lying_glb": glb,
                 "asset_zero_glb": folder / "zero.glb"})  # fmt: skip
    return made


def _generator_inputs(root: Path, corpus: dict) -> dict[str, Path]:
    """An input photo, a zero-byte one; weights: a pickle named .safetensors, a header that promises a petabyte, a
    folder of nothing; a dataset folder with its dataset.json."""
    folder = root / "generator"
    photo = _image(folder / "photo.png", 7, (48, 48))
    (folder / "zero.png").write_bytes(b"")
    (folder / "pickle.safetensors").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    (folder / "lying.safetensors").write_bytes(struct.pack("<Q", 10**15) + b'{"a": {}}')
    (folder / "empty_model").mkdir()
    data = folder / "dataset"
    _write_json(data / "dataset.json", {"config": {}, "clips": [{"path": "clips/a_0", "asset": "a.glb",
                                                                 "split": "test"}]})  # fmt: skip
    clip = {"path": "../../capture", "asset": "a.glb", "split": "test"}  # a capture outside the dataset's folder
    _write_json(folder / "dataset_escape" / "dataset.json", {"config": {}, "clips": [clip]})
    return {"photo": photo, "photo_zero": folder / "zero.png", "weights_pickle": folder / "pickle.safetensors",
            "weights_lying": folder / "lying.safetensors", "weights_empty": folder / "empty_model",
            "dataset": data, "dataset_escape": folder / "dataset_escape"}  # fmt: skip


def _videos(root: Path, corpus: dict) -> dict[str, Path]:
    folder = root / "videos"
    folder.mkdir()
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    return {"video_zero": folder / "zero.mp4", "video_text": folder / "text.mp4"}


def _finetune_configs(root: Path, corpus: dict) -> dict[str, Path]:
    """finetune configs: zero bytes, wrong types, a negative step count, an out that is the dataset, an out under
    /proc, and an out that the survey holds busy (``finetune-out``, beside the others)."""
    folder = root / "finetune"
    folder.mkdir()
    (folder / "zero.json").write_bytes(b"")
    data = str(corpus["dataset"])
    configs = {
        "ft_types": {"data": 5, "out": "run"},
        "ft_negative": {"data": data, "out": str(root.parent / "finetune-out" / "neg"), "steps": -3},
        "ft_out_is_data": {"data": data, "out": data},
        "ft_unwritable": {"data": data, "out": "/proc/orbit4d-survey/run"},
        "ft_busy": {"data": data, "out": str(root.parent / "finetune-out" / "busy")},
    }
    made = {"ft_zero": folder / "zero.json"}
    for name, config in configs.items():
        made[name] = _write_json(folder / f"{name}.json", config)
    made["ft_busy_out"] = root.parent / "finetune-out" / "busy"
    return made
