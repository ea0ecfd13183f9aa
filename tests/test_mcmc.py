"""3DGS-MCMC relocation on CPU (``reconstruct.strategy.Relocator``): the relocation formula keeps what a Gaussian
contributes, dead Gaussians move onto live ones, the budget grows 5% a refinement up to its cap, training improves."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from reconstruct import train
from reconstruct.splats import Splats
from reconstruct.strategy import Relocator, relocation
from test_train import make_capture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("opacity", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("copies", [1, 2, 5, 12])
def test_relocation_keeps_peak_opacity_and_alpha_integral(opacity, copies):
    """N copies of the new Gaussian, composited, match the old one: same opacity at the centre and the same alpha
    integrated along a line through it (the paper's eq. 9 is exact in 1D)."""
    scale = torch.tensor([[0.3, 0.1, 2.0]])
    new_o, new_s = relocation(torch.tensor([opacity]), scale, torch.tensor([copies]))
    assert 1 - (1 - new_o.item()) ** copies == pytest.approx(opacity, rel=1e-6)
    x = np.linspace(-40, 40, 400_001)
    for axis in range(3):
        old = opacity * np.exp(-0.5 * (x / scale[0, axis].item()) ** 2)
        composite = 1 - (1 - new_o.item() * np.exp(-0.5 * (x / new_s[0, axis].item()) ** 2)) ** copies
        assert composite.sum() == pytest.approx(old.sum(), rel=1e-5)  # same uniform grid
    if copies == 1:
        assert new_o.item() == pytest.approx(opacity) and torch.allclose(new_s, scale)


def _params(n: int, opacities: torch.Tensor) -> tuple[dict, dict]:
    torch.manual_seed(0)
    splats = Splats(torch.randn(n, 3), torch.randn(n, 4), torch.full((n, 3), -2.0), torch.logit(opacities),
                    torch.rand(n, 1, 3), torch.zeros(n, 3, 3))  # fmt: skip
    params = splats.parameters()
    optimizers = train.make_optimizers(train.TrainConfig(), params, 1.0)
    for p in params.values():  # give Adam some state to keep aligned
        p.grad = torch.ones_like(p)
    for optimizer in optimizers.values():
        optimizer.step()
    return params, optimizers


def test_relocate_moves_dead_gaussians_onto_live_ones():
    opacities = torch.tensor([0.001, 0.9, 0.002, 0.6, 0.003, 0.8])
    params, optimizers = _params(6, opacities)
    live_means = params["means"][[1, 3, 5]].detach().clone()
    moved = Relocator().relocate(params, optimizers)
    assert moved == 3 and len(params["means"]) == 6
    for i in (0, 2, 4):  # each dead Gaussian now sits exactly on one of the live ones
        assert (params["means"][i] == live_means).all(dim=1).any()
    assert (torch.sigmoid(params["opacities"]) >= 0.005 - 1e-6).all()
    for name, optimizer in optimizers.items():
        state = optimizer.state[params[name]]
        assert state["exp_avg"].shape == params[name].shape
        assert (state["exp_avg"][[0, 2, 4]] == 0).all()  # moved Gaussians start with fresh moments


def test_total_opacity_mass_is_kept_when_a_gaussian_is_shared():
    """A live Gaussian that receives k dead ones becomes k + 1 copies whose composite peak opacity is the original's."""
    opacities = torch.tensor([0.7] + [0.001] * 3)
    params, optimizers = _params(4, opacities)
    before = torch.sigmoid(params["opacities"][0]).item()
    Relocator().relocate(params, optimizers)
    o = torch.sigmoid(params["opacities"]).detach()
    assert torch.allclose(o, o[0].expand(4))
    assert 1 - torch.prod(1 - o) == pytest.approx(before, rel=1e-5)


def test_grow_adds_five_percent_up_to_the_cap():
    params, optimizers = _params(100, torch.rand(100) * 0.9 + 0.05)
    relocator = Relocator(cap_max=108)
    assert relocator.grow(params, optimizers) == 5 and len(params["means"]) == 105
    assert relocator.grow(params, optimizers) == 3 and len(params["means"]) == 108
    assert relocator.grow(params, optimizers) == 0
    for name, optimizer in optimizers.items():
        assert optimizer.state[params[name]]["exp_avg"].shape == params[name].shape
        assert optimizer.param_groups[0]["params"][0] is params[name]


def test_noise_moves_transparent_gaussians_more_than_opaque_ones():
    params, optimizers = _params(2000, torch.cat([torch.full((1000,), 0.001), torch.full((1000,), 0.9)]))
    before = params["means"].detach().clone()
    Relocator().add_noise(params, scale=100.0)
    moved = (params["means"].detach() - before).norm(dim=1)
    assert moved[:1000].mean() > 100 * moved[1000:].mean() and moved[:1000].mean() > 0


def test_schedule_scales_with_steps():
    full = Relocator.for_steps(30_000, cap_max=10)
    assert (full.refine_start_iter, full.refine_stop_iter, full.refine_every) == (500, 25_000, 100)
    short = Relocator.for_steps(300, cap_max=10)
    assert (short.refine_start_iter, short.refine_stop_iter, short.refine_every) == (10, 250, 10)


def test_trains_with_mcmc_within_its_budget(tmp_path):
    """``--strategy mcmc`` on CPU: PSNR rises as with the default strategy, the count never exceeds the cap."""
    capture = make_capture(tmp_path / "capture")
    config = train.TrainConfig(
        steps=300, sh_degree=1, random_init_points=300, max_gaussians=400, strategy="mcmc", background="black",
        checkpoint_every=0, psnr_samples=3, turntable_frames=0, device="cpu",
    )  # fmt: skip
    counts = []
    out = train.run(config, capture, tmp_path / "scene", on_step=lambda s: counts.append(len(s.params["means"])))
    report = json.loads((out / "metrics.json").read_text())
    curve = [sample["psnr"] for sample in report["psnr_vs_time"]]
    assert curve[-1] > curve[0] + 8.0 and report["psnr"] > 22.0, curve
    assert counts[0] == 300 and max(counts) == 400 and counts[-1] == 400  # grown 5% per refinement to the cap
    assert report["config"]["strategy"] == "mcmc"


def test_regularizers_default_on_with_mcmc_only():
    assert train.regularizer_weights(train.TrainConfig(strategy="mcmc")) == (0.01, 0.01)
    assert train.regularizer_weights(train.TrainConfig()) == (0.0, 0.0)
    assert train.regularizer_weights(train.TrainConfig(strategy="mcmc", opacity_reg=0.0)) == (0.0, 0.01)
    with pytest.raises(Exception, match="--strategy"):
        train.TrainConfig(strategy="annealing").validate()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_relocation_matches_gsplat_kernel():
    from gsplat.relocation import compute_relocation
    from gsplat.strategy import MCMCStrategy

    binoms = MCMCStrategy().initialize_state()["binoms"].cuda()
    g = torch.Generator().manual_seed(0)
    opacities = torch.rand(1000, generator=g) * 0.98 + 0.01
    scales = torch.rand(1000, 3, generator=g) + 0.01
    copies = torch.randint(1, 20, (1000,), generator=g)
    ours_o, ours_s = relocation(opacities, scales, copies)
    theirs_o, theirs_s = compute_relocation(opacities.cuda(), scales.cuda(), copies.cuda(), binoms)
    assert torch.allclose(ours_o, theirs_o.cpu(), rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours_s, theirs_s.cpu(), rtol=1e-3, atol=1e-6)
    assert math.isfinite(ours_s.sum().item())


def test_mcmc_resume_matches_uninterrupted_run(tmp_path):
    """Relocation draws from torch's generator, which the checkpoint carries: a resumed run ends identical."""
    from reconstruct.checkpoint import checkpoint_path, read_checkpoint
    from test_train import RESUME_CONFIG, assert_same_splats

    capture = make_capture(tmp_path / "capture")
    config = replace(RESUME_CONFIG, strategy="mcmc", max_gaussians=330)
    reference = train.run(config, capture, tmp_path / "reference")

    def interrupt(state):
        if state.step == 25:  # between the refinements at steps 20 and 30
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.run(config, capture, tmp_path / "scene", on_step=interrupt)
    assert read_checkpoint(checkpoint_path(tmp_path / ".scene.partial"))["step"] == 25
    train.run(config, capture, tmp_path / "scene", resume=True)
    assert_same_splats(reference, tmp_path / "scene")
