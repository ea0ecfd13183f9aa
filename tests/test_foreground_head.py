"""The generator's foreground head (``OrbitUNet.alpha_channels``): where the object is in each generated view, as a
probability, beside the colours."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from generate.models.unet import OrbitUNet, with_alpha_head
from generate.pipeline import OrbitDefaults, OrbitPipeline
from generate.presets import ARCHITECTURES
from orbit4d.eval_generator import evaluate

DEFAULTS = OrbitDefaults(num_frames=4, image_size=32, fov_deg=33.8, radius=2.0, elevation_deg=0.0)


def _image() -> torch.Tensor:
    image = torch.ones(3, 32, 32)
    image[:, 8:24, 12:20] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return image


def test_a_new_head_leaves_the_frames_alone_and_starts_undecided(tmp_path):
    """with_alpha_head adds zero weights: the same frames, probability 0.5 everywhere; the folder keeps the head."""
    pipeline = ARCHITECTURES["tiny"].build(DEFAULTS, seed=1)
    orbit = DEFAULTS.orbit()
    before = pipeline(_image(), orbit, num_steps=2, seed=0)
    frames, foreground = pipeline(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    assert foreground is None and torch.equal(frames, before)  # no head: no foreground
    pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    assert pipeline.unet.config.alpha_channels == pipeline.vae_scale**2
    frames, foreground = pipeline(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    assert torch.allclose(frames, before, atol=1e-6)
    assert foreground.shape == (4, 32, 32) and torch.allclose(foreground, torch.full_like(foreground, 0.5))
    with torch.no_grad():
        pipeline.unet.conv_alpha.bias.fill_(3.0)  # now it says "object" everywhere
    loaded = OrbitPipeline.from_pretrained(pipeline.save_pretrained(tmp_path / "model"))
    assert loaded.unet.config.alpha_channels == pipeline.vae_scale**2
    _, foreground = loaded(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    assert torch.allclose(foreground, torch.full_like(foreground, torch.sigmoid(torch.tensor(3.0)).item()), atol=1e-5)


def test_guided_sampling_reads_the_conditional_foreground():
    """With guidance the UNet runs twice a call; the foreground is the conditional branch's, which sees the input."""
    pipeline = ARCHITECTURES["tiny"].build(DEFAULTS, seed=2)
    pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    torch.nn.init.normal_(pipeline.unet.conv_alpha.weight, std=0.5)
    orbit = DEFAULTS.orbit()
    _, unguided = pipeline(_image(), orbit, num_steps=2, seed=0, return_foreground=True)
    _, guided = pipeline(_image(), orbit, num_steps=2, seed=0, min_guidance=1.0, max_guidance=2.5,
                         return_foreground=True)  # fmt: skip
    assert torch.allclose(guided, unguided, atol=1e-5)


def test_alpha_channels_must_be_a_square():
    config = dict(ARCHITECTURES["tiny"].build(DEFAULTS, seed=0).unet.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with pytest.raises(ValueError, match="alpha_channels is 0"):
        OrbitUNet.from_config({**config, "alpha_channels": 12})


class _Clips:
    """Two clips of a red bar on white, whose masks are the bar: what evaluate reads."""

    root = None

    def __init__(self, pipeline):
        from generate.dataset import Clip

        orbit = DEFAULTS.orbit()
        frames = _image().expand(4, 3, 32, 32).clone()
        masks = (frames - 1).abs().amax(dim=1) > 0.1
        self.entries = [{"path": f"clip_{i}", "asset": f"asset_{i}"} for i in range(2)]
        self._clip = Clip(frames, orbit, masks)

    def __len__(self):
        return 2

    def clip(self, index):
        return self._clip


def test_evaluation_scores_the_heads_foreground_beside_the_colours():
    """A head that says "object" where the bar is gets IoU 1 whatever colours the untrained UNet draws; the IoU of
    the colours (the benchmark's) is reported beside it."""
    pipeline = ARCHITECTURES["tiny"].build(DEFAULTS, seed=4)
    pipeline.unet = with_alpha_head(pipeline.unet, pipeline.vae_scale)
    bar = (_image() - 1).abs().amax(dim=0) > 0.1

    class Exact:
        unet, defaults = pipeline.unet, pipeline.defaults

        def __call__(self, image, orbit, return_foreground=False, **settings):
            frames = pipeline(image, orbit, **settings)
            return (frames, bar.float().expand(4, 32, 32)) if return_foreground else frames

    report, _ = evaluate(Exact(), _Clips(pipeline), steps=2)
    assert report["iou_head"] == pytest.approx(1.0)
    assert report["iou"] < 0.9  # the benchmark's IoU is the colours': an untrained UNet's are not the bar
    assert report["baselines"]["copy"]["iou"] == pytest.approx(1.0)  # the bar copied is the bar (same view here)
