"""Small scenes for the viewer's tests: a coloured ball of splats with a capture of it, and per-frame sequences."""

from __future__ import annotations

import PIL.Image  # isort: skip  (before pycolmap: see tests/synthetic.py)

import json
import math
from pathlib import Path

import numpy as np
import torch

from reconstruct.splats import Splats, rgb_to_sh0


def ball_splats(n: int = 3000, center=(0.0, 0.0, 0.0), radius: float = 0.5, tint=(0.0, 0.0, 0.0),
                seed: int = 0) -> Splats:  # fmt: skip
    """``n`` flat, randomly turned Gaussians on a sphere, coloured by their direction (plus ``tint``), mostly
    opaque: a ball whose silhouette and colours a viewer must reproduce."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    rgb = (0.5 + 0.4 * direction + torch.tensor(tint)).clamp(0.05, 0.95)
    return Splats(
        means=torch.tensor(center) + direction * radius,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.log(torch.tensor([0.05, 0.03, 0.012]) * radius / 0.5).repeat(n, 1),
        opacities=torch.full((n,), math.log(0.9 / 0.1)),
        sh0=rgb_to_sh0(rgb)[:, None],
        shN=torch.zeros(n, 0, 3),
    )


def write_scene(root: Path, splats: Splats | None = None, views: int = 6, size: int = 96) -> Path:
    """A scene folder ``root/scene`` (splats.ply, metrics.json naming its capture) and its capture ``root/capture``
    (``views`` cameras on a ring round the origin, Z up, with images rendered from the splats, points3D.ply)."""
    from multiview.capture import Frame, write_points_ply, write_transforms
    from multiview.layouts import orbit
    from reconstruct.evaluate import render_camera, to_uint8
    from reconstruct.ply import write_ply

    splats = splats or ball_splats()
    capture, scene = root / "capture", root / "scene"
    (capture / "images").mkdir(parents=True)
    scene.mkdir(parents=True)
    frames = []
    for index, camera in enumerate(orbit(views, (25.0,), radius=2.5, fov_deg=45.0, width=size, height=size)):
        path = capture / "images" / f"{index:03d}.png"
        PIL.Image.fromarray(to_uint8(render_camera(splats, camera, torch.ones(3)))).save(path)
        frames.append(Frame(path, camera))
    write_transforms(capture / "transforms.json", frames, capture)
    points = splats.means.numpy()[::10]
    write_points_ply(capture / "points3D.ply", points, np.full((len(points), 3), 200, dtype=np.uint8))
    write_ply(scene / "splats.ply", splats)
    (scene / "metrics.json").write_text(json.dumps({"capture": str(capture), "psnr": 30.0}))
    return scene


def write_sequence(folder: Path, frames: int = 3, n: int = 1500) -> Path:
    """``frames`` per-frame .ply files (``frame_0000.ply`` ...): the ball moving along x, its tint changing."""
    from reconstruct.ply import write_ply

    folder.mkdir(parents=True, exist_ok=True)
    tints = [(0.3, -0.3, -0.3), (-0.3, 0.3, -0.3), (-0.3, -0.3, 0.3)]
    for index in range(frames):
        splats = ball_splats(n, center=(0.35 * (index - (frames - 1) / 2), 0.0, 0.0), radius=0.35,
                             tint=tints[index % 3], seed=index)  # fmt: skip
        write_ply(folder / f"frame_{index:04d}.ply", splats)
    return folder
