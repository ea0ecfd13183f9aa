"""Architectures by name: the SV3D-sized generator, and small ones that train and sample on a CPU.

Each preset builds freshly initialised parts; weights come from ``OrbitPipeline.from_pretrained``, a published
checkpoint converter or fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL

from generate.models.image_encoder import CLIPVisionTower
from generate.models.patches import PatchAutoencoder
from generate.models.unet import SV3D_CONDITION_DIMS, OrbitUNet
from generate.pipeline import OrbitDefaults, OrbitPipeline


@dataclass(frozen=True)
class Architecture:
    """Widths of a generator; ``tiny`` is the test size, ``small`` the CPU-trainable size (pixels folded in 4 x 4
    patches, no learned VAE; ``small-rays`` with Plücker ray maps and ``lite`` with one layer a block are the
    candidates to measure against it: bench/RESULTS.md says which were), ``sv3d`` SV3D's."""

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_heads: int = 4
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32)
    patch_size: int = 0
    """> 0: no learned VAE, pixels folded in patch_size x patch_size patches (``PatchAutoencoder``; latent_channels
    is then 3 patch_size^2)."""
    clip_width: int = 32
    clip_layers: int = 2
    clip_heads: int = 4
    clip_patch: int = 8
    clip_image_size: int = 32
    embedding_dim: int = 32
    condition_embed_dims: tuple[int, ...] = (32, 64, 64)
    ray_maps: bool = False
    lift: bool = False
    """The lifted views (``generate.lift``) as one more input per frame."""

    def build(self, defaults: OrbitDefaults, seed: int = 0) -> OrbitPipeline:
        torch.manual_seed(seed)
        n = len(self.block_out_channels)
        latent_channels = 3 * self.patch_size**2 if self.patch_size else self.latent_channels
        unet = OrbitUNet(
            in_channels=(3 if self.lift else 2) * latent_channels + (6 if self.ray_maps else 0),
            out_channels=latent_channels,
            down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (n - 1) + ("DownBlockSpatioTemporal",),
            up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (n - 1),
            block_out_channels=self.block_out_channels,
            addition_time_embed_dim=self.condition_embed_dims[0],
            projection_class_embeddings_input_dim=sum(self.condition_embed_dims),
            layers_per_block=self.layers_per_block,
            cross_attention_dim=self.embedding_dim,
            num_attention_heads=self.attention_heads,
            num_frames=defaults.num_frames,
            condition_embed_dims=self.condition_embed_dims,
            ray_channels=6 if self.ray_maps else 0,
            lift_channels=latent_channels if self.lift else 0,
        )
        vae = PatchAutoencoder(patch_size=self.patch_size) if self.patch_size else AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=self.latent_channels,
            down_block_types=("DownEncoderBlock2D",) * len(self.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(self.vae_channels),
            block_out_channels=self.vae_channels, layers_per_block=1, norm_num_groups=8,
        )  # fmt: skip
        encoder = CLIPVisionTower(image_size=self.clip_image_size, patch_size=self.clip_patch, width=self.clip_width,
                                  layers=self.clip_layers, heads=self.clip_heads, output_dim=self.embedding_dim)  # fmt: skip
        return OrbitPipeline(unet.eval(), vae.eval(), encoder.eval(), defaults)


ARCHITECTURES = {
    "tiny": Architecture(),
    "small": Architecture(block_out_channels=(64, 128, 128), layers_per_block=2, attention_heads=8,
                          vae_channels=(32, 64, 64), clip_width=128, clip_layers=4, clip_heads=4, clip_patch=16,
                          clip_image_size=128, embedding_dim=128, condition_embed_dims=(64, 128, 128),
                          patch_size=4),  # fmt: skip
    "small-rays": Architecture(block_out_channels=(64, 128, 128), layers_per_block=2, attention_heads=8,
                               vae_channels=(32, 64, 64), clip_width=128, clip_layers=4, clip_heads=4, clip_patch=16,
                               clip_image_size=128, embedding_dim=128, condition_embed_dims=(64, 128, 128),
                               patch_size=4, ray_maps=True),  # fmt: skip
    "lite": Architecture(block_out_channels=(64, 128, 128), layers_per_block=1, attention_heads=8,
                         vae_channels=(32, 64, 64), clip_width=128, clip_layers=4, clip_heads=4, clip_patch=16,
                         clip_image_size=128, embedding_dim=128, condition_embed_dims=(64, 128, 128),
                         patch_size=4),  # fmt: skip
    "sv3d": Architecture(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_heads=(5, 10, 20, 20),
                         vae_channels=(128, 256, 512, 512), clip_width=1280, clip_layers=32, clip_heads=16,
                         clip_patch=14, clip_image_size=224, embedding_dim=1024,
                         condition_embed_dims=SV3D_CONDITION_DIMS),  # fmt: skip
}
