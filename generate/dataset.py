"""Orbit clips for fine-tuning and evaluating the generator, rendered from a folder of 3D assets.

``build_orbit_dataset`` renders every asset (``.glb``, ``.gltf``, ``.obj``) ``clips_per_asset`` times with the
synthetic-capture renderer: one orbit ring of ``num_frames`` views at a random elevation, on a random background
(white half the time, as the inputs the model will see, else a random light colour), under random lighting (world
light 0.6 to 1.2, and half the time a sun from a random direction above the horizon). Each clip is an ordinary
capture folder; ``dataset.json`` lists them and which assets are held out for evaluation::

    dataset.json            clips: [{path, asset, elevation_deg, background, split}], settings
    clips/<asset>_<k>/      a capture (images/, transforms.json, ...), from ``orbit4d render-asset``

``OrbitClips`` serves a clip in SV3D's order: a random frame of the ring becomes the input view (rotation
augmentation) and goes last; the others follow it round the ring.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch import Tensor

from generate.cameras import Orbit
from multiview.capture import read_capture
from multiview.console import info, track
from multiview.errors import InputError
from multiview.frames import to_8bit
from multiview.outputs import output_lock, write_json
from multiview.paths import inside_folder

ASSET_SUFFIXES = (".glb", ".gltf", ".obj")
DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class DatasetConfig:
    """How orbit clips are rendered from assets."""

    num_frames: int = 8
    """Views per orbit ring (SV3D: 21)."""
    image_size: int = 64
    """Square image side in pixels (SV3D: 576)."""
    clips_per_asset: int = 2
    """Orbits rendered per asset, each at its own elevation and background."""
    elevation_range_deg: tuple[float, float] = (-5.0, 30.0)
    """Elevations are drawn uniformly from this range."""
    radius: float = 2.0
    """Camera distance in units of the asset's largest side."""
    fov_deg: float = 33.8
    """Horizontal field of view in degrees."""
    holdout: str = "assets"
    """What evaluation sees that training does not: "assets" (the last ``holdout_assets`` by name) or "orbits"
    (the last clip of every asset: seen objects from unseen elevations and backgrounds)."""
    holdout_assets: int = 1
    """Assets kept out of training when ``holdout`` is "assets"."""
    samples: int = 16
    """Cycles samples per pixel."""
    seed: int = 0


def find_assets(folder: Path) -> list[Path]:
    """The 3D assets in ``folder`` and its subfolders, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: give a folder of .glb / .gltf / .obj assets")
    assets = sorted(p for p in folder.rglob("*") if p.suffix.lower() in ASSET_SUFFIXES and p.is_file())
    if not assets:
        raise InputError(f"{folder} holds no .glb, .gltf or .obj file: nothing to render orbits of")
    return assets


def build_orbit_dataset(config: DatasetConfig, assets_dir: Path, out_dir: Path, option: str = "--data") -> Path:
    """Render the orbit clips of every asset in ``assets_dir`` into ``out_dir`` (created); return ``out_dir``.
    ``option``: what the user calls ``out_dir`` in messages (another run writing it is refused)."""
    assets = find_assets(assets_dir)
    if config.holdout not in ("assets", "orbits"):
        raise InputError(f"holdout {config.holdout!r}: use assets or orbits")
    if config.holdout == "orbits" and config.clips_per_asset < 2:
        raise InputError("holding out orbits needs at least 2 clips per asset (one to train on)")
    if config.holdout == "assets" and config.holdout_assets >= len(assets) and config.holdout_assets > 0:
        raise InputError(f"{assets_dir} has {len(assets)} assets: holding out {config.holdout_assets} leaves none to "
                         "train on; add assets or hold out fewer")
    out_dir = Path(out_dir)
    with output_lock(out_dir, option):  # one writer per dataset folder (finetune and eval-generator render into it)
        clips = _render_clips(config, assets, out_dir)
        write_json(out_dir / DATASET_FILE, {"config": asdict(config), "clips": clips})
    info(f"{len(clips)} orbit clips of {len(assets)} assets in {out_dir}")
    return out_dir


def _render_clips(config: DatasetConfig, assets: list[Path], out_dir: Path) -> list[dict]:
    """Render every asset's clips into ``out_dir``/clips (a clip already there is kept); return dataset.json's list."""
    from multiview.render_asset import RenderConfig, render_asset

    rng = random.Random(config.seed)
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    clips = []
    jobs = [(asset, k) for asset in assets for k in range(config.clips_per_asset)]
    for index, (asset, k) in enumerate(track(jobs, "rendering orbit clips")):
        elevation = rng.uniform(*config.elevation_range_deg)
        background = "white" if rng.random() < 0.5 else "#" + "".join(f"{rng.randint(150, 255):02x}" for _ in "rgb")
        world = rng.uniform(0.6, 1.2)
        sun = (rng.uniform(0, 360), rng.uniform(10, 80), rng.uniform(1.0, 4.0)) if rng.random() < 0.5 else None
        folder = out_dir / "clips" / f"{asset.stem}_{k}"
        if not (folder / "transforms.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # what an interrupted render left
            folder.mkdir(parents=True)
            render = RenderConfig(num_views=config.num_frames, elevations_deg=(elevation,), radius=config.radius,
                                  fov_deg=config.fov_deg, width=config.image_size, height=config.image_size,
                                  background=background, world_strength=world, sun=sun, samples=config.samples,
                                  seed=config.seed + index)  # fmt: skip
            render_asset(render, asset, folder)
        if config.holdout == "orbits":
            held_out = k == config.clips_per_asset - 1
        else:
            held_out = assets.index(asset) >= len(assets) - config.holdout_assets
        clips.append({"path": folder.relative_to(out_dir).as_posix(), "asset": asset.name,
                      "elevation_deg": elevation, "background": background, "world_light": world, "sun": sun,
                      "split": "test" if held_out else "train"})  # fmt: skip
    return clips


@dataclass(frozen=True)
class Clip:
    """One training example: frames in SV3D order (input view last) and their cameras."""

    frames: Tensor  # [F, 3, S, S] in [0, 1]
    orbit: Orbit

    @property
    def input_view(self) -> Tensor:
        return self.frames[self.orbit.input_index]


class OrbitClips:
    """The clips of one split of a dataset folder; ``clip(i, input_index)`` loads one (images stay on disk)."""

    def __init__(self, root: Path, split: str = "train") -> None:
        self.root = Path(root)
        listing = self.root / DATASET_FILE
        if not listing.is_file():
            raise InputError(f"{self.root} has no {DATASET_FILE}: build the dataset first (`orbit4d finetune` "
                             "renders it from `assets`)")
        self.entries = [c for c in _read_listing(listing) if c["split"] == split]
        if not self.entries:
            fix = "set eval_clips to 0, or render the dataset with held-out clips (holdout)" if split == "test" else \
                "render the dataset again"
            raise InputError(f"{listing} has no {split} clips: {fix}")

    def __len__(self) -> int:
        return len(self.entries)

    def clip(self, index: int, input_index: int | None = None) -> Clip:
        """Clip ``index`` with ring frame ``input_index`` as the input view (None: the ring's first frame)."""
        folder = self.root / self.entries[index]["path"]
        capture = read_capture(folder)
        frames = sorted(capture.frames, key=lambda f: f.image_path.name)
        n = len(frames)
        if n < 2:
            raise InputError(f"{folder} holds {n} readable frame(s), an orbit clip at least 2: render it again")
        start = 0 if input_index is None else input_index % n
        order = [(start + 1 + k) % n for k in range(n)]  # round the ring from the input view's neighbour; input last
        images = [_rgb(frames[i].image_path) for i in order]
        if len({image.shape for image in images}) > 1:
            raise InputError(f"{folder} holds frames of several sizes: an orbit clip's frames share one; render it "
                             "again")
        images = np.stack(images)
        cameras = [frames[i].camera for i in order]
        centers = np.array([c.center for c in cameras])
        azimuths = np.degrees(np.arctan2(centers[:, 1], centers[:, 0]))
        elevations = np.degrees(np.arctan2(centers[:, 2], np.linalg.norm(centers[:, :2], axis=1)))
        orbit = Orbit(cameras, elevations, np.mod(azimuths - azimuths[-1], 360.0))
        return Clip(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, orbit)

    def random_clip(self, generator: torch.Generator) -> Clip:
        index = int(torch.randint(len(self), (1,), generator=generator))
        rotation = int(torch.randint(1 << 16, (1,), generator=generator))
        return self.clip(index, rotation)


def _read_listing(listing: Path) -> list[dict]:
    """The ``clips`` of a dataset.json, each an object with string ``path``, ``asset`` and ``split``; InputError
    naming the file otherwise."""
    try:
        meta = json.loads(listing.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{listing} is not readable JSON ({error}): delete it to render the dataset again") from None
    clips = meta.get("clips") if isinstance(meta, dict) else None
    if not isinstance(clips, list):
        raise InputError(f"{listing} has no list of clips: not an orbit dataset (orbit4d finetune or eval-generator "
                         "--assets writes one); delete it to render the dataset again")
    for number, clip in enumerate(clips):
        if not (isinstance(clip, dict) and all(isinstance(clip.get(key), str) for key in ("path", "asset", "split"))):
            raise InputError(f"{listing}: clip {number} is not an object with path, asset and split strings; "
                             "delete the file to render the dataset again")
        inside_folder(listing.parent, clip["path"], listing, f"clip {number}'s path", hint="delete the file to "
                      "render the dataset again")  # a dataset's clips lie in its folder  # fmt: skip
    return clips


def _rgb(path: Path) -> np.ndarray:
    """The image as RGB uint8; transparent pixels become white (the inputs' background)."""
    try:
        with PIL.Image.open(path) as image:
            image = to_8bit(image).convert("RGBA")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist: delete its clip's folder and render the dataset again") from None
    except (OSError, PIL.Image.DecompressionBombError, ValueError) as error:
        raise InputError(f"{path} is not a readable image ({error}): delete its clip's folder and render the dataset "
                         "again") from None
    canvas = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    return np.asarray(canvas.convert("RGB"))
