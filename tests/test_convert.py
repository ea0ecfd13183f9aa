"""Published checkpoints into our modules on tiny stand-ins: an SV3D file written in sgm's key layout by an
independent generator (tests/sgm_layout.py) and an SVD folder saved by diffusers and transformers themselves.
Every source tensor must land in the models unchanged or be listed as unused; converted parts must compute what
the originals compute; damaged files and pickles fail with the key or the reason named."""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sgm_layout import VideoUNetConfig, random_state, sv3d_shapes

from generate.cameras import sv3d_orbit
from generate.convert import SV3DConfig, convert_sv3d, load_sv3d, load_svd_folder, sv3d_condition_vector
from generate.models.image_encoder import CLIP_MEAN, CLIP_STD
from generate.pipeline import OrbitPipeline
from generate.weights import WeightsError

TINY = SV3DConfig(head_dim=16, clip_heads=4)  # what shapes cannot tell, for sgm_layout's default widths


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sv3d_state() -> dict[str, torch.Tensor]:
    return random_state(sv3d_shapes())


@pytest.fixture(scope="module")
def sv3d_file(sv3d_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sv3d") / "sv3d_p.safetensors"
    save_file(sv3d_state, str(path))
    return path


@pytest.fixture(scope="module")
def sv3d(sv3d_file) -> OrbitPipeline:
    return load_sv3d(sv3d_file, TINY)


# --- SV3D -------------------------------------------------------------------------------------------------------


def test_every_sv3d_key_is_loaded_or_listed_as_unused(sv3d_state, sv3d_file):
    report = convert_sv3d(sv3d_file, config=TINY)
    assert report.problems == [] and report.missing == report.unexpected == report.wrong_shape == ()
    text = {k for k in sv3d_state if k.startswith("conditioner.embedders.0.open_clip.model.")
            and ".visual." not in k}  # fmt: skip
    assert "conditioner.embedders.0.open_clip.model.logit_scale" in text and len(text) == 6
    decoder_half = {k for k in sv3d_state
                    if re.match(r"conditioner\.embedders\.1\.encoder\.(decoder|post_quant_conv)\.", k)}
    first_stage_encoder = {k for k in sv3d_state if k.startswith("first_stage_model.encoder.")}
    assert decoder_half and first_stage_encoder and set(report.unused) == text | decoder_half | first_stage_encoder
    assert report.loaded + len(report.unused) == len(sv3d_state)
    assert any("text-tower" in note and "6 keys" in note for note in report.notes)
    assert any("(2, 4) heads of 16 channels" in note for note in report.notes)


def _by_value(state: dict[str, torch.Tensor]) -> dict[bytes, str]:
    return {t.detach().contiguous().numpy().tobytes(): k for k, t in state.items()}


def test_converted_models_hold_exactly_the_source_tensors(sv3d, sv3d_state, sv3d_file):
    """Each model tensor is one source tensor, bit for bit (1x1 convolutions as linear layers), no source tensor
    is used twice, and named ones land where sgm's structure says they belong."""
    source = _by_value(sv3d_state)
    models = {"unet": sv3d.unet, "vae": sv3d.vae, "image_encoder": sv3d.image_encoder}
    origin = {}
    for name, model in models.items():
        for key, tensor in model.state_dict().items():
            assert tensor.dtype == torch.float32
            origin[(name, key)] = source[tensor.contiguous().numpy().tobytes()]
    assert len(set(origin.values())) == len(origin) == convert_sv3d(sv3d_file, config=TINY).loaded
    unet, clip = "model.diffusion_model.", "conditioner.embedders.0.open_clip.model.visual."
    ae, decoder = "conditioner.embedders.1.encoder.", "first_stage_model.decoder."
    expected = [  # (model, its key, sgm key): by sgm's block numbering, 1 ResBlock per level, attention at level 0
        ("unet", "down_blocks.0.resnets.0.spatial_res_block.norm1.weight",
         f"{unet}input_blocks.1.0.in_layers.0.weight"),
        ("unet", "down_blocks.0.resnets.0.temporal_res_block.conv2.weight",
         f"{unet}input_blocks.1.0.time_stack.out_layers.3.weight"),
        ("unet", "down_blocks.0.resnets.0.spatial_res_block.time_emb_proj.bias",
         f"{unet}input_blocks.1.0.emb_layers.1.bias"),
        ("unet", "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn2.to_k.weight",
         f"{unet}input_blocks.1.1.time_stack.0.attn2.to_k.weight"),
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
         f"{unet}input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"),
        ("unet", "down_blocks.0.downsamplers.0.conv.weight", f"{unet}input_blocks.2.0.op.weight"),
        ("unet", "down_blocks.1.resnets.0.spatial_res_block.conv_shortcut.weight",
         f"{unet}input_blocks.3.0.skip_connection.weight"),
        ("unet", "mid_block.resnets.1.time_mixer.mix_factor", f"{unet}middle_block.2.time_mixer.mix_factor"),
        ("unet", "mid_block.attentions.0.time_mixer.mix_factor", f"{unet}middle_block.1.time_mixer.mix_factor"),
        ("unet", "up_blocks.0.upsamplers.0.conv.weight", f"{unet}output_blocks.1.1.conv.weight"),
        ("unet", "up_blocks.1.attentions.1.time_pos_embed.linear_2.weight",
         f"{unet}output_blocks.3.1.time_pos_embed.2.weight"),
        ("unet", "add_embedding.linear_1.weight", f"{unet}label_emb.0.0.weight"),
        ("unet", "time_embedding.linear_2.bias", f"{unet}time_embed.2.bias"),
        ("unet", "conv_out.weight", f"{unet}out.2.weight"),
        ("image_encoder", "transformer.resblocks.1.attn.in_proj_weight",
         f"{clip}transformer.resblocks.1.attn.in_proj_weight"),
        ("image_encoder", "proj", f"{clip}proj"),
        ("vae", "encoder.mid_block.attentions.0.to_q.weight", f"{ae}encoder.mid.attn_1.q.weight"),
        ("vae", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
         f"{ae}encoder.down.1.block.0.nin_shortcut.weight"),
        ("vae", "quant_conv.weight", f"{ae}quant_conv.weight"),
        ("vae", "decoder.up_blocks.1.resnets.2.temporal_res_block.conv1.weight",
         f"{decoder}up.0.block.2.time_stack.in_layers.2.weight"),
        ("vae", "decoder.up_blocks.0.upsamplers.0.conv.weight", f"{decoder}up.1.upsample.conv.weight"),
        ("vae", "decoder.mid_block.resnets.1.time_mixer.mix_factor", f"{decoder}mid.block_2.mix_factor"),
        ("vae", "decoder.mid_block.attentions.0.to_out.0.weight", f"{decoder}mid.attn_1.proj_out.weight"),
        ("vae", "decoder.time_conv_out.weight", f"{decoder}conv_out.time_mix_conv.weight"),
        ("vae", "decoder.conv_norm_out.bias", f"{decoder}norm_out.bias"),
    ]  # fmt: skip
    for model, key, source_key in expected:
        assert origin[(model, key)] == source_key, key


def test_converted_sv3d_samples_and_round_trips_as_a_model_folder(sv3d, sv3d_file, tmp_path):
    assert sv3d.defaults.num_frames == 21 and sv3d.defaults.image_size == 576 and sv3d.defaults.fov_deg == 33.8
    assert type(sv3d.vae).__name__ == "AutoencoderKLTemporalDecoder" and sv3d.unet.config.num_frames == 21
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    orbit = sv3d_orbit(3, 10.0, size=16)
    frames = sv3d(image, orbit, num_steps=2)
    assert frames.shape == (3, 3, 16, 16) and torch.isfinite(frames).all() and frames.std() > 0

    report = convert_sv3d(sv3d_file, tmp_path / "sv3d", TINY)
    assert json.loads((tmp_path / "sv3d" / "conversion.json").read_text())["loaded"] == report.loaded
    assert torch.equal(OrbitPipeline.from_pretrained(tmp_path / "sv3d")(image, orbit, num_steps=2), frames)
    moved = tmp_path / "moved.safetensors"  # a converted folder is kept: the source is not read again
    assert convert_sv3d(moved, tmp_path / "sv3d", TINY) == report


def _sinusoid(values: np.ndarray, dim: int) -> np.ndarray:
    """sgm's timestep_embedding written out: [cos, sin] of t * 10000^(-k / (dim / 2))."""
    k = np.arange(dim // 2)
    args = values[:, None] * np.exp(-math.log(10000) * k / (dim // 2))[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def test_condition_vector_has_sv3d_ps_published_order(sv3d):
    """cond_aug (256), polar (512), azimuth (512): sgm's embedder order, each [cos, sin], max period 10000; and
    OrbitUNet.embed_conditions on [cond_aug, polar, azimuth] per frame builds that vector."""
    orbit = sv3d_orbit(5, 10.0, size=16)
    cond_aug, polar, azimuth = torch.full((5,), 0.02), orbit.polar_rad(), orbit.relative_azimuth_rad()
    vector = sv3d_condition_vector(cond_aug, polar, azimuth)
    assert vector.shape == (5, 1280)
    for values, part in ((cond_aug, vector[:, :256]), (polar, vector[:, 256:768]), (azimuth, vector[:, 768:])):
        np.testing.assert_allclose(part.numpy(), _sinusoid(values.double().numpy(), part.shape[1]), atol=1e-5)
    assert sv3d.unet.config.condition_embed_dims == (256, 512, 512)
    embedded = sv3d.unet.embed_conditions(torch.stack([cond_aug, polar, azimuth], dim=-1)[None])
    torch.testing.assert_close(embedded, vector, atol=1e-5, rtol=0)


def test_sv3d_u_conditions_on_cond_aug_alone(tmp_path):
    """sv3d_u.yaml: adm_in_channels 256 (cond_aug only) and a per-frame image decoder; the temporal decoder's
    weights, if the file has them, are listed as unused when asked to decode frame by frame."""
    path = tmp_path / "sv3d_u.safetensors"
    save_file(random_state(sv3d_shapes(VideoUNetConfig(adm_in_channels=256))), str(path))
    config = SV3DConfig(head_dim=16, clip_heads=4, temporal_decoder=False)
    report = convert_sv3d(path, config=config)
    assert report.problems == [] and any("cond_aug alone" in note for note in report.notes)
    assert any("temporal decoder layers" in note for note in report.notes)
    assert "first_stage_model.decoder.mid.block_1.mix_factor" in report.unused
    assert any(k.startswith("first_stage_model.decoder.") and ".time_stack." in k for k in report.unused)
    pipeline = load_sv3d(path, config)
    assert pipeline.unet.config.condition_embed_dims == (256,) and type(pipeline.vae).__name__ == "AutoencoderKL"
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert pipeline.decode(latents, 2).shape == (2, 3, 16, 16)
    generator = torch.Generator().manual_seed(1)
    sample, context = torch.randn(1, 2, 8, 8, 8, generator=generator), torch.randn(1, 1, 16, generator=generator)
    with torch.no_grad():
        out = pipeline.unet(sample, torch.tensor([0.1]), context, torch.full((1, 2, 1), 0.02))
    assert out.shape == (1, 2, 4, 8, 8) and torch.isfinite(out).all()
    frames = pipeline(torch.rand(3, 16, 16), sv3d_orbit(3, 0.0, size=16), num_steps=2)  # cond_aug alone per frame
    assert frames.shape == (3, 3, 16, 16) and torch.isfinite(frames).all()


def test_without_the_conditioners_autoencoder_the_first_stage_encodes(tmp_path):
    """A file without sgm's conditioner copy: the input view is encoded by first_stage_model.encoder, which in
    sgm's AutoencodingEngine has no quant_conv (an identity here)."""
    state = random_state(sv3d_shapes(conditioner_autoencoder=False))
    path = tmp_path / "first_stage.safetensors"
    save_file(state, str(path))
    report = convert_sv3d(path, config=TINY)
    assert report.problems == [] and report.loaded == len(state) - len(report.unused)
    assert any("first_stage_model.encoder, an identity quant_conv" in note for note in report.notes)
    vae = load_sv3d(path, TINY).vae
    assert torch.equal(vae.encoder.conv_in.weight, state["first_stage_model.encoder.conv_in.weight"])
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    moments = vae.encoder(pixels)
    torch.testing.assert_close(vae.encode(pixels).latent_dist.mean, moments[:, :4], atol=1e-6, rtol=0)


# --- bad SV3D files ---------------------------------------------------------------------------------------------


def test_missing_and_misshaped_keys_are_named(sv3d_state, tmp_path):
    damaged = dict(sv3d_state)
    del damaged["model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight"]
    to_q = "model.diffusion_model.middle_block.1.time_stack.0.attn1.to_q.weight"
    damaged[to_q] = damaged[to_q][:, :-1].contiguous()
    damaged["model.diffusion_model.input_blocks.1.1.extra.weight"] = torch.zeros(3)
    path = tmp_path / "damaged.safetensors"
    save_file(damaged, str(path))

    report = convert_sv3d(path, config=TINY)
    assert report.missing == ("down_blocks.0.resnets.0.temporal_res_block.conv1.weight",)
    assert report.unexpected == ("model.diffusion_model.input_blocks.1.1.extra.weight",)
    to_q_model = "mid_block.attentions.0.temporal_transformer_blocks.0.attn1.to_q.weight"
    assert report.wrong_shape == (f"{to_q} (64, 63) -> {to_q_model} (model: (64, 64))",)
    with pytest.raises(WeightsError) as error:
        load_sv3d(path, TINY)
    message = str(error.value)
    assert str(path) in message and "1 missing: down_blocks.0.resnets.0.temporal_res_block.conv1.weight" in message
    assert f"1 wrong shape: {to_q}" in message
    assert "1 unexpected: model.diffusion_model.input_blocks.1.1.extra.weight" in message
    with pytest.raises(WeightsError):
        convert_sv3d(path, tmp_path / "out", TINY)
    assert not (tmp_path / "out").exists()


def test_unknown_layouts_and_pickles_are_refused(sv3d_state, sv3d_file, tmp_path):
    no_clip = {k: v for k, v in sv3d_state.items() if ".visual." not in k}
    save_file(no_clip, str(tmp_path / "no_clip.safetensors"))
    with pytest.raises(WeightsError, match="OpenCLIP image tower"):
        load_sv3d(tmp_path / "no_clip.safetensors", TINY)
    with pytest.raises(WeightsError, match="head_dim"):
        load_sv3d(sv3d_file, SV3DConfig(head_dim=24, clip_heads=4))

    class Boom:
        def __reduce__(self):
            return (Path("/nonexistent-orbit4d-convert-marker").touch, ())

    for name in ("sv3d_p.ckpt", "sv3d_p.safetensors"):
        (tmp_path / name).write_bytes(pickle.dumps({"state_dict": Boom()}))
        with pytest.raises(WeightsError, match="pickle"):
            convert_sv3d(tmp_path / name)
    assert not Path("/nonexistent-orbit4d-convert-marker").exists()


# --- SVD in diffusers' folder layout -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svd_parts():
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        in_channels=8, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1,
        cross_attention_dim=16, num_attention_heads=(2, 4), num_frames=3,
    ).eval()  # fmt: skip
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                       layers_per_block=1).eval()  # fmt: skip
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=16, patch_size=8, projection_dim=16, hidden_act="gelu")  # fmt: skip
    encoder = CLIPVisionModelWithProjection(clip).eval()
    return unet, vae, encoder


@pytest.fixture(scope="module")
def svd_folder(svd_parts, tmp_path_factory) -> Path:
    unet, vae, encoder = svd_parts
    folder = tmp_path_factory.mktemp("svd") / "stable-video-diffusion"
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    (folder / "feature_extractor").mkdir()
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "crop_size": 16}))  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableVideoDiffusionPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"]}))  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def svd(svd_folder) -> OrbitPipeline:
    return load_svd_folder(svd_folder)


def test_svd_image_tower_matches_transformers(svd, svd_parts, monkeypatch):
    """The same embedding as CLIPVisionModelWithProjection on the same preprocessed pixels."""
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    pixels = svd.image_encoder.preprocess(images)
    with torch.no_grad():
        reference = svd_parts[2](pixel_values=pixels).image_embeds
        monkeypatch.setattr(svd.image_encoder, "preprocess", lambda x: x)
        ours = svd.image_encoder(pixels)
    assert reference.shape == (2, 16) and reference.abs().max() > 1e-3
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_svd_unet_matches_diffusers_for_svd_conditions(svd, svd_parts):
    """SVD's added time ids (fps id, motion bucket id, cond_aug) on every frame give diffusers' output."""
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 3, 8, 8, 8, generator=generator)
    context = torch.randn(2, 1, 16, generator=generator)
    added = torch.tensor([[6.0, 127.0, 0.02], [7.0, 30.0, 0.1]])
    with torch.no_grad():
        reference = svd_parts[0](sample, torch.tensor([0.4, 0.4]), context, added).sample
        ours = svd.unet(sample, torch.tensor([0.4, 0.4]), context, added[:, None].expand(2, 3, 3))
    assert svd.unet.config.condition_embed_dims == (8, 8, 8) and reference.std() > 1e-3
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    vae_state = svd_parts[1].state_dict()
    assert all(torch.equal(v, vae_state[k]) for k, v in svd.vae.state_dict().items())
    assert svd.defaults.num_frames == 3


def test_bad_svd_folders_are_refused(svd_folder, tmp_path):
    bad = tmp_path / "svd"
    shutil.copytree(svd_folder, bad)
    config_path = bad / "image_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "hidden_act": "quick_gelu"}))
    with pytest.raises(WeightsError, match="quick_gelu"):
        load_svd_folder(bad)
    config_path.write_text(json.dumps(config))

    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(bad / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsError, match="pickle"):
        load_svd_folder(bad)
    (bad / "unet" / "diffusion_pytorch_model.bin").rename(weights)

    mean = json.loads((bad / "feature_extractor" / "preprocessor_config.json").read_text())
    (bad / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({**mean, "image_mean": [0.5] * 3}))
    with pytest.raises(WeightsError, match="image_mean"):
        load_svd_folder(bad)
    with pytest.raises(WeightsError, match="model_index.json"):
        load_svd_folder(bad / "unet")
