"""The object in a photo: its pixels and a mask, found without downloaded weights.

``find_foreground`` takes, in this order: a mask the user gives (``--mask``: white = object), the photo's own alpha
channel when it has transparency, the background colour when the image border is of one colour (a plain
background: what is of that colour and connected to the border; with ``--no-segment`` the photo is then used as it
is, the mask only frames it), or OpenCV's GrabCut seeded from the image border (the border band is background,
pixels of the border's colours probably background, the rest probably object; graph cuts decide). Masks are cleaned
the same way whatever their source: specks and pin holes removed, the object's largest parts kept.

``plain_background_mask`` also segments images whose background is known to be one colour (the generator's white):
the background is what is close to that colour and connected to the image border, so a white object part inside
the silhouette stays the object's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from multiview.errors import InputError
from multiview.frames import to_8bit

FOREGROUND_HINT = ("give an RGBA image whose background is transparent, a mask of the object with --mask FILE "
                   "(white = object), or --no-segment for a photo on a plain background")  # fmt: skip
MIN_OBJECT_SHARE = 0.002  # of the image: less is a speck, not an object
MAX_OBJECT_SHARE = 0.9  # of the image: more means the background was not told apart (or there is none)
GRABCUT_SIDE = 400  # pixels: GrabCut runs at this longest side (0.2-0.5 s), the mask is scaled back up
GRABCUT_ITERATIONS = 5
PLAIN_TOLERANCE = 24  # of 255, per channel: how far a pixel may be from the background colour and still be it
BORDER_LIKE = 20.0  # of 255, RGB distance: pixels this close to a border colour start GrabCut as probable background


@dataclass(frozen=True, eq=False)
class Foreground:
    """A photo and its object."""

    rgb: np.ndarray  # [H, W, 3] uint8, the photo upright
    alpha: np.ndarray  # [H, W] float32 in [0, 1], 1 = object
    method: str  # how the mask was found, in words ("alpha channel", "GrabCut", ...)
    cut_out: bool  # True: the background is to be replaced; False (--no-segment): the photo is used as it is

    @property
    def share(self) -> float:
        """The fraction of the image the object covers."""
        return float((self.alpha > 0.5).mean())


def find_foreground(path: Path, mask_path: Path | None = None, segment: bool = True) -> Foreground:
    """The object in the photo at ``path`` (see the module docstring for the order of sources).

    InputError naming the file for an unreadable, empty or one-colour photo, a mask that does not fit it, and an
    object that cannot be found (``FOREGROUND_HINT`` says what to try).
    """
    path = Path(path)
    rgb, alpha = read_photo(path)
    if mask_path is not None:
        mask = _read_mask(Path(mask_path), rgb.shape[:2])
        return _checked(Foreground(rgb, mask, f"mask {mask_path}", True), mask_path, "the mask")
    if alpha is not None:
        return _checked(Foreground(rgb, alpha, "alpha channel", True), path, "its alpha channel")
    if _one_colour(rgb):
        raise InputError(f"{path} shows a single colour: there is no object in it to turn into 3D; give a photo of "
                         "an object")
    if not segment or plain_border(rgb):
        alpha = soft_edges(rgb, clean_mask(plain_background_mask(rgb)))
        method = "plain background (--no-segment)" if not segment else "plain background"
        return _checked(Foreground(rgb, alpha, method, segment), path, "the background colour of its border")
    return _checked(Foreground(rgb, grabcut_alpha(rgb), "GrabCut from the border", True), path, "segmentation")


def border_pixels(rgb: np.ndarray) -> np.ndarray:
    """[4 (H + W), 3] float32: the colours of the image's outermost rows and columns (corners twice)."""
    return np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)


def plain_border(rgb: np.ndarray, share: float = 0.95, tolerance: float = PLAIN_TOLERANCE) -> bool:
    """Whether ``share`` of the image border lies within ``tolerance`` (of 255, every channel) of its median colour:
    a plain background, which ``plain_background_mask`` separates exactly (GrabCut loses thin parts there)."""
    border = border_pixels(rgb)
    close = np.abs(border - np.median(border, axis=0)).max(axis=-1) <= tolerance
    return bool(close.mean() >= share)


def read_photo(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """([H, W, 3] uint8 RGB, [H, W] float32 alpha or None when the photo has no transparency), upright."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise InputError(f"{path} is empty (0 bytes): give a photo (.png with transparency works best, or .jpg)")
        with PIL.Image.open(path) as opened:
            opened.load()
            image = PIL.ImageOps.exif_transpose(to_8bit(opened))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist: give a photo (.png with transparency works best, or .jpg)") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder: give one photo (.png with transparency works best, or .jpg)") from None
    except (OSError, PIL.Image.DecompressionBombError, ValueError, SyntaxError) as error:
        raise InputError(f"{path} is not a readable image ({error}): give a .png or .jpg photo") from None
    if min(image.size) < 8:
        raise InputError(f"{path} is {image.width}x{image.height} pixels: too small to see an object in; give a "
                         "photo of at least 64 pixels a side")  # fmt: skip
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return np.asarray(image.convert("RGB")), None
    rgba = np.asarray(image.convert("RGBA"))
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    return np.ascontiguousarray(rgba[..., :3]), (alpha if alpha.min() < 1.0 else None)


def grabcut_alpha(rgb: np.ndarray, side: int = GRABCUT_SIDE, iterations: int = GRABCUT_ITERATIONS) -> np.ndarray:
    """[H, W] float32 alpha of the object in ``rgb`` [H, W, 3] uint8 by GrabCut, seeded with a border band of
    background; computed at ``side`` pixels and scaled back up (soft edges)."""
    import cv2

    height, width = rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    small = cv2.resize(rgb, (max(8, round(width * scale)), max(8, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1.0 else rgb  # fmt: skip
    h, w = small.shape[:2]
    band = max(2, round(0.02 * max(h, w)))
    labels = np.where(_like_border(small, band), cv2.GC_PR_BGD, cv2.GC_PR_FGD).astype(np.uint8)
    labels[:band], labels[-band:], labels[:, :band], labels[:, -band:] = (cv2.GC_BGD,) * 4
    cv2.setRNGSeed(0)  # GrabCut's colour models start from k-means: the same photo, the same mask
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), labels, None, background, foreground, iterations,
                cv2.GC_INIT_WITH_MASK)  # fmt: skip
    mask = clean_mask((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))
    soft = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)
    return np.clip(cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def _like_border(rgb: np.ndarray, band: int, distance: float = BORDER_LIKE, samples: int = 512) -> np.ndarray:
    """[H, W] bool: pixels within ``distance`` (RGB, of 255) of a colour of the border band. GrabCut starts from
    these as probable background: seeded with the border alone, its object model holds mostly background colours
    when the object is small, and a plain background stays half object."""
    border = np.concatenate([rgb[:band].reshape(-1, 3), rgb[-band:].reshape(-1, 3), rgb[:, :band].reshape(-1, 3),
                             rgb[:, -band:].reshape(-1, 3)]).astype(np.float32)  # fmt: skip
    picked = border[np.random.default_rng(0).choice(len(border), min(samples, len(border)), replace=False)]
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    nearest = np.full(len(pixels), np.inf, np.float32)
    for start in range(0, len(picked), 64):  # [P, 64] distances at a time: bounded memory
        chunk = picked[start : start + 64]
        nearest = np.minimum(nearest, ((pixels[:, None, :] - chunk[None]) ** 2).sum(-1).min(1))
    like = (nearest <= distance**2).reshape(rgb.shape[:2])
    return like if not like.all() else np.zeros_like(like)  # the object in the border's colours: no hint


def plain_background_mask(rgb: np.ndarray, colour: np.ndarray | None = None,
                          tolerance: float | None = None) -> np.ndarray:  # fmt: skip
    """[H, W] bool, True on the object: pixels of ``rgb`` [H, W, 3] uint8 are background where they lie within
    ``tolerance`` (of 255, every channel) of ``colour`` [3] and are connected to the border through such pixels.

    ``colour`` None: the median of the image border. ``tolerance`` None: from the border's own noise (twice its 95th
    percentile distance from that colour, plus 4, within 6 to ``PLAIN_TOLERANCE``), so that a light object on white
    keeps its pale edges when the background is clean.
    """
    from scipy import ndimage

    border = border_pixels(rgb)
    if colour is None:
        colour = np.median(border, axis=0)
    if tolerance is None:
        noise = np.percentile(np.abs(border - np.asarray(colour, np.float32)).max(axis=-1), 95)
        tolerance = float(np.clip(2.0 * noise + 4.0, 6.0, PLAIN_TOLERANCE))
    near = (np.abs(rgb.astype(np.float32) - np.asarray(colour, np.float32)).max(axis=-1) <= tolerance)
    regions, _ = ndimage.label(near)
    touching = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    background = np.isin(regions, touching[touching > 0])
    return ~background


def soft_edges(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[H, W] float32 alpha: 1 inside ``mask``, 0 outside, and on its rim each pixel's share of object colour: its
    distance from the background's colour (the border's median) over the largest distance among its neighbours in
    the mask (a pixel half covered by the object lies half way from the background to it)."""
    from scipy import ndimage

    colour = np.median(border_pixels(rgb), axis=0)
    distance = np.abs(rgb.astype(np.float32) - colour.astype(np.float32)).max(axis=-1)
    rim = mask & ~ndimage.binary_erosion(mask)
    nearby = ndimage.maximum_filter(np.where(mask, distance, 0.0), size=5)
    alpha = mask.astype(np.float32)
    alpha[rim] = np.clip(distance[rim] / np.maximum(nearby[rim], 1e-3), 0.0, 1.0)
    return alpha


def blurred_matte(rgb: np.ndarray, mask: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """([H, W] float32 alpha, [H, W, 3] uint8 colour) of an object whose edge is blurred into a plain background
    (a generated view: the average of where the silhouette could be) over ``band`` pixels inside ``mask``.

    Each pixel of the band is taken as a mix ``a F + (1 - a) B`` of the background colour B (the border's median)
    and the object's colour F, the colour furthest from B within ``band`` pixels inside the mask: ``a`` is the
    pixel's share of the way from B to F, and its colour becomes F (so that compositing on any background gives what
    the view meant). Where F is itself within ``PLAIN_TOLERANCE`` of B (a pale object on white) the share cannot be
    told and the pixel is kept whole. Deeper pixels have alpha 1, pixels outside ``mask`` 0."""
    from scipy import ndimage

    rgb = rgb.astype(np.float32)
    colour = np.median(border_pixels(rgb), axis=0)
    distance = np.where(mask, np.abs(rgb - colour).max(axis=-1), -1.0)
    h, w = mask.shape
    padded_distance = np.pad(distance, band, constant_values=-1.0)
    padded_rgb = np.pad(rgb, ((band, band), (band, band), (0, 0)))
    best, inside = distance.copy(), rgb.copy()
    for dy in range(-band, band + 1):
        for dx in range(-band, band + 1):
            if dy * dy + dx * dx > band * band:
                continue
            shifted = padded_distance[band + dy : band + dy + h, band + dx : band + dx + w]
            better = shifted > best
            best = np.where(better, shifted, best)
            inside = np.where(better[..., None], padded_rgb[band + dy : band + dy + h, band + dx : band + dx + w],
                              inside)  # fmt: skip
    towards = inside - colour
    reach = (towards**2).sum(axis=-1)
    share = np.clip(((rgb - colour) * towards).sum(axis=-1) / np.maximum(reach, 1e-6), 0.0, 1.0)
    inner = ndimage.binary_erosion(mask, iterations=band, border_value=1)
    rim = mask & ~inner & (best > PLAIN_TOLERANCE)
    alpha = np.where(rim, share, mask.astype(np.float32)).astype(np.float32)
    out = np.where(rim[..., None], inside, rgb)
    return alpha, out.round().clip(0, 255).astype(np.uint8)


def clean_mask(mask: np.ndarray, keep_share: float = 0.05) -> np.ndarray:
    """``mask`` [H, W] bool without specks and pin holes: parts smaller than ``keep_share`` of the largest part are
    dropped, holes smaller than that share of the object are filled."""
    from scipy import ndimage

    regions, count = ndimage.label(mask)
    if count == 0:
        return mask.copy()
    sizes = ndimage.sum(mask, regions, index=np.arange(1, count + 1))
    kept = np.isin(regions, 1 + np.nonzero(sizes >= keep_share * sizes.max())[0])
    holes, hole_count = ndimage.label(~kept)
    if hole_count:
        hole_sizes = ndimage.sum(~kept, holes, index=np.arange(1, hole_count + 1))
        edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = [i + 1 for i, size in enumerate(hole_sizes) if size < keep_share * kept.sum() and i + 1 not in edge]
        kept |= np.isin(holes, small)
    return kept


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """[H, W] float32 in [0, 1] from a mask image (greyscale, or the alpha of an RGBA one) the size of the photo."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise InputError(f"--mask {path} is empty (0 bytes): give a mask image, white on the object")
        with PIL.Image.open(path) as opened:
            opened.load()
            image = PIL.ImageOps.exif_transpose(to_8bit(opened))
    except FileNotFoundError:
        raise InputError(f"--mask {path} does not exist: give a mask image, white on the object") from None
    except (OSError, PIL.Image.DecompressionBombError, ValueError, SyntaxError) as error:
        raise InputError(f"--mask {path} is not a readable image ({error}): give a .png mask, white on the "
                         "object") from None
    if (image.height, image.width) != shape:
        raise InputError(f"--mask {path} is {image.width}x{image.height} but the photo is {shape[1]}x{shape[0]}: "
                         "give a mask of the photo's size")
    grey = image.getchannel("A") if image.mode in ("RGBA", "LA") and np.asarray(image.getchannel("A")).min() < 255 \
        else image.convert("L")  # fmt: skip
    return np.asarray(grey, dtype=np.float32) / 255.0


def _one_colour(rgb: np.ndarray) -> bool:
    return bool(np.ptp(rgb.reshape(-1, 3), axis=0).max() <= 2)


def _checked(found: Foreground, source: Path, how: str) -> Foreground:
    """``found``, or InputError naming ``source`` when its mask covers (almost) none of the image, or, found by
    GrabCut, (almost) all of it (a mask or an alpha channel the user made may fill the frame)."""
    share = found.share
    if share < MIN_OBJECT_SHARE:
        raise InputError(f"{source}: {how} finds no object ({100 * share:.2f}% of the image): {FOREGROUND_HINT}")
    if share > MAX_OBJECT_SHARE and found.method.startswith("GrabCut"):
        raise InputError(f"{source}: {how} finds no background ({100 * share:.0f}% of the image is object): "
                         f"{FOREGROUND_HINT}")  # fmt: skip
    return found
