"""Published checkpoints into orbit4d's modules, from local files: SV3D's single sgm file, SVD's diffusers folder.

SV3D (SV3D_u, SV3D_p) ships as one ``.safetensors`` in Stability's generative-models ("sgm") layout::

    model.diffusion_model.*                       sgm VideoUNet -> OrbitUNet (diffusers' spatio-temporal names)
    conditioner.embedders.0.open_clip.model.visual.*   OpenCLIP ViT-H/14 image tower -> CLIPVisionTower (same names)
    conditioner.embedders.1.encoder.{encoder,quant_conv}.*   the autoencoder sgm encodes the input view with
                                                  -> vae.encoder, vae.quant_conv (else first_stage_model.encoder)
    first_stage_model.decoder.*                   VideoDecoder (SV3D_p) -> AutoencoderKLTemporalDecoder's decoder
    conditioner.embedders.2.. (cond_aug, polar, azimuth)   sinusoids without weights

Keys are renamed by small rules, one per sgm module kind (ResBlock, SpatialVideoTransformer, autoencoder blocks).
Widths, depths and block counts are read from tensor shapes, so a scaled-down file with the same layout converts
into a scaled-down model; what shapes cannot tell (attention heads) comes from ``SV3DConfig``. Every source key is
loaded, listed as unused with a reason (text-tower remnants, the conditioning autoencoder's decoder, ...), or
reported as unexpected; missing, mis-shaped or unexpected keys raise ``WeightsError`` before anything is written.

SVD in diffusers' folder layout (``unet/``, ``vae/``, ``image_encoder/`` ...) needs no renaming for the UNet and the
VAE; its image encoder is transformers' ``CLIPVisionModelWithProjection``, whose separate q/k/v projections are
fused into OpenCLIP's ``in_proj``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from torch import Tensor, nn

from generate.models.image_encoder import CLIP_MEAN, CLIP_STD, CLIPVisionTower
from generate.models.unet import SV3D_CONDITION_DIMS, SVD_CONDITION_DIMS, OrbitUNet
from generate.pipeline import INDEX_NAME, VAE_CLASSES, OrbitDefaults, OrbitPipeline
from generate.weights import CONFIG_NAME, check_state_dict, check_tensor
from multiview.weights import PICKLE_SUFFIXES, WeightsError, read_safetensors, refuse_pickle, summarize_keys

SV3D_DEFAULTS = OrbitDefaults(num_frames=21, image_size=576, fov_deg=33.8, radius=2.0, elevation_deg=10.0)
SV3D_U_CONDITION_DIMS = (256,)  # sv3d_u.yaml: adm_in_channels 256, one ConcatTimestepEmbedderND (cond_aug)
CONDITION_DIMS_BY_ADM = {sum(SV3D_CONDITION_DIMS): SV3D_CONDITION_DIMS, 256: SV3D_U_CONDITION_DIMS,
                         sum(SVD_CONDITION_DIMS): SVD_CONDITION_DIMS}  # fmt: skip
VIT_H_HEAD_WIDTH = 80  # OpenCLIP's ViT-H-14: width 1280, head_width 80 -> 16 heads
REPORT_NAME = "conversion.json"
Rename = Callable[[str], "str | None"]


@dataclass(frozen=True)
class SV3DConfig:
    """What an SV3D checkpoint's tensor shapes cannot tell."""

    head_dim: int = 64
    """UNet attention head width, sgm's ``num_head_channels: 64``: heads = channels / 64 (5, 10, 20, 20)."""
    clip_heads: int | None = None
    """Image-tower attention heads; None: width / 80, OpenCLIP ViT-H/14's head width (16 heads)."""
    condition_embed_dims: tuple[int, ...] | None = None
    """Sinusoid widths of the per-frame conditions; None: from ``adm_in_channels`` (1280: SV3D_p's cond_aug 256,
    polar 512, azimuth 512; 256: SV3D_u's cond_aug alone; 768: SVD's fps, motion bucket, cond_aug)."""
    temporal_decoder: bool | None = None
    """Decode with the temporal VideoDecoder; None: when the file holds its weights (sv3d_p.yaml decodes with it,
    sv3d_u.yaml with the per-frame image decoder: pass False to match the latter)."""
    num_frames: int = 21
    """Frames the UNet is configured for (SV3D: 21)."""
    scaling_factor: float = 0.18215
    """Latent scale, sgm's ``scale_factor``."""
    defaults: OrbitDefaults = SV3D_DEFAULTS
    """The orbit the model was trained on (SV3D: 21 frames at 576 px, 33.8 degree field of view, radius 2)."""


@dataclass(frozen=True)
class ConversionReport:
    """Where every tensor of a checkpoint went; ``problems`` empty means the models hold every weight they need."""

    source: str
    loaded: int = 0
    """Source tensors placed in the models."""
    missing: tuple[str, ...] = ()
    """Model keys that no source tensor fills."""
    wrong_shape: tuple[str, ...] = ()
    """``source key (shape) -> model key (model: shape)`` for tensors that do not fit."""
    unexpected: tuple[str, ...] = ()
    """Source keys without a destination that are not known to be unused: a layout this converter does not know."""
    unused: tuple[str, ...] = ()
    """Source keys deliberately not loaded; ``notes`` says why, one line per group."""
    notes: tuple[str, ...] = ()
    """The unused groups and the architecture choices not read from the file."""

    @property
    def problems(self) -> list[str]:
        return summarize_keys((("missing", self.missing), ("wrong shape", self.wrong_shape),
                               ("unexpected", self.unexpected)))  # fmt: skip

    def check(self) -> ConversionReport:
        """WeightsError naming the first missing, mis-shaped and unexpected keys, if any."""
        if self.problems:
            raise WeightsError(f"{self.source} does not convert ({'; '.join(self.problems)}): the file is damaged "
                               "or holds another architecture than its layout says")  # fmt: skip
        return self

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
        return Path(path)

    @classmethod
    def read(cls, path: Path) -> ConversionReport:
        values = json.loads(Path(path).read_text())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --- SV3D: public entry points ---------------------------------------------------------------------------------


def convert_sv3d(path: Path, out_dir: Path | None = None, config: SV3DConfig = SV3DConfig(),
                 overwrite: bool = False) -> ConversionReport:  # fmt: skip
    """Check an SV3D checkpoint, and with ``out_dir`` write it as an orbit4d model folder (``OrbitPipeline``'s
    layout plus ``conversion.json``). Without ``out_dir`` the report is returned as is, problems included; with it,
    problems raise before anything is written, and a folder converted before is kept unless ``overwrite``."""
    if out_dir is not None and not overwrite and (Path(out_dir) / REPORT_NAME).is_file() \
            and (Path(out_dir) / INDEX_NAME).is_file():  # fmt: skip
        return ConversionReport.read(Path(out_dir) / REPORT_NAME)
    converted = _convert_sv3d(Path(path), config)
    if out_dir is None:
        return converted.report
    converted.pipeline(torch.float32).save_pretrained(Path(out_dir))
    converted.report.write(Path(out_dir) / REPORT_NAME)
    return converted.report


def load_sv3d(path: Path, config: SV3DConfig = SV3DConfig(), dtype: torch.dtype = torch.float32) -> OrbitPipeline:
    """An ``OrbitPipeline`` holding an SV3D checkpoint's weights (WeightsError if any is missing or mis-shaped)."""
    return _convert_sv3d(Path(path), config).pipeline(dtype)


def sv3d_condition_vector(cond_aug: Tensor, polars_rad: Tensor, azimuths_rad: Tensor) -> Tensor:
    """SV3D_p's vector condition as sgm assembles it, [N] each -> [N, 1280].

    sgm's GeneralConditioner concatenates the "vector" outputs of its embedders in config order: cond_aug (256),
    polars_rad (512), azimuths_rad (512), each a ConcatTimestepEmbedderND, i.e. sgm's ``timestep_embedding``:
    [cos, sin] of t * 10000^(-k / half) for k < half. ``OrbitUNet.embed_conditions`` on the per-frame values
    [cond_aug, polar, azimuth] gives the same vector (tests/test_convert.py checks both against plain sinusoids).
    """
    parts = []
    for values, dim in zip((cond_aug, polars_rad, azimuths_rad), SV3D_CONDITION_DIMS):
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = values.float()[:, None] * freqs[None]
        parts.append(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
    return torch.cat(parts, dim=-1)


# --- placing tensors -------------------------------------------------------------------------------------------


@dataclass
class _Placed:
    """Source tensors renamed into one model's keys."""

    model: nn.Module
    tensors: dict[str, Tensor] = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)
    """Source keys handled: placed, mis-shaped or unexpected."""
    misfits: dict[str, str] = field(default_factory=dict)
    """Model key -> ``source key (shape) -> model key (model: shape)``."""
    unexpected: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [k for k in self.model.state_dict() if k not in self.tensors and k not in self.misfits]


def _place(model: nn.Module, state: dict[str, Tensor], parts: Iterable[tuple[str, Rename]],
           source: Path) -> _Placed:  # fmt: skip
    """Each source key under a part's prefix renamed into ``model``'s keys; a key the rule rejects, or that names
    no parameter of the model (or one already filled), is unexpected. WeightsError naming ``source`` for a tensor
    of integers or with NaN / Inf values (``check_tensor``)."""
    placed = _Placed(model)
    expected = model.state_dict()
    for prefix, rename in parts:
        for key in [k for k in state if k.startswith(prefix)]:
            placed.consumed.add(key)
            dest = rename(key[len(prefix) :])
            if dest is None or dest not in expected or dest in placed.tensors:
                placed.unexpected.append(key)
                continue
            tensor = _fit(state[key], expected[dest].shape)
            if tensor.shape != expected[dest].shape:
                shapes = f"{tuple(state[key].shape)} -> {dest} (model: {tuple(expected[dest].shape)})"
                placed.misfits[dest] = f"{key} {shapes}"
                continue
            check_tensor(tensor, expected[dest], key, source)
            placed.tensors[dest] = tensor
    return placed


def _fit(tensor: Tensor, shape: torch.Size) -> Tensor:
    """sgm's 1x1 convolutions where diffusers has linear layers (autoencoder attention): the same map."""
    if tensor.ndim == len(shape) + 2 and tensor.shape[:2] == shape and tensor.shape[2:] == (1, 1):
        return tensor[:, :, 0, 0].contiguous()
    return tensor


def _report(source: Path, placed: Iterable[_Placed], unused: dict[str, list[str]], strays: list[str],
            notes: list[str]) -> ConversionReport:  # fmt: skip
    placed = list(placed)
    notes = [f"unused: {len(keys)} keys, {reason}" for reason, keys in unused.items() if keys] + notes
    return ConversionReport(
        source=str(source),
        loaded=sum(len(p.consumed) - len(p.unexpected) - len(p.misfits) for p in placed),
        missing=tuple(k for p in placed for k in p.missing),
        wrong_shape=tuple(line for p in placed for line in p.misfits.values()),
        unexpected=tuple([k for p in placed for k in p.unexpected] + strays),
        unused=tuple(k for keys in unused.values() for k in keys),
        notes=tuple(notes),
    )


def _sort_unused(keys: Iterable[str], patterns: list[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Keys matching a (regex, reason) pattern grouped by reason; the rest returned as strays."""
    unused: dict[str, list[str]] = {reason: [] for _, reason in patterns}
    strays = []
    for key in keys:
        reason = next((r for pattern, r in patterns if re.match(pattern, key)), None)
        (unused[reason] if reason else strays).append(key)
    return unused, strays


def _loaded(model: nn.Module, tensors: dict[str, Tensor], dtype: torch.dtype) -> nn.Module:
    """A model built on the meta device, given its tensors (no random initialisation of billions of weights)."""
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    return model.eval()


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    """The sorted distinct integers the first group of ``pattern`` matches at the start of ``keys``."""
    return sorted({int(m[1]) for k in keys if (m := re.match(pattern, k))})


def _need(state: dict[str, Tensor], key: str, source: Path) -> Tensor:
    if key not in state:
        raise WeightsError(f"{source} has no {key}: cannot read the architecture; is this an SV3D checkpoint "
                           "in generative-models' layout?")  # fmt: skip
    return state[key]


def _sub(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _rename_layer(rest: str, names: dict[str, str]) -> str | None:
    """``layer.param`` with ``layer`` renamed by ``names`` (None: not a known layer)."""
    layer, _, param = rest.rpartition(".")
    return f"{names[layer]}.{param}" if layer in names and param in ("weight", "bias") else None


def _join(prefix: str, rest: str | None) -> str | None:
    return None if rest is None else f"{prefix}.{rest}"


def _first_match(key: str, table: Iterable[tuple[str, str]]) -> str | None:
    for pattern, target in table:
        if m := re.fullmatch(pattern, key):
            return m.expand(target)
    return None


# --- sgm VideoUNet -> OrbitUNet ---------------------------------------------------------------------------------

UNET_FIXED = (
    (r"time_embed\.0\.(weight|bias)", r"time_embedding.linear_1.\1"),
    (r"time_embed\.2\.(weight|bias)", r"time_embedding.linear_2.\1"),
    (r"label_emb\.0\.0\.(weight|bias)", r"add_embedding.linear_1.\1"),
    (r"label_emb\.0\.2\.(weight|bias)", r"add_embedding.linear_2.\1"),
    (r"input_blocks\.0\.0\.(weight|bias)", r"conv_in.\1"),
    (r"out\.0\.(weight|bias)", r"conv_norm_out.\1"),
    (r"out\.2\.(weight|bias)", r"conv_out.\1"),
)
RESBLOCK_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}  # fmt: skip
TRANSFORMER_PREFIXES = (
    ("time_stack.", "temporal_transformer_blocks."),
    ("time_pos_embed.0.", "time_pos_embed.linear_1."),
    ("time_pos_embed.2.", "time_pos_embed.linear_2."),
)


def _video_resblock(rest: str) -> str | None:
    """sgm VideoResBlock (a ResBlock, its ``time_stack`` 3-D ResBlock, ``time_mixer``) -> SpatioTemporalResBlock."""
    if rest == "time_mixer.mix_factor":
        return rest
    if rest.startswith("time_stack."):
        return _join("temporal_res_block", _rename_layer(rest[len("time_stack.") :], RESBLOCK_NAMES))
    return _join("spatial_res_block", _rename_layer(rest, RESBLOCK_NAMES))


def _video_transformer(rest: str) -> str:
    """sgm SpatialVideoTransformer -> TransformerSpatioTemporalModel: the same names but for the temporal parts."""
    for old, new in TRANSFORMER_PREFIXES:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _unet_rename(layers_per_block: int) -> Rename:
    """sgm numbers blocks in one sequence per side; diffusers groups them by resolution level."""
    per_level = layers_per_block + 1  # resnets, then a Downsample (input side) / resnets + 1 (output side)

    def layer(block: str, j: int, index: int, rest: str) -> str | None:
        if index == 0:
            return _join(f"{block}.resnets.{j}", _video_resblock(rest))
        return f"{block}.attentions.{j}.{_video_transformer(rest)}" if index == 1 else None

    def rename(key: str) -> str | None:
        if (fixed := _first_match(key, UNET_FIXED)) is not None:
            return fixed
        if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key):
            if int(m[1]) == 0:
                return None
            level, j = divmod(int(m[1]) - 1, per_level)
            if j == layers_per_block:  # the Downsample closing a level
                ok = m[2] == "0" and m[3] in ("op.weight", "op.bias")
                return f"down_blocks.{level}.downsamplers.0.conv.{m[3][3:]}" if ok else None
            return layer(f"down_blocks.{level}", j, int(m[2]), m[3])
        if m := re.fullmatch(r"middle_block\.([012])\.(.+)", key):
            index = int(m[1])
            return layer("mid_block", 0, 1, m[2]) if index == 1 else layer("mid_block", index // 2, 0, m[2])
        if m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key):
            level, j = divmod(int(m[1]), per_level)
            if m[3].startswith("conv."):  # the Upsample closing a level: the block's last layer
                return f"up_blocks.{level}.upsamplers.0.{m[3]}" if int(m[2]) > 0 else None
            return layer(f"up_blocks.{level}", j, int(m[2]), m[3])
        return None

    return rename


def _unet_levels(sd: dict[str, Tensor], source: Path) -> tuple[int, list[int], list[bool], list[int]]:
    """ResBlocks per level, and per level: width, whether it has attention, transformer depth (the middle block's
    where a level has none), read from a VideoUNet's ``input_blocks`` and ``middle_block``."""
    blocks = _indices(sd, r"input_blocks\.(\d+)\.")
    downs = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in sd]
    layers = downs[0] - 1 if downs else len(blocks) - 1
    levels = len(downs) + 1
    if layers < 1 or blocks != list(range(1 + levels * layers + len(downs))) \
            or downs != [(level + 1) * (layers + 1) for level in range(levels - 1)]:  # fmt: skip
        raise WeightsError(f"{source}: model.diffusion_model.input_blocks {blocks} with Downsamples at {downs} is "
                           "not a VideoUNet with the same number of ResBlocks per level")  # fmt: skip
    widths, attention, depths = [], [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        widths.append(_need(sd, f"input_blocks.{first}.0.out_layers.3.weight", source).shape[0])
        transformer = _indices(sd, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        attention.append(bool(transformer))
        depths.append(len(transformer))
    mid_depth = len(_indices(sd, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    depths = [d or mid_depth for d in depths]
    if depths[-1] != mid_depth:
        raise WeightsError(f"{source}: the middle transformer has depth {mid_depth} and the last level "
                           f"{depths[-1]}; diffusers' UNet ties them")  # fmt: skip
    return layers, widths, attention, depths


def _sv3d_unet(sd: dict[str, Tensor], config: SV3DConfig, source: Path) -> tuple[OrbitUNet, Rename, list[str]]:
    """OrbitUNet shaped like the VideoUNet in ``sd`` (keys without ``model.diffusion_model.``)."""
    layers, widths, attention, depths = _unet_levels(sd, source)
    adm = _need(sd, "label_emb.0.0.weight", source).shape[1]
    dims = config.condition_embed_dims or CONDITION_DIMS_BY_ADM.get(adm)
    if dims is None or sum(dims) != adm:
        raise WeightsError(f"{source}: label_emb takes {adm} values (adm_in_channels), which condition_embed_dims "
                           f"{dims} does not split: give SV3DConfig(condition_embed_dims=...)")  # fmt: skip
    if any(w % config.head_dim for w in widths):
        raise WeightsError(f"{source}: block widths {widths} are not multiples of head_dim {config.head_dim}: "
                           "give SV3DConfig(head_dim=...) (sgm's num_head_channels)")  # fmt: skip
    heads = tuple(w // config.head_dim for w in widths)
    kinds = ["CrossAttn" if a else "" for a in attention]
    context = _need(sd, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", source).shape[1]
    with torch.device("meta"):
        unet = OrbitUNet(
            in_channels=_need(sd, "input_blocks.0.0.weight", source).shape[1],
            out_channels=_need(sd, "out.2.weight", source).shape[0],
            down_block_types=tuple(f"{k}DownBlockSpatioTemporal" for k in kinds),
            up_block_types=tuple(f"{k}UpBlockSpatioTemporal" for k in reversed(kinds)),
            block_out_channels=tuple(widths), addition_time_embed_dim=dims[0],
            projection_class_embeddings_input_dim=adm, layers_per_block=layers, cross_attention_dim=context,
            transformer_layers_per_block=tuple(depths), num_attention_heads=heads, num_frames=config.num_frames,
            condition_embed_dims=tuple(dims),
        )  # fmt: skip
    notes = [(f"unet: widths {tuple(widths)}, {layers} ResBlocks per level, attention {tuple(attention)}, {heads} "
              f"heads of {config.head_dim} channels (head width is not in the file: sgm's num_head_channels), "
              f"conditions {tuple(dims)}")]  # fmt: skip
    if tuple(dims) == SV3D_U_CONDITION_DIMS:
        notes.append("unet conditions on cond_aug alone (SV3D_u): each frame takes [cond_aug], not [cond_aug, "
                     "polar, azimuth]; the orbit is fixed by training")  # fmt: skip
    return unet, _unet_rename(layers), notes


# --- sgm autoencoder -> diffusers AutoencoderKL(TemporalDecoder) -----------------------------------------------

AE_RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                   "nin_shortcut": "conv_shortcut"}  # fmt: skip
AE_ATTENTION_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
AE_FIXED = ((r"conv_in\.(weight|bias)", r"conv_in.\1"), (r"norm_out\.(weight|bias)", r"conv_norm_out.\1"),
            (r"conv_out\.(weight|bias)", r"conv_out.\1"),
            (r"conv_out\.time_mix_conv\.(weight|bias)", r"time_conv_out.\1"))  # fmt: skip
TEMPORAL_DECODER_KEY = r"(.*\.time_stack\.|.*\.mix_factor$|conv_out\.time_mix_conv\.)"


def _ae_resnet(rest: str, video: bool) -> str | None:
    """sgm ResnetBlock -> ResnetBlock2D; the decoder's VideoResBlock (+ ``time_stack``, ``mix_factor``) ->
    SpatioTemporalResBlock."""
    if not video:
        return _rename_layer(rest, AE_RESNET_NAMES)
    if rest == "mix_factor":
        return "time_mixer.mix_factor"
    if rest.startswith("time_stack."):
        return _join("temporal_res_block", _rename_layer(rest[len("time_stack.") :], RESBLOCK_NAMES))
    return _join("spatial_res_block", _rename_layer(rest, AE_RESNET_NAMES))


def _ae_rename(side: str, levels: int, video: bool) -> Rename:
    """sgm Encoder (``side`` "down") or Decoder / VideoDecoder ("up") -> diffusers' Encoder / (Temporal)Decoder.
    sgm indexes ``up`` by resolution (0 = full size), diffusers' ``up_blocks`` from the smallest."""

    def block_index(level: str) -> int:
        return int(level) if side == "down" else levels - 1 - int(level)

    def rename(key: str) -> str | None:
        if (fixed := _first_match(key, AE_FIXED)) is not None:
            return fixed if video or "time_conv_out" not in fixed else None
        if m := re.fullmatch(rf"{side}\.(\d+)\.block\.(\d+)\.(.+)", key):
            return _join(f"{side}_blocks.{block_index(m[1])}.resnets.{m[2]}", _ae_resnet(m[3], video and side == "up"))
        if m := re.fullmatch(rf"{side}\.(\d+)\.{side}sample\.conv\.(weight|bias)", key):
            return f"{side}_blocks.{block_index(m[1])}.{side}samplers.0.conv.{m[2]}"
        if m := re.fullmatch(r"mid\.block_([12])\.(.+)", key):
            return _join(f"mid_block.resnets.{int(m[1]) - 1}", _ae_resnet(m[2], video and side == "up"))
        if m := re.fullmatch(r"mid\.attn_1\.(.+)", key):
            return _join("mid_block.attentions.0", _rename_layer(m[1], AE_ATTENTION_NAMES))
        return None

    return rename


def _sv3d_vae(encoder: dict[str, Tensor], decoder: dict[str, Tensor], config: SV3DConfig,
              source: Path) -> tuple[nn.Module, bool, list[str]]:  # fmt: skip
    """The autoencoder shaped like sgm's Encoder (``encoder``) and (Video)Decoder (``decoder``), and whether its
    decoder is the temporal one."""
    levels = _indices(encoder, r"down\.(\d+)\.")
    layers = len(_indices(encoder, r"down\.0\.block\.(\d+)\."))
    widths = tuple(_need(encoder, f"down.{level}.block.0.conv2.weight", source).shape[0] for level in levels)
    if not levels or levels != list(range(len(levels))) or layers < 1:
        raise WeightsError(f"{source}: the autoencoder's encoder has levels {levels}, {layers} blocks per level")
    latent = _need(decoder, "conv_in.weight", source).shape[1]  # first_stage_model.decoder
    up_layers = len(_indices(decoder, r"up\.0\.block\.(\d+)\."))
    if up_layers != layers + 1:
        raise WeightsError(f"{source}: the decoder has {up_layers} blocks per level, the encoder {layers}; sgm's "
                           "autoencoders have one more in the decoder")  # fmt: skip
    has_temporal = any(re.match(TEMPORAL_DECODER_KEY, k) for k in decoder)
    video = has_temporal if config.temporal_decoder is None else config.temporal_decoder
    if video and layers != 2:
        raise WeightsError(f"{source}: diffusers' temporal decoder ties its middle block to layers_per_block, which "
                           f"matches sgm's only for 2 blocks per level (this file: {layers})")  # fmt: skip
    shape = {"in_channels": _need(encoder, "conv_in.weight", source).shape[1],
             "out_channels": _need(decoder, "conv_out.weight", source).shape[0],
             "down_block_types": ("DownEncoderBlock2D",) * len(levels), "block_out_channels": widths,
             "layers_per_block": layers, "latent_channels": latent,
             "scaling_factor": config.scaling_factor}  # fmt: skip
    with torch.device("meta"):
        if video:
            vae = AutoencoderKLTemporalDecoder(**shape)
        else:  # sgm's first stage decodes without a post-quant convolution
            vae = AutoencoderKL(**shape, up_block_types=("UpDecoderBlock2D",) * len(levels), use_post_quant_conv=False)
    notes = [f"vae: widths {widths}, {layers} blocks per level, {'temporal' if video else 'per-frame image'} decoder"]
    return vae, video, notes


# --- OpenCLIP image tower ---------------------------------------------------------------------------------------


def _clip_tower(visual: dict[str, Tensor], heads: int | None, source: Path) -> CLIPVisionTower:
    """CLIPVisionTower shaped like OpenCLIP's VisionTransformer parameters in ``visual``."""
    conv1 = _need(visual, "conv1.weight", source)
    width, patch = conv1.shape[0], conv1.shape[-1]
    tokens = _need(visual, "positional_embedding", source).shape[0]
    grid = math.isqrt(tokens - 1)
    if grid * grid + 1 != tokens:
        raise WeightsError(f"{source}: the image tower has {tokens} positions, not a square grid plus a class token")
    heads = heads or width // VIT_H_HEAD_WIDTH
    if heads < 1 or width % heads:
        raise WeightsError(f"{source}: image-tower width {width} does not split into {heads} heads")
    hidden = _need(visual, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0]
    with torch.device("meta"):
        return CLIPVisionTower(image_size=grid * patch, patch_size=patch, width=width,
                               layers=len(_indices(visual, r"transformer\.resblocks\.(\d+)\.")), heads=heads,
                               mlp_ratio=hidden / width, output_dim=_need(visual, "proj", source).shape[1])  # fmt: skip


# --- SV3D: the whole file ---------------------------------------------------------------------------------------


@dataclass
class _Converted:
    report: ConversionReport
    parts: dict[str, _Placed]
    defaults: OrbitDefaults

    def pipeline(self, dtype: torch.dtype) -> OrbitPipeline:
        self.report.check()
        unet, vae, encoder = (_loaded(self.parts[n].model, self.parts[n].tensors, dtype)
                              for n in ("unet", "vae", "image_encoder"))  # fmt: skip
        return OrbitPipeline(unet, vae, encoder, self.defaults)


def _embedder_index(state: dict[str, Tensor], pattern: str, what: str, source: Path) -> int:
    found = _indices(state, pattern)
    if len(found) != 1:
        raise WeightsError(f"{source}: expected one conditioner embedder with {what}, found {len(found)}: is this an "
                           "SV3D checkpoint in generative-models' layout?")  # fmt: skip
    return found[0]


@dataclass(frozen=True)
class _ViewEncoder:
    """Where the autoencoder that encodes the input view lives in an SV3D file."""

    encoder: str
    """Prefix of the sgm Encoder's keys."""
    quant_conv: str | None
    """Prefix of its quant_conv; None: no quant_conv (an identity in diffusers' model)."""
    unused: list[tuple[str, str]]
    note: str


def _view_encoder(state: dict[str, Tensor], source: Path) -> _ViewEncoder:
    """sgm's conditioner copy (encoder and quant_conv: what sv3d_*.yaml runs on the input view) when the file has
    it, else first_stage_model.encoder (sgm's AutoencodingEngine: no quant_conv unless the file has one)."""
    found = _indices(state, r"conditioner\.embedders\.(\d+)\.encoder\.encoder\.conv_in\.weight$")
    if len(found) == 1:
        copy = f"conditioner.embedders.{found[0]}.encoder."
        unused = [
            (rf"{re.escape(copy)}(decoder|post_quant_conv)\.",
             "the decoder half of the autoencoder sgm encodes the input view with (first_stage_model decodes frames)"),
            (r"first_stage_model\.(encoder|quant_conv|post_quant_conv)\.",
             ("first_stage_model's encoder side (sv3d_*.yaml give the first stage an Identity encoder and no quant "
              "convs: the input view goes through the conditioner's autoencoder)")),
        ]  # fmt: skip
        note = f"vae encoder: {copy}{{encoder,quant_conv}}"
        return _ViewEncoder(f"{copy}encoder.", f"{copy}quant_conv.", unused, note)
    if len(found) == 0 and "first_stage_model.encoder.conv_in.weight" in state:
        quant = "first_stage_model.quant_conv." if "first_stage_model.quant_conv.weight" in state else None
        note = f"vae encoder: first_stage_model.encoder, {'its quant_conv' if quant else 'an identity quant_conv'}"
        return _ViewEncoder("first_stage_model.encoder.", quant, [], note)
    raise WeightsError(f"{source}: expected one autoencoder to encode the input view (conditioner.embedders.*."
                       f"encoder.encoder.* or first_stage_model.encoder.*); the conditioner has {len(found)}")


def _identity_quant_conv(vae: nn.Module) -> dict[str, Tensor]:
    channels = vae.quant_conv.weight.shape[0]
    return {"quant_conv.weight": torch.eye(channels)[:, :, None, None], "quant_conv.bias": torch.zeros(channels)}


def _convert_sv3d(path: Path, config: SV3DConfig) -> _Converted:
    state = read_safetensors(path)
    clip = _embedder_index(state, r"conditioner\.embedders\.(\d+)\.open_clip\.model\.visual\.conv1\.weight$",
                           "an OpenCLIP image tower", path)  # fmt: skip
    clip_prefix, unet_prefix, decoder_prefix = (f"conditioner.embedders.{clip}.open_clip.model.visual.",
                                                "model.diffusion_model.", "first_stage_model.decoder.")  # fmt: skip
    view = _view_encoder(state, path)
    unet, unet_rename, notes = _sv3d_unet(_sub(state, unet_prefix), config, path)
    vae, video, vae_notes = _sv3d_vae(_sub(state, view.encoder), _sub(state, decoder_prefix), config, path)
    tower = _clip_tower(_sub(state, clip_prefix), config.clip_heads, path)
    levels = len(vae.config.block_out_channels)

    unused_patterns = [
        (rf"conditioner\.embedders\.{clip}\.open_clip\.model\.(?!visual\.)",
         "OpenCLIP text-tower remnants (sgm deletes only the text transformer; an image model never reads them)"),
        *view.unused,
        (r"model_ema\.", "EMA copies (sgm samples with model.diffusion_model.*)"),
    ]  # fmt: skip
    if not video:
        unused_patterns.insert(0, (rf"first_stage_model\.decoder\.{TEMPORAL_DECODER_KEY}",
                                   "temporal decoder layers (temporal_decoder=False: frames decoded one by one)"))
    unused, rest = _sort_unused(state, unused_patterns)
    rest_state = {k: state[k] for k in rest}
    encoder_rename, decoder_rename = _ae_rename("down", levels, False), _ae_rename("up", levels, video)
    vae_parts = [(view.encoder, lambda k: _join("encoder", encoder_rename(k))),
                 (decoder_prefix, lambda k: _join("decoder", decoder_rename(k)))]  # fmt: skip
    if view.quant_conv:
        vae_parts.append((view.quant_conv, lambda k: f"quant_conv.{k}"))
    parts = {"unet": _place(unet, rest_state, [(unet_prefix, unet_rename)], path),
             "vae": _place(vae, rest_state, vae_parts, path),
             "image_encoder": _place(tower, rest_state, [(clip_prefix, lambda k: k)], path)}  # fmt: skip
    if not view.quant_conv:
        parts["vae"].tensors.update(_identity_quant_conv(vae))
    consumed = set().union(*(p.consumed for p in parts.values()))
    tower_note = (f"image encoder: width {tower.config.width}, {tower.config.layers} layers, {tower.config.heads} "
                  "heads (head count is not in the file: OpenCLIP ViT-H/14 has 16)")  # fmt: skip
    notes += [*vae_notes, view.note, tower_note]
    report = _report(path, parts.values(), unused, [k for k in rest if k not in consumed], notes)
    return _Converted(report, parts, config.defaults)


# --- SVD in diffusers' folder layout ----------------------------------------------------------------------------

HF_LAYER = r"vision_model\.encoder\.layers\.(\d+)\."
HF_CLIP_RENAMES = (
    (r"vision_model\.embeddings\.patch_embedding\.weight", "conv1.weight"),
    (r"vision_model\.embeddings\.class_embedding", "class_embedding"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"ln_post.\1"),
    (HF_LAYER + r"self_attn\.in_proj\.(weight|bias)", r"transformer.resblocks.\1.attn.in_proj_\2"),
    (HF_LAYER + r"self_attn\.out_proj\.(weight|bias)", r"transformer.resblocks.\1.attn.out_proj.\2"),
    (HF_LAYER + r"layer_norm1\.(weight|bias)", r"transformer.resblocks.\1.ln_1.\2"),
    (HF_LAYER + r"layer_norm2\.(weight|bias)", r"transformer.resblocks.\1.ln_2.\2"),
    (HF_LAYER + r"mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (HF_LAYER + r"mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
    (r"visual_projection\.weight\.T", "proj"),  # transposed by _fuse_hf_clip
)
QKV_KEY = r"(vision_model\.encoder\.layers\.\d+\.self_attn)\.([qkv])_proj\.(weight|bias)"


def load_svd_folder(folder: Path, dtype: torch.dtype = torch.float32, variant: str | None = None,
                    defaults: OrbitDefaults | None = None) -> OrbitPipeline:  # fmt: skip
    """An ``OrbitPipeline`` from Stable Video Diffusion in diffusers' folder layout (safetensors only; configs read
    from config.json files). The UNet keeps SVD's three conditions (fps id, motion bucket id, cond_aug: 256 channels
    each); ``variant`` picks ``*.{variant}.safetensors`` (e.g. "fp16"); ``defaults``: the frames of the UNet's
    config at 576 px with SV3D's orbit."""
    folder = Path(folder)
    index = _read_json(folder / INDEX_NAME, "a diffusers folder (model_index.json, unet/, vae/, image_encoder/)")
    for name in ("unet", "vae", "image_encoder"):
        if name not in index or not (folder / name).is_dir():
            raise WeightsError(f"{folder} has no {name}/ in {INDEX_NAME}: give a Stable Video Diffusion folder")
    unet = _svd_unet(folder / "unet", variant, dtype)
    vae = _svd_vae(folder / "vae", variant, dtype)
    encoder = _svd_image_encoder(folder / "image_encoder", variant, dtype)
    _check_clip_preprocessing(folder / "feature_extractor" / "preprocessor_config.json")
    defaults = defaults or OrbitDefaults(num_frames=unet.config.num_frames, image_size=576)
    return OrbitPipeline(unet, vae, encoder, defaults)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: expected {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path} is not valid JSON ({error})") from None


def _weights_file(folder: Path, stem: str, variant: str | None) -> Path:
    """``stem[.variant].safetensors`` in ``folder``; a pickle-based file there instead is refused by name."""
    path = folder / f"{stem}{f'.{variant}' if variant else ''}.safetensors"
    if path.is_file():
        return path
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        refuse_pickle(pickles[0])
    raise WeightsError(f"{folder} has no {path.name}: orbit4d reads safetensors weights only")


def _diffusers_model(folder: Path, classes: dict[str, type], variant: str | None, dtype: torch.dtype,
                     **extra) -> nn.Module:  # fmt: skip
    """The model ``folder/config.json`` configures (one of ``classes``, by ``_class_name``; ``extra`` arguments
    added), holding its safetensors weights, every key checked."""
    config = _read_json(folder / CONFIG_NAME, "a diffusers config.json")
    name = config.get("_class_name")
    if name not in classes:
        raise WeightsError(f"{folder / CONFIG_NAME} configures {name!r}, expected one of {', '.join(classes)}")
    try:
        with torch.device("meta"):
            model = classes[name](**{k: v for k, v in config.items() if not k.startswith("_")}, **extra)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{folder / CONFIG_NAME} does not configure a {name} ({error})") from None
    path = _weights_file(folder, "diffusion_pytorch_model", variant)
    state = read_safetensors(path)
    check_state_dict(model, state, path)
    return _loaded(model, state, dtype)


def _svd_unet(folder: Path, variant: str | None, dtype: torch.dtype) -> OrbitUNet:
    """SVD's UNet as an OrbitUNet: the same keys; its three added-time ids become per-frame conditions."""
    config = _read_json(folder / CONFIG_NAME, "a diffusers config.json")
    dims = (config.get("addition_time_embed_dim", 256),) * len(SVD_CONDITION_DIMS)  # fps, motion bucket, cond_aug
    classes = {"UNetSpatioTemporalConditionModel": OrbitUNet}
    return _diffusers_model(folder, classes, variant, dtype, condition_embed_dims=dims)


def _svd_vae(folder: Path, variant: str | None, dtype: torch.dtype) -> nn.Module:
    return _diffusers_model(folder, VAE_CLASSES, variant, dtype)


def _svd_image_encoder(folder: Path, variant: str | None, dtype: torch.dtype) -> CLIPVisionTower:
    """transformers' CLIPVisionModelWithProjection -> CLIPVisionTower (the same network in OpenCLIP's names)."""
    config = _read_json(folder / CONFIG_NAME, "a transformers CLIPVisionConfig config.json")
    config_path = folder / CONFIG_NAME
    if config.get("model_type") != "clip_vision_model" or "projection_dim" not in config:
        raise WeightsError(f"{config_path} is not a CLIPVisionModelWithProjection config")
    activation = config.get("hidden_act", "quick_gelu")  # transformers' CLIPVisionConfig default
    if activation != "gelu":
        raise WeightsError(f"{config_path}: hidden_act {activation!r}; CLIPVisionTower computes exact GELU "
                           "(OpenCLIP ViT-H/14, SVD's encoder) and would give other embeddings")  # fmt: skip
    if config.get("layer_norm_eps", 1e-5) != 1e-5 or config.get("num_channels", 3) != 3:
        raise WeightsError(f"{config_path}: layer_norm_eps {config.get('layer_norm_eps')} / num_channels "
                           f"{config.get('num_channels')}; CLIPVisionTower has 1e-5 and RGB")  # fmt: skip
    width = config["hidden_size"]
    with torch.device("meta"):
        tower = CLIPVisionTower(image_size=config["image_size"], patch_size=config["patch_size"], width=width,
                                layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                                mlp_ratio=config["intermediate_size"] / width,
                                output_dim=config["projection_dim"])  # fmt: skip
    path = _weights_file(folder, "model", variant)
    state = _fuse_hf_clip(read_safetensors(path))
    unused, rest = _sort_unused(state, [(r"vision_model\.embeddings\.position_ids$", "position ids (an arange)")])
    renames = [("", lambda k: _first_match(k, HF_CLIP_RENAMES))]
    placed = _place(tower, {k: state[k] for k in rest}, renames, path)
    _report(path, [placed], unused, [], []).check()
    return _loaded(tower, placed.tensors, dtype)


def _fuse_hf_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' separate q/k/v projections fused into one ``in_proj`` (q, k, v stacked, as
    nn.MultiheadAttention), and ``visual_projection`` ([out, width]) transposed into OpenCLIP's ``proj``."""
    fused: dict[str, Tensor] = {}
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in state.items():
        if m := re.fullmatch(QKV_KEY, key):
            groups.setdefault((m[1], m[3]), {})[m[2]] = tensor
        elif key == "visual_projection.weight":
            fused["visual_projection.weight.T"] = tensor.T.contiguous()
        else:
            fused[key] = tensor
    for (attention, param), qkv in groups.items():
        if set(qkv) == {"q", "k", "v"}:
            fused[f"{attention}.in_proj.{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
        else:  # an incomplete triple stays unfused: reported as unexpected, its in_proj as missing
            fused.update({f"{attention}.{p}_proj.{param}": t for p, t in qkv.items()})
    return fused


def _check_clip_preprocessing(path: Path) -> None:
    """The feature extractor must normalise as CLIPVisionTower.preprocess does (CLIP's mean and std)."""
    if not path.is_file():
        return
    config = _read_json(path, "a preprocessor config")
    for name, ours in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
        theirs = config.get(name, ours)
        if len(theirs) != 3 or any(abs(a - b) > 1e-6 for a, b in zip(theirs, ours)):
            raise WeightsError(f"{path}: {name} {theirs} differs from CLIP's {ours}, which CLIPVisionTower applies")
