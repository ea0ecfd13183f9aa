"""Ground truth for benchmarks of generated orbits: Blender renders of an asset at an orbit's azimuths and between
them, and splats measured against them (PSNR on white, foreground mask IoU). Used by ``orbit_train_bench.py`` and
``image_to_3d_bench.py``.

An orbit of F frames at one elevation is rendered as two interleaved rings (``orbit4d render-asset --elevation e
e``: ring 1 starts half a step round), so ring 0 holds the orbit's azimuths 0, 360/F, ... (the generator's input
view at azimuth 0) and ring 1 the azimuths between them. Radius 2 and a 33.8 degree field of view: the generator's
training renders.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multiview.camera import Camera  # noqa: E402
from multiview.capture import read_capture  # noqa: E402

RADIUS, FOV_DEG = 2.0, 33.8
SHARED_MODELS = REPO.parent / "shared" / "data" / "models"


def textured_spot(folder: Path) -> Path:
    """Keenan Crane's cow (public domain) as a textured .glb in ``folder``: the shared OBJ names no material, so
    Blender would render it white; its texture is attached here."""
    import trimesh

    out = Path(folder) / "spot.glb"
    if not out.is_file():
        source = SHARED_MODELS / "spot" / "spot"
        mesh = trimesh.load(source / "spot_triangulated.obj", process=False)
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=PIL.Image.open(source / "spot_texture.png"),
                                                       roughnessFactor=0.8, metallicFactor=0.0)  # fmt: skip
        mesh.visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material)
        out.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(out)
    return out


def asset_path(name: str, work: Path) -> Path:
    """``spot`` (textured, ``textured_spot``), ``Avocado``, ``Duck``, ``Fox`` from ../shared/data, or a path."""
    named = {"Avocado": SHARED_MODELS / "Avocado" / "Avocado.gltf", "Duck": SHARED_MODELS / "Duck.glb",
             "Fox": SHARED_MODELS / "Fox.glb"}  # fmt: skip
    if name == "spot":
        return textured_spot(work)
    return named.get(name, Path(name))


@dataclass(frozen=True, eq=False)
class TruthView:
    azimuth_deg: float  # 0 .. 360, from +x towards +y
    between: bool  # False: one of the orbit's azimuths; True: half a step from them
    camera: Camera
    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1], on white
    mask: np.ndarray  # [H, W] bool
    image_path: Path  # the RGBA render


def render_truth(asset: Path, out: Path, frames: int, elevation: float, size: int, samples: int = 32) -> Path:
    """Render the two rings (module docstring) into ``out`` unless a finished render is there; return ``out``."""
    from multiview.render_asset import RenderConfig, render_asset

    if (out / "transforms.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = RenderConfig(num_views=2 * frames, elevations_deg=(elevation, elevation), radius=RADIUS, fov_deg=FOV_DEG,
                          width=size, height=size, samples=samples)  # fmt: skip
    render_asset(config, asset, out)
    return out


def load_truth(folder: Path, size: int | None = None) -> list[TruthView]:
    """The rendered views, sorted by azimuth, at ``size`` pixels (box-filtered; None: as rendered)."""
    capture = read_capture(folder)
    views = []
    for frame in capture.frames:
        rgba = PIL.Image.open(frame.image_path).convert("RGBA")
        mask = PIL.Image.open(frame.mask_path).convert("L")
        camera = frame.camera
        if size is not None and size != rgba.width:
            rgba = rgba.resize((size, size), PIL.Image.Resampling.BOX)
            mask = mask.resize((size, size), PIL.Image.Resampling.BOX)
            camera = camera.scaled(size / camera.width)
        array = np.asarray(rgba, dtype=np.float32) / 255.0
        rgb = array[..., :3] * array[..., 3:] + (1.0 - array[..., 3:])
        azimuth = math.degrees(math.atan2(camera.center[1], camera.center[0])) % 360.0
        views.append((azimuth, camera, rgb, np.asarray(mask) > 127, frame.image_path))
    views.sort(key=lambda view: view[0])
    step = 360.0 / len(views)
    return [TruthView(a, round(a / step) % 2 == 1, c, rgb, m, path) for a, c, rgb, m, path in views]


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((image.astype(np.float64) - target) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def render_splats(splats, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """([H, W, 3] float on white, [H, W] bool alpha > 0.5) of ``splats`` seen by ``camera``."""
    import torch

    from reconstruct.evaluate import render_with_depth

    image, _, alpha = render_with_depth(splats, camera, torch.ones(3), depth=False)
    return image.numpy(), alpha.numpy() > 0.5


def measure(splats, truth: list[TruthView], cameras: list[Camera] | None = None) -> list[dict]:
    """Per truth view: azimuth, between, PSNR and mask IoU of the splats seen by ``cameras`` (default: each truth
    view's own camera)."""
    rows = []
    for index, view in enumerate(truth):
        image, alpha = render_splats(splats, view.camera if cameras is None else cameras[index])
        rows.append({"azimuth": view.azimuth_deg, "between": view.between, "psnr": psnr(image, view.rgb),
                     "iou": iou(alpha, view.mask)})  # fmt: skip
    return rows


def mean(rows: list[dict], key: str, between: bool | None = None) -> float:
    values = [row[key] for row in rows if between is None or row["between"] == between]
    return float(np.mean(values)) if values else float("nan")
