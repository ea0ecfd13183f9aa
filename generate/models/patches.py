"""``PatchAutoencoder``: the lossless "VAE" of the small generators, pixels folded into channels.

A learned VAE small enough to train on a CPU next to the generator loses what matters at 64 px: fitted on the
orbit renders it reconstructed them at 21 dB, grey and blurred (colour is the first thing a PSNR against the truth
needs). Folding each P x P patch of pixels into channels (``pixel_unshuffle``) is exact and costs nothing: the UNet
sees a (3 P^2)-channel image P times smaller, as a learned VAE's latents, and denoises pixels directly (patch-based
pixel diffusion). The interface is the part of diffusers' AutoencoderKL the pipeline uses: ``encode(x).latent_dist``
with ``mode()`` / ``mean``, ``decode(z).sample``, ``config.scaling_factor``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor


@dataclass(frozen=True)
class Patches:
    """The (deterministic) "posterior": its mode and mean are the folded pixels."""

    mean: Tensor  # [B, 3 P^2, H / P, W / P]

    def mode(self) -> Tensor:
        return self.mean


@dataclass(frozen=True)
class Encoded:
    latent_dist: Patches


@dataclass(frozen=True)
class Decoded:
    sample: Tensor  # [B, 3, H, W]


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """[B, C, H, W] images in [-1, 1] <-> [B, C P^2, H / P, W / P] latents, exactly; no weights."""

    @register_to_config
    def __init__(self, patch_size: int = 4, in_channels: int = 3, scaling_factor: float = 1.0) -> None:
        super().__init__()
        if patch_size < 1 or in_channels < 1:
            raise ValueError(f"patch_size {patch_size} and in_channels {in_channels} must be at least 1")

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.patch_size**2

    def encode(self, x: Tensor) -> Encoded:
        if x.shape[-1] % self.config.patch_size or x.shape[-2] % self.config.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size "
                             f"{self.config.patch_size}")  # fmt: skip
        return Encoded(Patches(F.pixel_unshuffle(x, self.config.patch_size)))

    def decode(self, z: Tensor) -> Decoded:
        return Decoded(F.pixel_shuffle(z, self.config.patch_size))
