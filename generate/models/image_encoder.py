"""The input view's embedding for cross attention: a CLIP vision transformer in OpenCLIP's parameter layout.

SV3D and SVD condition on OpenCLIP ViT-H/14's pooled, projected image embedding (1,024 values). This module has
OpenCLIP's ``VisionTransformer`` parameter names (``conv1``, ``class_embedding``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks.{i}.{ln_1,attn,ln_2,mlp.c_fc,mlp.c_proj}``, ``ln_post``, ``proj``), so SV3D's
``conditioner.embedders.0.open_clip.model.visual.*`` weights load into it unchanged; the embedded model uses the same
class at a small width. Inputs are images in [0, 1]; CLIP's resize and normalisation happen here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class CLIPVisionTower(ModelMixin, ConfigMixin):
    """OpenCLIP's ViT image tower: [B, 3, H, W] in [0, 1] -> [B, output_dim] (ViT-H/14: width 1280, 32 layers,
    16 heads, patch 14, image 224, output 1024)."""

    @register_to_config
    def __init__(self, image_size: int = 224, patch_size: int = 14, width: int = 1280, layers: int = 32,
                 heads: int = 16, mlp_ratio: float = 4.0, output_dim: int = 1024) -> None:  # fmt: skip
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        grid = image_size // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def preprocess(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> CLIP input: bicubic resize (antialiased, corners aligned as sgm) to
        ``image_size``, normalised."""
        size = self.config.image_size
        x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=True, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
        std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype)[:, None, None]
        return (x - mean) / std  # no clamp: sgm normalises the bicubic overshoot as it is

    def forward(self, images: Tensor) -> Tensor:
        x = self.conv1(self.preprocess(images).to(self.conv1.weight.dtype))  # [B, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj
