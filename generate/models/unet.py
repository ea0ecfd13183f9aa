"""The orbit denoiser: diffusers' spatio-temporal UNet (SVD's blocks) with a conditioning vector per frame.

SVD adds one vector per clip to the time embedding (fps, motion bucket, noise augmentation). SV3D makes it per frame:
the sinusoidal embeddings of the noise augmentation (256), the camera's polar angle (512) and its azimuth relative to
the input view (512), concatenated (1,280 = SV3D_p's ``adm_in_channels``) and projected by ``add_embedding``. This
model takes ``conditions`` [B, F, K] and embeds slot k with ``condition_embed_dims[k]`` channels, which covers both:
SVD's layout is ``(256, 256, 256)`` with the same values on every frame.

The input is the noisy latents, the input view's latent (the same on every frame), optionally the latents of the
lifted views (``generate.lift``: the input's silhouette lifted to a solid and drawn from each frame's camera,
``lift_channels`` = the latent channels) and optionally Plücker ray maps (6 channels per latent pixel: ray direction
and moment, CAT3D / CameraCtrl), concatenated on channels by the pipeline in that order; ``in_channels`` counts all
of them. The input view also conditions every frame through cross attention
(``encoder_hidden_states``: its image embedding, one token).

Optionally (``alpha_channels`` > 0) a second head beside ``conv_out`` reads the same last features and predicts the
foreground of each frame: one logit per pixel of the latent pixel's patch (``alpha_channels`` = the VAE's downscale
squared), so the model says where the object is as well as what colour each pixel has on average. The colour is the
posterior mean, whose silhouette fades where the model is unsure; the foreground is a probability (trained on the
renderer's masks), whose 0.5 level is a silhouette.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor

SV3D_CONDITION_DIMS = (256, 512, 512)  # cond_aug, polar, azimuth (sgm ConcatTimestepEmbedderND outdims)
SVD_CONDITION_DIMS = (256, 256, 256)  # fps_id, motion_bucket_id, cond_aug


class OrbitUNet(UNetSpatioTemporalConditionModel):
    """``UNetSpatioTemporalConditionModel`` with per-frame conditioning (see the module docstring)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 1280,
        layers_per_block: int | tuple[int] = 2,
        cross_attention_dim: int | tuple[int] = 1024,
        transformer_layers_per_block: int | tuple[int, tuple[tuple]] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 21,
        condition_embed_dims: tuple[int, ...] = SV3D_CONDITION_DIMS,
        ray_channels: int = 0,
        lift_channels: int = 0,
        alpha_channels: int = 0,
    ):
        if sum(condition_embed_dims) != projection_class_embeddings_input_dim:
            raise ValueError(f"condition_embed_dims {tuple(condition_embed_dims)} sum to {sum(condition_embed_dims)}, "
                             f"not projection_class_embeddings_input_dim {projection_class_embeddings_input_dim}")
        if ray_channels not in (0, 6):
            raise ValueError(f"ray_channels is 0 (no ray maps) or 6 (Plücker), got {ray_channels}")
        if lift_channels not in (0, out_channels):
            raise ValueError(f"lift_channels is 0 (no lifted views) or out_channels {out_channels}, got "
                             f"{lift_channels}")
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=down_block_types, up_block_types=up_block_types, block_out_channels=block_out_channels,
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block, num_attention_heads=num_attention_heads,
            num_frames=num_frames,
        )  # fmt: skip
        if alpha_channels < 0 or math.isqrt(alpha_channels) ** 2 != alpha_channels:
            raise ValueError(f"alpha_channels is 0 (no foreground head) or a square (pixels a latent pixel covers), "
                             f"got {alpha_channels}")
        self.conv_alpha = (torch.nn.Conv2d(block_out_channels[0], alpha_channels, 3, padding=1) if alpha_channels
                           else None)

    @property
    def latent_channels(self) -> int:
        """Channels of the noisy latents (= of the input view's latent)."""
        return self.config.out_channels

    def embed_conditions(self, conditions: Tensor) -> Tensor:
        """[B, F, K] raw values (noise augmentation, angles in radians, ...) -> [B * F, sum(dims)] sinusoids."""
        dims = self.config.condition_embed_dims
        if conditions.shape[-1] != len(dims):
            raise ValueError(f"conditions has {conditions.shape[-1]} values per frame; this model takes {len(dims)}")
        flat = conditions.reshape(-1, len(dims)).float()  # angles and tiny cond_aug values keep float32 precision
        parts = [get_timestep_embedding(flat[:, k], dim, flip_sin_to_cos=True, downscale_freq_shift=0)
                 for k, dim in enumerate(dims)]  # fmt: skip
        return torch.cat(parts, dim=-1)

    def forward(self, sample: Tensor, c_noise: Tensor, encoder_hidden_states: Tensor, conditions: Tensor,
                with_alpha: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The raw (v) prediction, [B, F, out_channels, h, w]; with ``with_alpha`` (a model with the foreground head)
        also the foreground logits, [B, F, 1, H, W] at the image's size.

        sample: [B, F, in_channels, h, w] noisy latents scaled by c_in, the input view's latent, lifted views' latents,
        ray maps.
        c_noise: [B] or scalar noise conditioning (EDM's 0.25 log sigma). encoder_hidden_states: [B, 1, D].
        conditions: [B, F, K] per-frame values embedded by ``embed_conditions``.
        """
        batch, frames = sample.shape[:2]
        c_noise = torch.as_tensor(c_noise, dtype=torch.float32, device=sample.device).reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(c_noise).to(sample.dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        emb = emb + self.add_embedding(self.embed_conditions(conditions).to(emb.dtype))
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        indicator = torch.zeros(batch, frames, dtype=sample.dtype, device=sample.device)

        h = self.conv_in(sample.flatten(0, 1))
        skips = (h,)
        for block in self.down_blocks:
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h, res = block(hidden_states=h, temb=emb, image_only_indicator=indicator, **extra)
            skips += res
        h = self.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
        for i, block in enumerate(self.up_blocks):
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if i < len(self.up_blocks) - 1 else None  # any h, w, not only multiples
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size,
                      image_only_indicator=indicator, **extra)  # fmt: skip
        features = self.conv_act(self.conv_norm_out(h))
        h = self.conv_out(features)
        v = h.reshape(batch, frames, *h.shape[1:])
        if not with_alpha:
            return v
        if self.conv_alpha is None:
            raise ValueError("this model has no foreground head (alpha_channels 0)")
        scale = math.isqrt(self.config.alpha_channels)
        logits = torch.nn.functional.pixel_shuffle(self.conv_alpha(features), scale)
        return v, logits.reshape(batch, frames, *logits.shape[1:])


def with_alpha_head(unet: OrbitUNet, patch: int) -> OrbitUNet:
    """``unet`` with a foreground head for latent pixels of ``patch`` x ``patch`` image pixels: the same weights and
    v predictions, and a head of zero weights (probability 0.5 everywhere) until training moves it."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config["alpha_channels"] = patch * patch
    widened = OrbitUNet.from_config(config)
    missing, unexpected = widened.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not name.startswith("conv_alpha.") for name in missing):
        raise ValueError(f"with_alpha_head: unexpected weights {unexpected}, missing {missing}")
    torch.nn.init.zeros_(widened.conv_alpha.weight)
    torch.nn.init.zeros_(widened.conv_alpha.bias)
    parameter = next(unet.parameters())
    return torch.nn.Module.to(widened, parameter.device, parameter.dtype)
