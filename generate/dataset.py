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
from multiview.camera import Camera
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
    """What evaluation sees that training does not: "assets" (the last ``holdout_assets`` by name), "orbits"
    (the last clip of every asset: seen objects from unseen elevations and backgrounds) or "all" (an evaluation
    set: every clip)."""
    holdout_assets: int = 1
    """Assets kept out of training when ``holdout`` is "assets"."""
    samples: int = 16
    """Cycles samples per pixel."""
    background: str = "mixed"
    """"mixed": white half the time (as the inputs the model will see), else a random light colour; or one
    background for every clip ("white", "#rrggbb")."""
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


def build_orbit_dataset(config: DatasetConfig, assets_dir: Path, out_dir: Path, workers: int = 1,
                        option: str = "--data") -> Path:  # fmt: skip
    """Render the orbit clips of every asset in ``assets_dir`` into ``out_dir`` (created); return ``out_dir``.

    Resumable: clips already rendered (their ``transforms.json`` written) are kept, an interrupted one is rendered
    again, so a build stopped at any point continues where it was. ``workers`` Blender processes render in parallel.
    ``recipe.json`` records the settings first: a folder begun with other settings or assets is refused, as is one
    another run is writing. ``option``: what the user calls ``out_dir`` in messages.
    """
    assets = find_assets(assets_dir)
    _check_holdout(config, assets, assets_dir)
    out_dir = Path(out_dir)
    with output_lock(out_dir, option):  # one writer per dataset folder (finetune and eval-generator render into it)
        _claim_folder(out_dir, config, assets)
        jobs = _clip_jobs(config, assets, out_dir)
        todo = [job for job in jobs if not (out_dir / job["path"] / "transforms.json").is_file()]
        if todo:
            info(f"rendering {len(todo)} of {len(jobs)} orbit clips ({len(jobs) - len(todo)} already there) with "
                 f"{workers} Blender process{'es' if workers > 1 else ''}")
        _render_clips(todo, config, out_dir, workers)
        clips = [{key: job[key] for key in ("path", "asset", "elevation_deg", "background", "world_light", "sun",
                                            "split")} for job in jobs]  # fmt: skip
        write_json(out_dir / DATASET_FILE, {"config": asdict(config), "clips": clips})
    info(f"{len(clips)} orbit clips of {len(assets)} assets in {out_dir}")
    return out_dir


RECIPE_FILE = "recipe.json"


def _check_holdout(config: DatasetConfig, assets: list[Path], assets_dir: Path) -> None:
    if config.holdout not in ("assets", "orbits", "all"):
        raise InputError(f"holdout {config.holdout!r}: use assets, orbits or all")
    if config.holdout == "orbits" and config.clips_per_asset < 2:
        raise InputError("holding out orbits needs at least 2 clips per asset (one to train on)")
    if config.holdout == "assets" and config.holdout_assets >= len(assets) and config.holdout_assets > 0:
        raise InputError(f"{assets_dir} has {len(assets)} assets: holding out {config.holdout_assets} leaves none to "
                         "train on; add assets or hold out fewer")


def _claim_folder(out_dir: Path, config: DatasetConfig, assets: list[Path]) -> None:
    """Record the recipe in ``out_dir``, or check that the one there is this one (InputError otherwise)."""
    recipe = {"config": asdict(config), "assets": [a.name for a in assets]}
    path = out_dir / RECIPE_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            previous = None
        if previous != json.loads(json.dumps(recipe)):
            raise InputError(f"{out_dir} holds orbit clips of another recipe ({path}: other settings or assets): "
                             "choose another data folder, or delete it to render again")
        return
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} is not empty and is no orbit dataset (no {RECIPE_FILE}): choose an empty or new "
                         "data folder")
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    write_json(path, recipe)


def _clip_jobs(config: DatasetConfig, assets: list[Path], out_dir: Path) -> list[dict]:
    """Every clip's asset, folder, elevation, background, light and split, drawn in one seeded sequence."""
    rng = random.Random(config.seed)
    jobs = []
    for index, (asset, k) in enumerate((asset, k) for asset in assets for k in range(config.clips_per_asset)):
        elevation = rng.uniform(*config.elevation_range_deg)
        background = "white" if rng.random() < 0.5 else "#" + "".join(f"{rng.randint(150, 255):02x}" for _ in "rgb")
        if config.background != "mixed":
            background = config.background
        world = rng.uniform(0.6, 1.2)
        sun = (rng.uniform(0, 360), rng.uniform(10, 80), rng.uniform(1.0, 4.0)) if rng.random() < 0.5 else None
        if config.holdout == "orbits":
            held_out = k == config.clips_per_asset - 1
        elif config.holdout == "all":
            held_out = True
        else:
            held_out = assets.index(asset) >= len(assets) - config.holdout_assets
        jobs.append({"path": f"clips/{asset.stem}_{k}", "asset": asset.name, "asset_path": str(asset),
                     "elevation_deg": elevation, "background": background, "world_light": world, "sun": sun,
                     "split": "test" if held_out else "train", "seed": config.seed + index})  # fmt: skip
    return jobs


def _render_clips(jobs: list[dict], config: DatasetConfig, out_dir: Path, workers: int) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for job in track(jobs, "rendering orbit clips"):
            _render_clip(job, config, str(out_dir))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # each worker imports Blender once and renders many clips
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        done = pool.map(_render_clip, jobs, [config] * len(jobs), [str(out_dir)] * len(jobs), chunksize=1)
        for _ in track(done, "rendering orbit clips", total=len(jobs)):
            pass


def _render_clip(job: dict, config: DatasetConfig, out_dir: str) -> None:
    """One clip into its folder; what an interrupted render left there is removed first."""
    from multiview.console import quiet
    from multiview.render_asset import RenderConfig, render_asset

    folder = Path(out_dir) / job["path"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    render = RenderConfig(num_views=config.num_frames, elevations_deg=(job["elevation_deg"],), radius=config.radius,
                          fov_deg=config.fov_deg, width=config.image_size, height=config.image_size,
                          background=job["background"], world_strength=job["world_light"],
                          sun=None if job["sun"] is None else tuple(job["sun"]), samples=config.samples,
                          seed=job["seed"])  # fmt: skip
    with quiet():
        render_asset(render, Path(job["asset_path"]), folder)


@dataclass(frozen=True)
class Clip:
    """One training example: frames in SV3D order (input view last) and their cameras."""

    frames: Tensor  # [F, 3, S, S] in [0, 1]
    orbit: Orbit
    masks: Tensor | None = None  # [F, S, S] bool, the renderer's exact foreground, when the clip has masks

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
        orbit = orbit_of([frames[i].camera for i in order])
        masks = None
        if all(frames[i].mask_path is not None for i in order):
            masks = torch.from_numpy(np.stack([_mask(frames[i].mask_path) for i in order]))
        return Clip(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, orbit, masks)

    def ring(self, index: int) -> tuple[Tensor, list[Camera], Tensor | None]:
        """Clip ``index``'s frames [F, 3, S, S] in [0, 1], cameras and masks [F, S, S] (None without) in ring order
        (by name), as rendered."""
        clip = self.clip(index, -1)  # input view last: the others from frame 0 on, then frame F-1
        order = [clip.orbit.num_frames - 1, *range(clip.orbit.num_frames - 1)]
        masks = None if clip.masks is None else clip.masks[order]
        return clip.frames[order], [clip.orbit.cameras[i] for i in order], masks

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


def _mask(path: Path) -> np.ndarray:
    """[H, W] bool: where a mask image is bright."""
    try:
        with PIL.Image.open(path) as image:
            return np.asarray(image.convert("L")) > 127
    except (OSError, PIL.Image.DecompressionBombError, ValueError) as error:
        raise InputError(f"{path} is not a readable mask ({error}): delete its clip's folder and render the dataset "
                         "again") from None


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


def orbit_of(cameras: list[Camera]) -> Orbit:
    """The Orbit of cameras in SV3D order (input view last): elevations and azimuths read off their centres."""
    centers = np.array([c.center for c in cameras])
    azimuths = np.degrees(np.arctan2(centers[:, 1], centers[:, 0]))
    elevations = np.degrees(np.arctan2(centers[:, 2], np.linalg.norm(centers[:, :2], axis=1)))
    return Orbit(cameras, elevations, np.mod(azimuths - azimuths[-1], 360.0))


@dataclass(frozen=True)
class EncodedClip:
    """One training example, encoded: latents in SV3D order (input view last), the input view's embedding, cameras."""

    latents: Tensor  # [F, C, h, w], scaled by the VAE's scaling factor
    embedding: Tensor  # [D]
    orbit: Orbit
    masks: Tensor | None = None  # [F, S, S] bool, the renderer's foreground, when the dataset has masks


class EncodedClips:
    """Every frame of a split encoded once by a (frozen) VAE and image tower, so that a training step decodes no
    image and runs no encoder: data loading keeps up on any device. Any frame can be the input view (rotation
    augmentation, as ``OrbitClips.random_clip``)."""

    def __init__(self, latents: Tensor, embeddings: Tensor, cam_from_world: Tensor, intrinsics: Tensor,
                 size: tuple[int, int], masks: Tensor | None = None) -> None:  # fmt: skip
        self.latents = latents  # [N, F, C, h, w] in ring order
        self.embeddings = embeddings  # [N, F, D]
        self.cam_from_world = cam_from_world  # [N, F, 4, 4]
        self.intrinsics = intrinsics  # [N, F, 3, 3]
        self.size = size  # (width, height) of the frames
        self.masks = masks  # [N, F, S, S] bool, or None where the clips have no masks

    def __len__(self) -> int:
        return self.latents.shape[0]

    def clip(self, index: int, input_index: int) -> EncodedClip:
        n = self.latents.shape[1]
        order = [(input_index + 1 + k) % n for k in range(n)]
        cameras = [Camera(self.intrinsics[index, i].double().numpy(), self.cam_from_world[index, i].double().numpy(),
                          *self.size) for i in order]  # fmt: skip
        masks = None if self.masks is None else self.masks[index, order]
        return EncodedClip(self.latents[index, order].float(), self.embeddings[index, input_index].float(),
                           orbit_of(cameras), masks)  # fmt: skip

    def random_clip(self, generator: torch.Generator) -> EncodedClip:
        index = int(torch.randint(len(self), (1,), generator=generator))
        rotation = int(torch.randint(1 << 16, (1,), generator=generator))
        return self.clip(index, rotation % self.latents.shape[1])

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {"latents": self.latents, "embeddings": self.embeddings, "cam_from_world": self.cam_from_world,
                   "intrinsics": self.intrinsics, "size": torch.tensor(self.size)}  # fmt: skip
        if self.masks is not None:
            tensors["masks"] = self.masks.to(torch.uint8)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> EncodedClips:
        from multiview.weights import read_safetensors

        t = read_safetensors(path)
        masks = t["masks"].bool() if "masks" in t else None
        return cls(t["latents"], t["embeddings"], t["cam_from_world"], t["intrinsics"], tuple(t["size"].tolist()),
                   masks)  # fmt: skip


@torch.no_grad()
def encode_clips(pipeline, clips: OrbitClips, batch: int = 16) -> EncodedClips:
    """Encode every clip of ``clips`` with ``pipeline``'s VAE (posterior mode, scaled) and image tower, stored in
    float16 (half the memory and file; the model trains in float32)."""
    latents, embeddings, poses, intrinsics, masks = [], [], [], [], []
    device, dtype = pipeline.device, pipeline.dtype
    scaling = pipeline.vae.config.scaling_factor
    size = None
    for index in track(range(len(clips)), "encoding the clips"):
        frames, cameras, clip_masks = clips.ring(index)
        masks.append(clip_masks)
        size = size or (cameras[0].width, cameras[0].height)
        if (cameras[0].width, cameras[0].height) != size:
            raise InputError(f"{clips.root / clips.entries[index]['path']} has frames of another size than the "
                             "dataset's first clip: render the dataset again")
        x = frames.to(device, dtype)
        z = torch.cat([pipeline.vae.encode(x[i:i + batch] * 2 - 1).latent_dist.mode() for i in
                       range(0, len(x), batch)])  # fmt: skip
        latents.append((z * scaling).half().cpu())
        embeddings.append(pipeline.image_encoder(x).half().cpu())
        poses.append(torch.from_numpy(np.stack([c.cam_from_world for c in cameras])).float())
        intrinsics.append(torch.from_numpy(np.stack([c.K for c in cameras])).float())
    if len({z.shape for z in latents}) > 1:
        raise InputError(f"{clips.root} holds clips with different numbers of frames: render the dataset again")
    all_masks = None if any(m is None for m in masks) else torch.stack(masks)
    return EncodedClips(torch.stack(latents), torch.stack(embeddings), torch.stack(poses), torch.stack(intrinsics),
                        size, all_masks)  # fmt: skip
