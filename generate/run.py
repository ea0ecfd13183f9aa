"""The generate stage: one photo in, an orbit capture out (``orbit4d generate``).

Output folder (the capture layout of DESIGN.md, read by ``orbit4d train`` as it is)::

    images/frame_000.png ...   the orbit, SV3D's order: the input view is the last frame
    masks/frame_000.png ...    each view's foreground (white), from a model with a foreground head
    input.png                  the input as the model saw it (object centred on white, model size)
    transforms.json            the exact camera of every frame (the requested orbit)
    report.json                model, sampler, steps, seed, guidance, elevation, azimuths, seconds

The input view's frame holds the input itself rather than the model's copy of it: its camera is the input camera
by construction, and the photo is sharper than any reproduction.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from generate.cameras import Orbit
from generate.pipeline import OrbitDefaults, OrbitPipeline
from multiview.capture import Frame, write_transforms
from multiview.console import console
from multiview.errors import InputError
from multiview.frames import to_8bit
from multiview.outputs import output_lock, staged_dir, writable_out_dir, write_json


MAX_GUIDANCE = 100.0  # classifier-free guidance scales beyond this only amplify noise (SV3D: 2.5; images: 3-15)


@dataclass(frozen=True)
class GenerateConfig:
    """Everything ``orbit4d generate`` can be told; None takes the model's own default."""

    weights: Path | None = None
    """A model folder (model_index.json, unet/, vae/, image_encoder/; safetensors), or a published SV3D
    single-file .safetensors checkpoint (converted in memory; ``generate.convert``)."""
    num_frames: int | None = None
    """Frames of the orbit (the model's training count when None)."""
    elevation_deg: float | None = None
    """Camera elevation in degrees (the model's default when None)."""
    steps: int | None = None
    """Sampling steps (the model's own when None: model_index.json's orbit.sample_steps)."""
    sampler: str = "euler"
    """euler (EDM Euler, SV3D's sigmas) or ddim."""
    min_guidance: float | None = None
    """Classifier-free guidance at the input view (the model's own when None)."""
    max_guidance: float | None = None
    """Classifier-free guidance opposite the input view, linear in between (the model's own when None; SV3D: 2.5)."""
    cond_aug: float = 1e-5
    """Noise added to the input view before encoding (SV3D: 1e-5)."""
    object_ratio: float = 0.85
    """Share of the image side the object's larger side fills (RGBA inputs)."""
    seed: int = 0
    device: str = "auto"
    """auto, cpu or cuda."""
    half: bool = False
    """fp16 on CUDA (bf16 when the GPU supports it); fp32 on CPU always."""
    mirror: bool | None = None
    """Average each view with the model's view of the image mirrored left-right (``OrbitDefaults.mirror_average``;
    the model's own when None)."""

    def validate(self) -> None:
        """InputError naming the first setting (by its command-line option) that sampling cannot use."""
        if self.num_frames is not None and self.num_frames < 2:
            raise InputError(f"--frames {self.num_frames}: an orbit needs at least 2 frames (leave --frames out for "
                             "the model's own count)")
        if self.elevation_deg is not None and not -90 <= self.elevation_deg <= 90:  # NaN fails too
            raise InputError(f"--elevation {self.elevation_deg}: use degrees from -90 to 90")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"sampling steps {self.steps} (--steps of generate, --sample-steps of image-to-3d): "
                             "use at least 1")
        if self.sampler not in ("euler", "ddim"):
            raise InputError(f"--sampler {self.sampler}: use euler or ddim")
        for name, value in (("MIN", self.min_guidance), ("MAX", self.max_guidance)):
            if value is not None and not 0 <= value <= MAX_GUIDANCE:  # NaN fails too
                raise InputError(f"--guidance {self.min_guidance:g} {self.max_guidance:g}: {name} {value:g} must be a "
                                 f"number from 0 to {MAX_GUIDANCE:g} (1: no guidance; SV3D uses 1 2.5)")
        if not (math.isfinite(self.cond_aug) and self.cond_aug >= 0):
            raise InputError(f"cond_aug {self.cond_aug}: use a finite noise level of at least 0 (SV3D: 1e-5)")
        if not 0 < self.object_ratio <= 1:  # NaN fails too
            raise InputError(f"object_ratio {self.object_ratio}: use a share of the image side in (0, 1]")

    def for_model(self, defaults: OrbitDefaults) -> GenerateConfig:
        """This config with the settings left None taken from the model's ``defaults``."""
        return replace(self, steps=defaults.sample_steps if self.steps is None else self.steps,
                       min_guidance=defaults.min_guidance if self.min_guidance is None else self.min_guidance,
                       max_guidance=defaults.max_guidance if self.max_guidance is None else self.max_guidance,
                       mirror=defaults.mirror_average if self.mirror is None else self.mirror)  # fmt: skip


def run(config: GenerateConfig, image_path: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Generate the orbit of the object in ``image_path`` into the capture folder ``out_dir``; return it."""
    config.validate()
    config = replace(config, weights=weights_or_embedded(config.weights))
    writable_out_dir(out_dir, overwrite, inputs=[image_path, config.weights])  # before minutes of sampling
    _check_image(image_path)  # before loading the model
    with output_lock(out_dir):  # held from before sampling: a second run on out_dir is refused at once
        return _run_locked(config, image_path, out_dir, overwrite)


def _run_locked(config: GenerateConfig, image_path: Path, out_dir: Path, overwrite: bool) -> Path:
    tic = time.perf_counter()
    weights = Path(config.weights)
    pipeline = open_pipeline(config, weights)
    config = config.for_model(pipeline.defaults)
    image = prepare_image(image_path, pipeline.defaults.image_size, config.object_ratio)
    frames, foreground, orbit = sample_orbit(pipeline, config, image, weights)
    with staged_dir(out_dir, overwrite, inputs=[image_path, weights]) as stage:
        write_orbit(stage, image, frames, orbit, foreground, {
            "source_format": "generate", "source": str(Path(image_path).absolute()),
            "weights": str(weights.absolute()), "device": str(pipeline.device),
            "dtype": str(pipeline.dtype).removeprefix("torch."), "seconds": round(time.perf_counter() - tic, 3),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        })  # fmt: skip
    _print_summary(out_dir, orbit, config, str(pipeline.device), time.perf_counter() - tic, foreground is not None)
    return Path(out_dir)


def weights_or_embedded(weights: Path | None) -> Path:
    """``weights``, or the embedded model (``generate.EMBEDDED_MODEL``) when None; InputError when that is missing
    from this installation."""
    from generate import EMBEDDED_MODEL

    if weights is not None:
        return Path(weights)
    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        raise InputError(f"no --weights given and the embedded model is missing ({EMBEDDED_MODEL}): pass a model "
                         "folder (`orbit4d finetune` trains one) or an SV3D checkpoint with --weights")
    return EMBEDDED_MODEL


def open_pipeline(config: GenerateConfig, weights: Path) -> OrbitPipeline:
    """The model at ``weights`` on ``config``'s device, in its dtype."""
    device = _device(config.device)
    return load_pipeline(Path(weights), _dtype(device, config.half)).to(device)


def sample_orbit(pipeline: OrbitPipeline, config: GenerateConfig, image: np.ndarray,
                 weights: Path) -> tuple[torch.Tensor, torch.Tensor | None, Orbit]:  # fmt: skip
    """([F, 3, S, S] frames in [0, 1], [F, S, S] the foreground probability of a model with a foreground head or
    None, their orbit) around the object in ``image`` [S, S, 3] uint8 (white background, the model's size), with a
    progress bar; InputError for a request the model cannot serve, out of memory, or non-finite frames (``weights``
    names the model in the message)."""
    config = config.for_model(pipeline.defaults)
    size = pipeline.defaults.image_size
    orbit = pipeline.defaults.orbit(config.num_frames, config.elevation_deg)
    try:
        pipeline.check_request(torch.zeros(3, size, size), orbit)
    except ValueError as error:
        raise InputError(f"{weights}: {error}") from None
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("sampling", total=config.steps)
        try:
            frames, foreground = pipeline(
                torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, orbit, num_steps=config.steps,
                sampler=config.sampler, min_guidance=config.min_guidance, max_guidance=config.max_guidance,
                cond_aug=config.cond_aug, seed=config.seed, mirror=config.mirror, return_foreground=True,
                on_step=lambda i, n: bar.update(task, completed=i, total=n))  # fmt: skip
        except (MemoryError, RuntimeError) as error:
            if not isinstance(error, MemoryError) and "out of memory" not in str(error).lower():
                raise
            raise InputError(f"out of memory sampling {orbit.num_frames} frames at {size} px with {weights}: "
                             "pass fewer --frames" + ("" if config.half else ", or --half on a GPU")) from None
    if not torch.isfinite(frames).all():
        raise InputError(f"{weights}: the model produced NaN or Inf frames; try without --half or other weights")
    return frames, foreground, orbit


def write_orbit(stage: Path, image: np.ndarray, frames: torch.Tensor, orbit: Orbit,
                foreground: torch.Tensor | None, report: dict) -> list[Frame]:  # fmt: skip
    """Write the capture (images/, input.png, transforms.json, report.json with ``report`` and the orbit) into the
    empty folder ``stage``; return its frames. The input view's frame holds ``image`` itself. With ``foreground``
    (the model's probabilities [F, S, S]), masks/ too: each view's ``foreground_masks``, the input view's the image's
    own (its pixels unlike the white background), named by transforms.json's mask_path."""
    from generate.pipeline import foreground_masks
    from multiview.foreground import clean_mask, plain_background_mask

    (stage / "images").mkdir()
    PIL.Image.fromarray(image).save(stage / "input.png")
    masks = None
    if foreground is not None:
        (stage / "masks").mkdir()
        masks = foreground_masks(foreground).numpy()
        masks[orbit.input_index] = clean_mask(plain_background_mask(image))
    written = []
    for index, (pixels, camera) in enumerate(zip(frames, orbit.cameras)):
        path = stage / "images" / f"frame_{index:03d}.png"
        PIL.Image.fromarray(image if index == orbit.input_index else _to_uint8(pixels)).save(path)
        mask_path = None
        if masks is not None:
            mask_path = stage / "masks" / path.name
            PIL.Image.fromarray(masks[index].astype(np.uint8) * 255).save(mask_path)
        written.append(Frame(path, camera, mask_path=mask_path))
    write_transforms(stage / "transforms.json", written, stage)
    write_json(stage / "report.json", {
        **report, "frames": orbit.num_frames, "input_frame": f"images/frame_{orbit.input_index:03d}.png",
        "elevations_deg": orbit.elevations_deg.tolist(), "azimuths_deg": orbit.azimuths_deg.tolist(),
    })  # fmt: skip
    return written


def _print_summary(out_dir: Path, orbit, config: GenerateConfig, device: str, seconds: float, masks: bool) -> None:
    from rich.table import Table

    table = Table(title=f"generate → {out_dir}", show_header=False, title_justify="left")
    table.add_row("views", f"{orbit.num_frames} at elevation {orbit.elevations_deg[0]:g}°, input view last")
    table.add_row("sampling", f"{config.sampler}, {config.steps} steps, guidance {config.min_guidance:g} → "
                  f"{config.max_guidance:g}, seed {config.seed}" + (", mirror averaged" if config.mirror else ""))
    table.add_row("time", f"{seconds:.1f} s on {device}")
    table.add_row("outputs", f"images/, {'masks/, ' if masks else ''}transforms.json, input.png, report.json "
                  "(orbit4d train reads it)")
    console.print(table)


def load_pipeline(weights: Path, dtype: torch.dtype) -> OrbitPipeline:
    """A model folder, or a published SV3D single-file checkpoint (.safetensors, converted in memory)."""
    if weights.is_file() and weights.suffix == ".safetensors":
        from generate.convert import load_sv3d

        return load_sv3d(weights, dtype=dtype)
    return OrbitPipeline.from_pretrained(weights, dtype)


def _check_image(path: Path) -> None:
    """InputError when ``path`` is missing or does not decode (what ``prepare_image`` refuses, said before the model
    loads)."""
    prepare_image(path, 8)


def prepare_image(path: Path, size: int, object_ratio: float = 0.85) -> np.ndarray:
    """[size, size, 3] uint8: an RGBA image's object centred on white, filling ``object_ratio`` of the side;
    an RGB image centre-cropped to a square. SV3D's published preprocessing, without background removal."""
    path = Path(path)
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            image = to_8bit(opened)  # PIL's convert clips 16-bit greyscale at 255: a white picture
            image = image.convert("RGBA") if "A" in image.getbands() or image.mode == "P" else image.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist: give an image file (.png with transparency works best)") from None
    except (OSError, PIL.Image.DecompressionBombError, ValueError) as error:
        raise InputError(f"{path} is not a readable image ({error}): give a .png or .jpg") from None
    if image.mode == "RGBA":
        from generate.framing import frame_object

        rgba = np.asarray(image)
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        if not (alpha > 0.5).any():
            raise InputError(f"{path} is fully transparent: nothing to generate an orbit of")
        return frame_object(np.ascontiguousarray(rgba[..., :3]), alpha, size, object_ratio)[0]
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return np.array(image.resize((size, size), PIL.Image.Resampling.LANCZOS))


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return (pixels.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch: use --device cpu (or auto)")
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {name}: use auto, cpu or cuda")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def _dtype(device: torch.device, half: bool) -> torch.dtype:
    if not half or device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

