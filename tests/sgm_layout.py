"""Key names and shapes of an SV3D checkpoint as Stability's generative-models ("sgm") saves it, at any width.

Written from sgm's constructors, independently of generate/convert.py, so the converter's tests compare its rules
against what sgm would write rather than against themselves:

- ``VideoUNet`` (sgm/modules/diffusionmodules/video_model.py): ``time_embed``, ``label_emb`` ("sequential"),
  ``input_blocks`` / ``middle_block`` / ``output_blocks`` of ``VideoResBlock`` (openaimodel ``ResBlock`` + a 3-D
  ``time_stack`` ResBlock + ``time_mixer``), ``SpatialVideoTransformer`` (video_attention.py: linear ``proj_in``,
  ``transformer_blocks`` of ``BasicTransformerBlock``, ``time_stack`` of ``VideoTransformerBlock`` with ``ff_in``,
  ``time_pos_embed``, ``time_mixer``), ``Downsample.op`` / ``Upsample.conv``, ``out``.
- ``Encoder`` / ``Decoder`` (diffusionmodules/model.py) and ``VideoDecoder`` (autoencoding/temporal_ae.py, time_mode
  "conv-only": ``VideoResBlock`` with ``time_stack`` and ``mix_factor``, ``AE3DConv`` output with ``time_mix_conv``);
  ``AutoencoderKLModeOnly`` (models/autoencoder.py) adds ``quant_conv`` and ``post_quant_conv``.
- OpenCLIP's ``VisionTransformer`` under ``FrozenOpenCLIPImageEmbedder.model`` (encoders/modules.py deletes only the
  text ``transformer``, so ``token_embedding``, ``ln_final``, ``text_projection``, ``logit_scale`` remain).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Shapes = dict[str, tuple[int, ...]]


class _Keys:
    def __init__(self) -> None:
        self.shapes: Shapes = {}

    def linear(self, name: str, inp: int, out: int, bias: bool = True) -> None:
        self.shapes[f"{name}.weight"] = (out, inp)
        if bias:
            self.shapes[f"{name}.bias"] = (out,)

    def conv(self, name: str, inp: int, out: int, kernel: tuple[int, ...] = (3, 3), bias: bool = True) -> None:
        self.shapes[f"{name}.weight"] = (out, inp, *kernel)
        if bias:
            self.shapes[f"{name}.bias"] = (out,)

    def norm(self, name: str, channels: int) -> None:  # GroupNorm or LayerNorm
        self.shapes[f"{name}.weight"] = (channels,)
        self.shapes[f"{name}.bias"] = (channels,)

    def param(self, name: str, shape: tuple[int, ...]) -> None:
        self.shapes[name] = shape


# --- VideoUNet --------------------------------------------------------------------------------------------------


def _res_block(k: _Keys, p: str, channels: int, out: int, emb: int, kernel: tuple[int, ...], emb_layers: bool) -> None:
    k.norm(f"{p}in_layers.0", channels)
    k.conv(f"{p}in_layers.2", channels, out, kernel)
    if emb_layers:
        k.linear(f"{p}emb_layers.1", emb, out)
    k.norm(f"{p}out_layers.0", out)
    k.conv(f"{p}out_layers.3", out, out, kernel)
    if channels != out:
        k.conv(f"{p}skip_connection", channels, out, (1, 1))


def _video_res_block(k: _Keys, p: str, channels: int, out: int, emb: int) -> None:
    _res_block(k, p, channels, out, emb, (3, 3), emb_layers=True)
    _res_block(k, f"{p}time_stack.", out, out, emb, (3, 1, 1), emb_layers=True)
    k.param(f"{p}time_mixer.mix_factor", (1,))


def _cross_attention(k: _Keys, p: str, query_dim: int, context_dim: int, inner: int) -> None:
    k.linear(f"{p}to_q", query_dim, inner, bias=False)
    k.linear(f"{p}to_k", context_dim, inner, bias=False)
    k.linear(f"{p}to_v", context_dim, inner, bias=False)
    k.linear(f"{p}to_out.0", inner, query_dim)


def _geglu_feed_forward(k: _Keys, p: str, dim: int, dim_out: int) -> None:
    inner = 4 * dim
    k.linear(f"{p}net.0.proj", dim, 2 * inner)
    k.linear(f"{p}net.2", inner, dim_out)


def _spatial_video_transformer(k: _Keys, p: str, channels: int, heads: int, d_head: int, depth: int,
                               context_dim: int) -> None:  # fmt: skip
    inner = heads * d_head
    k.norm(f"{p}norm", channels)
    k.linear(f"{p}proj_in", channels, inner)
    for d in range(depth):
        b = f"{p}transformer_blocks.{d}."
        _cross_attention(k, f"{b}attn1.", inner, inner, inner)
        _geglu_feed_forward(k, f"{b}ff.", inner, inner)
        _cross_attention(k, f"{b}attn2.", inner, context_dim, inner)
        for n in (1, 2, 3):
            k.norm(f"{b}norm{n}", inner)
    for d in range(depth):
        b = f"{p}time_stack.{d}."
        k.norm(f"{b}norm_in", inner)
        _geglu_feed_forward(k, f"{b}ff_in.", inner, inner)
        _cross_attention(k, f"{b}attn1.", inner, inner, inner)
        _geglu_feed_forward(k, f"{b}ff.", inner, inner)
        k.norm(f"{b}norm2", inner)
        _cross_attention(k, f"{b}attn2.", inner, context_dim, inner)
        k.norm(f"{b}norm1", inner)
        k.norm(f"{b}norm3", inner)
    k.linear(f"{p}time_pos_embed.0", channels, 4 * channels)
    k.linear(f"{p}time_pos_embed.2", 4 * channels, channels)
    k.param(f"{p}time_mixer.mix_factor", (1,))
    k.linear(f"{p}proj_out", inner, channels)


@dataclass(frozen=True)
class VideoUNetConfig:
    """sv3d_p.yaml's network_config at any width (SV3D: 320, (1, 2, 4, 4), 2, (4, 2, 1), 1024, 1280)."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (1,)
    transformer_depth: int = 1
    context_dim: int = 16
    adm_in_channels: int = 1280
    num_head_channels: int = 16


def video_unet(k: _Keys, p: str, c: VideoUNetConfig) -> None:
    mc, emb = c.model_channels, 4 * c.model_channels
    k.linear(f"{p}time_embed.0", mc, emb)
    k.linear(f"{p}time_embed.2", emb, emb)
    k.linear(f"{p}label_emb.0.0", c.adm_in_channels, emb)
    k.linear(f"{p}label_emb.0.2", emb, emb)
    k.conv(f"{p}input_blocks.0.0", c.in_channels, mc)

    def attention(prefix: str, channels: int) -> None:
        heads = channels // c.num_head_channels
        _spatial_video_transformer(k, prefix, channels, heads, c.num_head_channels, c.transformer_depth, c.context_dim)

    chans, ch, ds, index = [mc], mc, 1, 1
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks):
            _video_res_block(k, f"{p}input_blocks.{index}.0.", ch, mult * mc, emb)
            ch = mult * mc
            if ds in c.attention_resolutions:
                attention(f"{p}input_blocks.{index}.1.", ch)
            chans.append(ch)
            index += 1
        if level != len(c.channel_mult) - 1:
            k.conv(f"{p}input_blocks.{index}.0.op", ch, ch)
            chans.append(ch)
            index += 1
            ds *= 2
    _video_res_block(k, f"{p}middle_block.0.", ch, ch, emb)
    attention(f"{p}middle_block.1.", ch)
    _video_res_block(k, f"{p}middle_block.2.", ch, ch, emb)
    index = 0
    for level, mult in reversed(list(enumerate(c.channel_mult))):
        for i in range(c.num_res_blocks + 1):
            _video_res_block(k, f"{p}output_blocks.{index}.0.", ch + chans.pop(), mc * mult, emb)
            ch, layer = mc * mult, 1
            if ds in c.attention_resolutions:
                attention(f"{p}output_blocks.{index}.1.", ch)
                layer = 2
            if level and i == c.num_res_blocks:
                k.conv(f"{p}output_blocks.{index}.{layer}.conv", ch, ch)
                ds //= 2
            index += 1
    k.norm(f"{p}out.0", ch)
    k.conv(f"{p}out.2", mc, c.out_channels)


# --- autoencoders -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoencoderConfig:
    """The ddconfig of sv3d_p.yaml at any width (SV3D: ch 128, ch_mult (1, 2, 4, 4), 2 blocks, z 4)."""

    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    z_channels: int = 4


def _resnet(k: _Keys, p: str, inp: int, out: int, video: bool) -> None:
    k.norm(f"{p}norm1", inp)
    k.conv(f"{p}conv1", inp, out)
    k.norm(f"{p}norm2", out)
    k.conv(f"{p}conv2", out, out)
    if inp != out:
        k.conv(f"{p}nin_shortcut", inp, out, (1, 1))
    if video:  # temporal_ae.VideoResBlock: a 3-D ResBlock without timestep embedding, and a learned mix factor
        _res_block(k, f"{p}time_stack.", out, out, 0, (3, 1, 1), emb_layers=False)
        k.param(f"{p}mix_factor", (1,))


def _attn_block(k: _Keys, p: str, channels: int) -> None:
    k.norm(f"{p}norm", channels)
    for name in ("q", "k", "v", "proj_out"):
        k.conv(f"{p}{name}", channels, channels, (1, 1))


def encoder(k: _Keys, p: str, c: AutoencoderConfig) -> None:
    k.conv(f"{p}conv_in", 3, c.ch)
    in_mult = (1, *c.ch_mult)
    for level in range(len(c.ch_mult)):
        block_in, block_out = c.ch * in_mult[level], c.ch * c.ch_mult[level]
        for j in range(c.num_res_blocks):
            _resnet(k, f"{p}down.{level}.block.{j}.", block_in, block_out, video=False)
            block_in = block_out
        if level != len(c.ch_mult) - 1:
            k.conv(f"{p}down.{level}.downsample.conv", block_in, block_in)
    _resnet(k, f"{p}mid.block_1.", block_in, block_in, video=False)
    _attn_block(k, f"{p}mid.attn_1.", block_in)
    _resnet(k, f"{p}mid.block_2.", block_in, block_in, video=False)
    k.norm(f"{p}norm_out", block_in)
    k.conv(f"{p}conv_out", block_in, 2 * c.z_channels)


def decoder(k: _Keys, p: str, c: AutoencoderConfig, video: bool) -> None:
    block_in = c.ch * c.ch_mult[-1]
    k.conv(f"{p}conv_in", c.z_channels, block_in)
    _resnet(k, f"{p}mid.block_1.", block_in, block_in, video)
    _attn_block(k, f"{p}mid.attn_1.", block_in)  # time_mode "conv-only": a plain AttnBlock
    _resnet(k, f"{p}mid.block_2.", block_in, block_in, video)
    for level in reversed(range(len(c.ch_mult))):
        block_out = c.ch * c.ch_mult[level]
        for j in range(c.num_res_blocks + 1):
            _resnet(k, f"{p}up.{level}.block.{j}.", block_in, block_out, video)
            block_in = block_out
        if level != 0:
            k.conv(f"{p}up.{level}.upsample.conv", block_in, block_in)
    k.norm(f"{p}norm_out", block_in)
    k.conv(f"{p}conv_out", block_in, 3)
    if video:
        k.conv(f"{p}conv_out.time_mix_conv", 3, 3, (3, 1, 1))


def autoencoder_kl_mode_only(k: _Keys, p: str, c: AutoencoderConfig) -> None:
    encoder(k, f"{p}encoder.", c)
    decoder(k, f"{p}decoder.", c, video=False)
    k.conv(f"{p}quant_conv", 2 * c.z_channels, 2 * c.z_channels, (1, 1))
    k.conv(f"{p}post_quant_conv", c.z_channels, c.z_channels, (1, 1))


# --- OpenCLIP ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenCLIPConfig:
    """ViT-H-14 at any width (ViT-H: 1280, 32 layers, patch 14, 224 px, 16 heads, embedding 1024)."""

    width: int = 32
    layers: int = 2
    patch: int = 8
    image_size: int = 16
    heads: int = 4
    output_dim: int = 16
    text_width: int = 24
    vocab: int = 50


def open_clip_visual(k: _Keys, p: str, c: OpenCLIPConfig) -> None:
    w, grid = c.width, c.image_size // c.patch
    k.conv(f"{p}conv1", 3, w, (c.patch, c.patch), bias=False)
    k.param(f"{p}class_embedding", (w,))
    k.param(f"{p}positional_embedding", (grid * grid + 1, w))
    k.norm(f"{p}ln_pre", w)
    for i in range(c.layers):
        b = f"{p}transformer.resblocks.{i}."
        k.norm(f"{b}ln_1", w)
        k.param(f"{b}attn.in_proj_weight", (3 * w, w))
        k.param(f"{b}attn.in_proj_bias", (3 * w,))
        k.linear(f"{b}attn.out_proj", w, w)
        k.norm(f"{b}ln_2", w)
        k.linear(f"{b}mlp.c_fc", w, 4 * w)
        k.linear(f"{b}mlp.c_proj", 4 * w, w)
    k.norm(f"{p}ln_post", w)
    k.param(f"{p}proj", (w, c.output_dim))


def open_clip_text_remnants(k: _Keys, p: str, c: OpenCLIPConfig) -> None:
    k.param(f"{p}token_embedding.weight", (c.vocab, c.text_width))
    k.param(f"{p}positional_embedding", (77, c.text_width))
    k.norm(f"{p}ln_final", c.text_width)
    k.param(f"{p}text_projection", (c.text_width, c.output_dim))
    k.param(f"{p}logit_scale", ())


# --- the checkpoint ---------------------------------------------------------------------------------------------


def sv3d_shapes(unet: VideoUNetConfig = VideoUNetConfig(), ae: AutoencoderConfig = AutoencoderConfig(),
                clip: OpenCLIPConfig = OpenCLIPConfig(), video_decoder: bool = True,
                conditioner_autoencoder: bool = True, first_stage_encoder: bool = True) -> Shapes:  # fmt: skip
    """Every key of an SV3D DiffusionEngine state dict (sv3d_p.yaml; SV3D_u: adm_in_channels 256).

    sv3d_p.yaml gives the first stage an Identity encoder, but a file saved from a training config with svd.yaml's
    first stage (an ``Encoder``, no quant convs) also holds ``first_stage_model.encoder.*``, which sgm's
    non-strict loading ignores; ``first_stage_encoder`` adds those keys, ``conditioner_autoencoder`` the
    conditioner's AutoencoderKLModeOnly.
    """
    k = _Keys()
    video_unet(k, "model.diffusion_model.", unet)
    open_clip_visual(k, "conditioner.embedders.0.open_clip.model.visual.", clip)
    open_clip_text_remnants(k, "conditioner.embedders.0.open_clip.model.", clip)
    if conditioner_autoencoder:
        autoencoder_kl_mode_only(k, "conditioner.embedders.1.encoder.", ae)
    if first_stage_encoder:
        encoder(k, "first_stage_model.encoder.", ae)
    decoder(k, "first_stage_model.decoder.", ae, video=video_decoder)
    return k.shapes


def random_state(shapes: Shapes, seed: int = 0, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Distinct random values for every key (so each converted tensor can be traced back to its source)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: scale * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
