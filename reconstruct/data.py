"""A capture folder as training tensors: images (downscaled once at load), masks, cameras, a train/test split.

Masks: a frame's ``mask_path`` (white = object) when the capture lists one, else the image's alpha channel when it has
one, else none. A masked view is composited onto the training background each step (``train.py``), so an object
capture learns a transparent background instead of baking one in.

Depth: a frame's ``depth_file_path`` (synthetic captures carry the renderer's planar camera-z depth) is read only
when a view is evaluated (``View.depth``), sampled at the view's pixel centres.

Split: frames sorted by image name; every ``test_every``-th (indices 0, 8, 16, ... as 3DGS's ``llffhold``) is held out
for evaluation; ``test_every = 0`` or a capture of fewer than 2 frames holds none out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.ExifTags
import PIL.Image
import PIL.ImageOps
import torch
from torch import Tensor

from multiview.camera import Camera
from multiview.capture import Capture, Frame, read_capture
from multiview.console import track, warn
from multiview.errors import InputError
from multiview.frames import to_8bit
from multiview.npy import load_npy


MIN_IMAGE_SIDE = 8  # pixels, after --downscale: smaller images leave nothing to learn from (and no turntable)


@dataclass(frozen=True, eq=False)
class View:
    """One posed training or test image, at training resolution."""

    name: str  # image path relative to the capture
    camera: Camera  # scaled to the loaded image
    image: Tensor  # [H, W, 3] uint8 (converted to float per step: 4x less memory than float32)
    mask: Tensor | None  # [H, W, 1] uint8, 255 = keep
    depth_path: Path | None = None  # ground-truth depth (.npy [H', W'] planar camera z, 0 = no surface), read on demand

    def image_float(self, device: torch.device | str = "cpu") -> Tensor:
        """[H, W, 3] float32 in [0, 1] on ``device``."""
        return self.image.to(device).float() / 255.0

    def mask_float(self, device: torch.device | str = "cpu") -> Tensor | None:
        """[H, W, 1] float32 in [0, 1] on ``device``, or None."""
        return None if self.mask is None else self.mask.to(device).float() / 255.0

    def depth(self, device: torch.device | str = "cpu") -> Tensor | None:
        """[H, W] float32 ground-truth camera-z depth at this view's resolution (0 = no surface), or None.

        Sampled (nearest) at the view's pixel centres, never averaged: a mean across a silhouette would invent depths
        between the object and the empty background.
        """
        if self.depth_path is None:
            return None
        try:
            depth = load_npy(self.depth_path)
        except (OSError, ValueError) as error:
            raise InputError(f"{self.depth_path} is not a readable .npy depth map ({error}): re-render the capture "
                             "or remove depth_file_path from transforms.json") from None
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise InputError(f"{self.depth_path} holds a {depth.dtype} array of shape {depth.shape}, not an [H, W] "
                             "float depth map: re-render the capture or remove depth_file_path from transforms.json")
        height, width = self.camera.height, self.camera.width
        rows = ((np.arange(height) + 0.5) * depth.shape[0] / height).astype(np.int64)
        cols = ((np.arange(width) + 0.5) * depth.shape[1] / width).astype(np.int64)
        sampled = np.nan_to_num(depth[rows[:, None], cols[None, :]].astype(np.float32), nan=0.0, posinf=0.0)
        return torch.from_numpy(np.maximum(sampled, 0.0)).to(device)

    def viewmat(self) -> Tensor:
        """[4, 4] float32 cam_from_world."""
        return torch.as_tensor(self.camera.cam_from_world, dtype=torch.float32)

    def K(self) -> Tensor:
        """[3, 3] float32 intrinsics (OpenCV pixel centres, ``Camera.K``)."""
        return torch.as_tensor(self.camera.K, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class SceneData:
    """A capture ready to train on."""

    capture: Capture
    train: list[View]
    test: list[View]

    @property
    def cameras(self) -> list[Camera]:
        return [view.camera for view in self.train + self.test]

    @property
    def has_masks(self) -> bool:
        return any(view.mask is not None for view in self.train + self.test)


def load_scene(capture_dir: Path, downscale: int = 1, test_every: int = 8, allow_outside: bool = False) -> SceneData:
    """Read the capture at ``capture_dir`` and load its images, resized once by 1 / ``downscale``. ``allow_outside``:
    read files its transforms.json names outside its folder (refused otherwise)."""
    if downscale < 1:
        raise InputError(f"--downscale {downscale}: use an integer of at least 1 (2 halves each image side)")
    capture = read_capture(Path(capture_dir), allow_outside)
    frames = sorted(capture.frames, key=lambda frame: _name(frame, capture.root))
    distorted = [f for f in frames if not f.camera.is_pinhole]
    if distorted:
        raise InputError(f"{distorted[0].image_path}: the capture has distorted cameras; splats train on undistorted "
                         "images: re-import the capture with `orbit4d import` (it undistorts)")
    smallest = min(min(frame.camera.width, frame.camera.height) for frame in frames)
    if round(smallest / downscale) < MIN_IMAGE_SIDE:
        raise InputError(f"--downscale {downscale} leaves the images of {capture.root} (smallest side {smallest} px) "
                         f"under {MIN_IMAGE_SIDE} px: use at most --downscale {max(smallest // MIN_IMAGE_SIDE, 1)}")
    views = [_load_view(frame, capture.root, downscale) for frame in track(frames, "loading images")]
    _check_masks(views, capture.root)
    holdout = test_every > 0 and len(views) >= 2
    test = [v for i, v in enumerate(views) if holdout and i % test_every == 0]
    train = [v for i, v in enumerate(views) if not (holdout and i % test_every == 0)]
    if not train:
        raise InputError(f"{capture.root}: --test-every {test_every} holds out every view, which leaves none to "
                         "train on: hold out fewer (every 8th is usual; 0 holds out none)")
    return SceneData(capture, train, test)


def _check_masks(views: list[View], root: Path) -> None:
    """InputError when every view's mask is empty (black: an inverted convention, or a transparent image); a
    warning when some are (those views teach only the background)."""
    empty = [view.name for view in views if view.mask is not None and not bool(view.mask.any())]
    if empty and len(empty) == len(views):
        raise InputError(f"{root}: every view's mask is empty (no white pixel; alpha masks fully transparent): masks "
                         "are white where the object is: invert them, or remove mask_path from transforms.json")
    if empty:
        warn(f"{root}: {len(empty)} of {len(views)} masks are empty (e.g. {empty[0]}): those views show only the "
             "background")


def _name(frame: Frame, root: Path) -> str:
    try:
        return frame.image_path.relative_to(root).as_posix()
    except ValueError:
        return frame.image_path.as_posix()


def _load_view(frame: Frame, root: Path, downscale: int) -> View:
    camera = frame.camera.scaled(1.0 / downscale) if downscale > 1 else frame.camera
    size = (camera.width, camera.height)
    image = _upright(_open(frame.image_path), frame)
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA", "PA") else None
    rgb = _resized(to_8bit(image).convert("RGB"), size)
    mask = None
    if frame.mask_path is not None:
        mask_image = _open(frame.mask_path)
        if mask_image.size != image.size:
            warn(f"{frame.mask_path} is {mask_image.size[0]}x{mask_image.size[1]}, its image "
                 f"{image.size[0]}x{image.size[1]}: resizing the mask")
        mask = _resized(mask_image.convert("L"), size)
    elif alpha is not None and np.asarray(alpha).min() < 255:
        mask = _resized(alpha, size)
    return View(
        name=_name(frame, root),
        camera=camera,
        image=torch.from_numpy(np.array(rgb, dtype=np.uint8)),
        mask=None if mask is None else torch.from_numpy(np.array(mask, dtype=np.uint8))[..., None],
        depth_path=frame.depth_path,
    )


def _open(path: Path) -> PIL.Image.Image:
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image
    except (OSError, PIL.Image.DecompressionBombError) as error:
        message = f"{path} is not a readable image ({error}): replace it or remove it from the capture"
        raise InputError(message) from None


def _upright(image: PIL.Image.Image, frame: Frame) -> PIL.Image.Image:
    """``image`` as stored when its size is the one transforms.json gives (COLMAP and nerfstudio read the stored
    pixels, ignoring EXIF orientation), else turned as its EXIF orientation says when that gives the size (a photo
    its camera stored on its side); InputError otherwise."""
    expected = (frame.camera.width, frame.camera.height)
    if image.size == expected:
        return image
    rotated = image.getexif().get(PIL.ExifTags.Base.Orientation, 1) != 1
    if rotated:
        upright = PIL.ImageOps.exif_transpose(image)
        if upright.size == expected:
            return upright
    turned = " (also as its EXIF orientation turns it)" if rotated else ""
    raise InputError(f"{frame.image_path} is {image.size[0]}x{image.size[1]}{turned} but transforms.json says "
                     f"{expected[0]}x{expected[1]}: fix w/h in transforms.json or the image")


def _resized(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """``image`` at ``size`` (box filter: the mean of the pixels each output pixel covers)."""
    return image if image.size == size else image.resize(size, PIL.Image.Resampling.BOX)
