"""``OrbitPipeline``: one image in, an orbit clip with known cameras out (SV3D's sampling, in diffusers' manner).

The loop in ``__call__`` reads top to bottom: embed the input view (image embedding for cross attention, its latent
with a little noise "cond_aug" for concatenation, its lifted views when the UNet takes them), draw noise, step the
scheduler with classifier-free guidance
whose scale grows with the distance from the input view, decode the latents a few frames at a time.

Model folder (``save_pretrained`` / ``from_pretrained``), diffusers' layout with safetensors only::

    model_index.json       the pipeline: orbit defaults (frames, size, field of view, radius), VAE class
    unet/                  OrbitUNet: config.json + diffusion_pytorch_model.safetensors
    vae/                   AutoencoderKL, AutoencoderKLTemporalDecoder or PatchAutoencoder (pixels folded, no weights)
    image_encoder/         CLIPVisionTower
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from torch import Tensor

from generate.cameras import Orbit, plucker_rays, sv3d_orbit, triangular_guidance
from generate.lift import lift_views
from generate.models.image_encoder import CLIPVisionTower
from generate.models.patches import PatchAutoencoder
from generate.models.unet import OrbitUNet
from generate.schedulers import DDIMScheduler, Denoiser, EulerEDMScheduler
from generate.weights import WeightsError, load_model, refuse_pickle, save_model
from multiview.settings import dataclass_from_json

INDEX_NAME = "model_index.json"
VAE_CLASSES = {cls.__name__: cls for cls in (AutoencoderKL, AutoencoderKLTemporalDecoder, PatchAutoencoder)}


@dataclass(frozen=True)
class OrbitDefaults:
    """How the model was trained to see orbits; ``orbit4d generate`` uses these unless told otherwise."""

    num_frames: int = 21
    image_size: int = 576
    fov_deg: float = 33.8
    radius: float = 2.0
    elevation_deg: float = 10.0
    sample_steps: int = 25
    """Sampling steps when not told (SV3D: 25 to 50; a model trained for its posterior mean, a few)."""
    min_guidance: float = 1.0
    """Classifier-free guidance at the input view when not told (SV3D: 1)."""
    max_guidance: float = 2.5
    """Classifier-free guidance opposite the input view when not told (SV3D: 2.5; 1: none)."""
    edge_blur_px: int = 0
    """How many pixels the views blur an object's silhouette into the background (SV3D: 0, its samples are sharp; a
    model sampled for its posterior mean, a few): image-to-3d mattes that band (``blurred_matte``)."""
    mirror_average: bool = False
    """Average each view with the model's view of the photo mirrored left-right, mirrored back (``mirror_partners``):
    two guesses of each unseen side, at twice the sampling time. A model sampled for its posterior mean gains by it
    (its guesses differ where it is unsure); SV3D's sharp samples would blur."""

    def validate(self, where: str) -> None:
        """WeightsError naming ``where`` for values no orbit can have."""
        if self.num_frames < 2 or self.image_size < 8:
            raise WeightsError(f"{where}: num_frames {self.num_frames} and image_size {self.image_size} must be at "
                               "least 2 and 8")
        if self.sample_steps < 1 or not (0 <= self.min_guidance <= 100 and 0 <= self.max_guidance <= 100):
            raise WeightsError(f"{where}: sample_steps {self.sample_steps} must be at least 1 and min_guidance "
                               f"{self.min_guidance} and max_guidance {self.max_guidance} lie in [0, 100]")
        if not 0 <= self.edge_blur_px < self.image_size // 4:
            raise WeightsError(f"{where}: edge_blur_px {self.edge_blur_px} must lie in [0, {self.image_size // 4})")
        if not (0 < self.fov_deg < 180 and self.radius > 0 and -90 <= self.elevation_deg <= 90):
            raise WeightsError(f"{where}: fov_deg {self.fov_deg} must lie in (0, 180), radius {self.radius} be "
                               f"positive and elevation_deg {self.elevation_deg} in [-90, 90]")

    def orbit(self, num_frames: int | None = None, elevation_deg: float | None = None) -> Orbit:
        return sv3d_orbit(self.num_frames if num_frames is None else num_frames,
                          self.elevation_deg if elevation_deg is None else elevation_deg,
                          self.radius, self.fov_deg, self.image_size)  # fmt: skip


def vae_scale(vae) -> int:
    """How many pixels a latent stands for along each side."""
    if isinstance(vae, PatchAutoencoder):
        return vae.config.patch_size
    return 2 ** (len(vae.config.block_out_channels) - 1)


def frame_conditions(unet: OrbitUNet, orbit: Orbit, cond_aug: float) -> Tensor:
    """[F, K] per-frame values for ``unet``: SV3D_p's (cond_aug, polar, azimuth) for three slots, SV3D_u's cond_aug
    alone for one. (A UNet converted from SVD has three slots meant for fps, motion and cond_aug: fine-tuning
    teaches it the camera meaning, as SV3D did.)"""
    cond = torch.full((orbit.num_frames,), float(cond_aug))
    slots = len(unet.config.condition_embed_dims)
    if slots == 1:
        return cond[:, None]
    if slots == 3:
        return torch.stack([cond, orbit.polar_rad(), orbit.relative_azimuth_rad()], dim=-1)
    raise ValueError(f"this UNet takes {slots} conditioning values per frame; orbit4d knows 1 (SV3D_u) and 3 (SV3D_p)")


def mirror_partners(orbit: Orbit) -> list[int] | None:
    """For each frame of ``orbit`` the frame that shows its mirror image (the camera at the same elevation and the
    opposite azimuth relative to the input view: the input view mirrored left-right is the object mirrored through
    the vertical plane of that camera); None when some frame has no partner."""
    relative = np.mod(orbit.azimuths_deg - orbit.azimuths_deg[orbit.input_index], 360.0)
    partners = []
    for k in range(orbit.num_frames):
        gap = np.abs(np.mod(relative + relative[k] + 180.0, 360.0) - 180.0)  # |a_j - (-a_k)| around the circle
        match = np.flatnonzero((gap < 1e-6) & (np.abs(orbit.elevations_deg - orbit.elevations_deg[k]) < 1e-6))
        if len(match) == 0:
            return None
        partners.append(int(match[0]))
    return partners


def foreground_masks(probability: Tensor) -> Tensor:
    """[F, H, W] bool: each view's foreground read from the head's probability [F, H, W] as the mask of the highest
    probabilities that maximises the expected intersection over union (Nowozin, "Optimal decisions from
    probabilistic models: the intersection-over-union case", CVPR 2014: E[I] / E[U] over the masks of the k most
    likely pixels). A pixel is worth keeping when its probability exceeds IoU / (1 + IoU) of the best mask: about
    0.41, not 0.5, at the IoU of 0.7 that unseen sides reach, so an unsure band is kept rather than cut."""
    flat = probability.flatten(1).float()
    ordered, order = flat.sort(dim=1, descending=True)
    intersection = ordered.cumsum(dim=1)  # expected pixels of the object among the k most likely
    count = torch.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
    union = count + flat.sum(dim=1, keepdim=True) - intersection
    keep = (intersection / union).argmax(dim=1) + 1  # [F]
    chosen = torch.arange(flat.shape[1])[None] < keep[:, None]
    masks = torch.zeros_like(chosen).scatter(1, order, chosen)
    return masks.reshape(probability.shape)


def make_scheduler(name: str) -> EulerEDMScheduler | DDIMScheduler:
    """euler: EDM Euler with SV3D's sigmas (700 to 0.002, rho 7); ddim: deterministic DDIM."""
    if name == "euler":
        return EulerEDMScheduler(sigma_min=0.002, sigma_max=700.0, rho=7.0)
    if name == "ddim":
        return DDIMScheduler()
    raise ValueError(f"unknown sampler {name!r}: use euler or ddim")


class OrbitPipeline:
    """The generator's parts and its sampling loop; see the module docstring."""

    def __init__(self, unet: OrbitUNet, vae: AutoencoderKL | AutoencoderKLTemporalDecoder,
                 image_encoder: CLIPVisionTower, defaults: OrbitDefaults = OrbitDefaults()) -> None:  # fmt: skip
        self.unet, self.vae, self.image_encoder, self.defaults = unet, vae, image_encoder, defaults
        self.denoiser = Denoiser()
        self.vae_scale = vae_scale(vae)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> OrbitPipeline:
        for module in (self.unet, self.vae, self.image_encoder):
            # diffusers' ModelMixin.to warns about "modules that should be kept in float32" whenever a dtype is passed
            # (even None); these models keep none, so the plain nn.Module.to does the same without the noise
            torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    # --- the loop -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,
        orbit: Orbit,
        num_steps: int | None = None,
        sampler: str = "euler",
        min_guidance: float | None = None,
        max_guidance: float | None = None,
        cond_aug: float = 1e-5,
        seed: int = 0,
        decode_chunk: int = 7,
        on_step: Callable[[int, int], None] | None = None,
        return_foreground: bool = False,
        mirror: bool | None = None,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """[F, 3, H, W] frames in [0, 1] of ``orbit`` around the object in ``image`` ([3, H, W] in [0, 1], white
        background, the model's size). ``seed`` fixes every random draw; ``decode_chunk`` frames are decoded at once.
        Steps, guidance and ``mirror`` left None are the model's own (``OrbitDefaults``; ``mirror``: its
        ``mirror_average``, done on orbits whose cameras come in mirrored pairs).

        With ``return_foreground``: (frames, foreground), the foreground [F, H, W] the probability in [0, 1] that each
        pixel shows the object, from a model with a foreground head (None otherwise). It is read at the first model
        call, from pure noise: the model's belief given the input view alone, the one its 2-step samples show."""
        self.check_request(image, orbit)
        partners = mirror_partners(orbit) if (self.defaults.mirror_average if mirror is None else mirror) else None
        num_steps = self.defaults.sample_steps if num_steps is None else num_steps
        passes = 1 if partners is None else 2
        settings = {"num_steps": num_steps, "sampler": sampler, "min_guidance": min_guidance,
                    "max_guidance": max_guidance, "cond_aug": cond_aug, "seed": seed, "decode_chunk": decode_chunk,
                    "return_foreground": return_foreground}  # fmt: skip
        progress = None if on_step is None else (lambda i, n: on_step(i, n * passes))
        frames, foreground = self._sample(image, orbit, on_step=progress, **settings)
        if partners is not None:
            progress = None if on_step is None else (lambda i, n: on_step(n + i, n * passes))
            mirrored, mirrored_foreground = self._sample(image.flip(-1), orbit, on_step=progress, **settings)
            frames = (frames + mirrored[partners].flip(-1)) / 2
            if foreground is not None:
                foreground = (foreground + mirrored_foreground[partners].flip(-1)) / 2
        return (frames, foreground) if return_foreground else frames

    def _sample(self, image: Tensor, orbit: Orbit, num_steps: int, sampler: str, min_guidance: float | None,
                max_guidance: float | None, cond_aug: float, seed: int, decode_chunk: int,
                on_step: Callable[[int, int], None] | None, return_foreground: bool) -> tuple[Tensor, Tensor | None]:
        """One sampling of ``__call__``: (frames, foreground or None)."""
        d = self.defaults
        min_guidance = d.min_guidance if min_guidance is None else min_guidance
        max_guidance = d.max_guidance if max_guidance is None else max_guidance
        device, dtype = self.device, self.dtype
        generator = torch.Generator().manual_seed(seed)
        frames, size = orbit.num_frames, image.shape[-1]
        h = w = size // self.vae_scale

        # 1. the input view: image embedding (cross attention) and noise-augmented latent (concatenated)
        pixels = (image[None].to(device, dtype) * 2 - 1)
        embedding = self.image_encoder(image[None].to(device, dtype))[:, None]  # [1, 1, D]
        noisy = pixels + cond_aug * torch.randn(pixels.shape, generator=generator).to(device, dtype)
        image_latent = self.vae.encode(noisy).latent_dist.mode()  # unscaled, as SVD / SV3D
        image_latent = image_latent[:, None].expand(1, frames, *image_latent.shape[1:])
        extra = [image_latent]
        if self.unet.config.lift_channels:
            extra.append(self.lifted_latents(image, orbit)[None])
        if self.unet.config.ray_channels:
            extra.append(plucker_rays(orbit.cameras, h, w)[None].to(device, dtype))
        hidden = 1 + bool(self.unet.config.lift_channels)  # the first ``hidden`` of extra: zeros when unconditional
        conditions = frame_conditions(self.unet, orbit, cond_aug)[None].to(device, dtype)
        guidance = triangular_guidance(orbit, min_guidance, max_guidance).to(device, dtype)[None, :, None, None, None]
        unguided = bool((guidance == 1).all())
        heads = return_foreground and self.unet.config.alpha_channels > 0
        logits: list[Tensor] = []  # the foreground logits of the first call

        def denoise(x: Tensor, sigma: float) -> Tensor:
            """Guided x_0 estimate: the unconditional branch sees a zero image embedding and latent (SV3D) and zero
            lifted views; with guidance 1 everywhere it is not needed and not run."""
            s = torch.tensor(sigma, device=device, dtype=torch.float32)
            scaled = (self.denoiser.c_in(s) * x).to(dtype)
            cond_in = torch.cat([scaled, *extra], dim=2)
            alpha = heads and not logits
            if unguided:
                out = self.unet(cond_in, self.denoiser.c_noise(s).expand(1), embedding, conditions, with_alpha=alpha)
                if alpha:
                    out, first = out
                    logits.append(first[0, :, 0])
                return self.denoiser.denoised(out.float(), x.float(), s).to(x.dtype)
            uncond_in = torch.cat([scaled, *map(torch.zeros_like, extra[:hidden]), *extra[hidden:]], dim=2)
            out = self.unet(torch.cat([uncond_in, cond_in]), self.denoiser.c_noise(s).expand(2),
                            torch.cat([torch.zeros_like(embedding), embedding]), conditions.expand(2, -1, -1),
                            with_alpha=alpha)  # fmt: skip
            if alpha:
                out, first = out
                logits.append(first[1, :, 0])  # the conditional branch's
            uncond, cond = self.denoiser.denoised(out.float(), x.float(), s).chunk(2)
            return (uncond + guidance * (cond - uncond)).to(x.dtype)

        # 2. sampling
        scheduler = make_scheduler(sampler)
        scheduler.set_timesteps(num_steps)
        shape = (1, frames, self.unet.latent_channels, h, w)
        x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * scheduler.init_noise_sigma
        for i in range(num_steps):
            x = scheduler.step(denoise, x, i, generator)
            if on_step is not None:
                on_step(i + 1, num_steps)

        # 3. decoding, a few frames at a time
        frames = self.decode(x[0] / self.vae.config.scaling_factor, decode_chunk)
        return frames, (torch.sigmoid(logits[0].float()).cpu() if logits else None)

    @torch.no_grad()
    def lifted_latents(self, image: Tensor, orbit: Orbit) -> Tensor:
        """[F, C, h, w] unscaled latents of the lifted views (``generate.lift``) of ``image`` [3, S, S] in [0, 1]."""
        lifted = lift_views(image.float().cpu(), orbit).to(self.device, self.dtype) * 2 - 1
        return self.vae.encode(lifted).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latents: Tensor, chunk: int) -> Tensor:
        """[F, C, h, w] latents -> [F, 3, H, W] images in [0, 1], ``chunk`` frames per VAE call (memory)."""
        images = []
        for start in range(0, len(latents), max(1, chunk)):
            part = latents[start : start + chunk].to(self.dtype)
            if isinstance(self.vae, AutoencoderKLTemporalDecoder):
                decoded = self.vae.decode(part, num_frames=len(part)).sample
            else:
                decoded = self.vae.decode(part).sample
            images.append((decoded.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(images)

    def check_request(self, image: Tensor, orbit: Orbit) -> None:
        """ValueError for requests this model cannot serve (size, frame count)."""
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
            raise ValueError(f"image must be [3, S, S], got {tuple(image.shape)}")
        if image.shape[-1] % self.vae_scale:
            raise ValueError(f"image size {image.shape[-1]} is not a multiple of the VAE's {self.vae_scale}")
        limit = self.unet.config.num_frames
        if not 2 <= orbit.num_frames <= limit:
            raise ValueError(f"{orbit.num_frames} frames: this model makes 2 to {limit} frames per orbit "
                             f"(trained on {self.defaults.num_frames})")

    # --- files ----------------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: Path, dtype: torch.dtype | None = None) -> Path:
        """The model folder; ``dtype`` (e.g. float16: half the size on disk) the tensors are stored in, else their
        own. ``from_pretrained`` loads either into the dtype asked for."""
        folder = Path(folder)
        for name in ("unet", "vae", "image_encoder"):
            save_model(getattr(self, name), folder / name, dtype)
        index = {"_class_name": "OrbitPipeline", "vae": type(self.vae).__name__, "orbit": asdict(self.defaults)}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: Path, dtype: torch.dtype = torch.float32) -> OrbitPipeline:
        """Load a model folder (safetensors only; every key checked)."""
        folder = Path(folder)
        if folder.is_file():
            refuse_pickle(folder)
            raise WeightsError(f"{folder} is a file: give the model folder that holds {INDEX_NAME}, unet/, vae/ and "
                               "image_encoder/ (or an SV3D .safetensors to orbit4d generate)")
        index_path = folder / INDEX_NAME
        if not index_path.is_file():
            raise WeightsError(f"{folder} is not an orbit4d model folder (no {INDEX_NAME}): give the folder that "
                               "holds model_index.json, unet/, vae/ and image_encoder/")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise WeightsError(f"{index_path} is not readable JSON ({error}): save the model again") from None
        if not isinstance(index, dict) or index.get("vae") not in VAE_CLASSES:
            vae = index.get("vae") if isinstance(index, dict) else None
            raise WeightsError(f"{index_path}: unknown VAE class {vae!r} (expected one of {', '.join(VAE_CLASSES)})")
        defaults = dataclass_from_json(OrbitDefaults, index.get("orbit", {}), f"{index_path} (orbit)", WeightsError)
        defaults.validate(f"{index_path} (orbit)")
        return cls(
            load_model(OrbitUNet, folder / "unet", dtype),
            load_model(VAE_CLASSES[index["vae"]], folder / "vae", dtype),
            load_model(CLIPVisionTower, folder / "image_encoder", dtype),
            defaults,
        )
