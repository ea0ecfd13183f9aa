"""reconstruct.lpips: the state_dict layout of the ``lpips`` package, strict and pickle-free loading, the metric's
basic properties on seeded random weights, and LPIPS in metrics.json once weights are present."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file, save_model

from reconstruct import metrics as M
from reconstruct import train
from reconstruct.lpips import ENV_VAR, LPIPS, LpipsWeightsError, load_lpips

# lpips.LPIPS(net='alex', version='0.1').state_dict() of the lpips package (richzhang/PerceptualSimilarity, v0.1.4):
# ScalingLayer buffers, AlexNet features in five slices that keep torchvision's layer indices, and the five heads
# Sequential(Dropout, Conv2d) registered both as lin{k} and in the ModuleList lins.
EXPECTED_KEYS = [
    "scaling_layer.shift", "scaling_layer.scale",
    "net.slice1.0.weight", "net.slice1.0.bias",
    "net.slice2.3.weight", "net.slice2.3.bias",
    "net.slice3.6.weight", "net.slice3.6.bias",
    "net.slice4.8.weight", "net.slice4.8.bias",
    "net.slice5.10.weight", "net.slice5.10.bias",
    "lin0.model.1.weight", "lin1.model.1.weight", "lin2.model.1.weight", "lin3.model.1.weight", "lin4.model.1.weight",
    "lins.0.model.1.weight", "lins.1.model.1.weight", "lins.2.model.1.weight", "lins.3.model.1.weight",
    "lins.4.model.1.weight",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def random_lpips(seed: int = 0) -> LPIPS:
    """Seeded random weights; heads non-negative, as trained LPIPS heads are (the package clamps them)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LPIPS()
    for head in model.lins:
        head.model[1].weight.abs_()
    return model


def state_of(model: LPIPS) -> dict[str, torch.Tensor]:
    """Every key of the state_dict in its own memory (save_file refuses the two names of one head otherwise)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """Random LPIPS weights written as the documented conversion script writes them, found through the env var."""
    path = tmp_path / "lpips_alex.safetensors"
    save_model(random_lpips(), str(path))
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent.safetensors"))


def smooth_image(size: int = 64) -> torch.Tensor:
    """[size, size, 3] gradients and a disc, in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.1).float()
    return torch.stack([x, y, 0.3 + 0.5 * disc], dim=-1)


def noisy(image: torch.Tensor, strength: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    return (image + strength * noise).clamp(0, 1)


# --- layout ----------------------------------------------------------------------------------------------------


def test_state_dict_keys_are_those_of_the_lpips_package():
    state = LPIPS().state_dict()
    assert list(state) == EXPECTED_KEYS
    assert state["net.slice1.0.weight"].shape == (64, 3, 11, 11)
    assert state["lin2.model.1.weight"].shape == (1, 384, 1, 1)
    assert torch.allclose(state["scaling_layer.shift"].flatten(), torch.tensor([-0.030, -0.088, -0.188]))
    assert torch.allclose(state["scaling_layer.scale"].flatten(), torch.tensor([0.458, 0.448, 0.450]))


# --- the metric ------------------------------------------------------------------------------------------------


def test_identical_images_give_exactly_zero(weights):
    image = smooth_image()
    assert M.lpips(image, image.clone()) == 0.0


def test_distance_grows_with_noise(weights):
    image = smooth_image()
    distances = [M.lpips(noisy(image, s), image) for s in (0.02, 0.1, 0.3)]
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_symmetric(weights):
    image, other = smooth_image(), noisy(smooth_image(), 0.1)
    assert M.lpips(image, other) == M.lpips(other, image)


def test_batch_is_the_mean_of_its_images(weights):
    a, b = smooth_image(), noisy(smooth_image(), 0.2)
    batch = M.lpips(torch.stack([a, b]), torch.stack([b, b]))
    assert batch == pytest.approx(M.lpips(a, b) / 2, rel=1e-5)


def test_too_small_images_have_no_lpips(weights):
    """AlexNet's pooling needs 31 px: smaller images get null rather than a crash at the end of training."""
    image = smooth_image(30)
    assert M.lpips(image, image + 0.1) is None


# --- loading ---------------------------------------------------------------------------------------------------


def test_loads_the_full_state_dict_or_either_name_of_the_heads(tmp_path, weights):
    reference = load_lpips()
    full, short = tmp_path / "full.safetensors", tmp_path / "lins_only.safetensors"
    state = state_of(random_lpips())
    save_file(state, str(full))
    save_file({k: v for k, v in state.items() if not k.startswith("lin") or k.startswith("lins.")}, str(short))
    x, y = torch.rand(1, 3, 40, 40) * 2 - 1, torch.rand(1, 3, 40, 40) * 2 - 1
    expected = reference(x, y)
    assert torch.equal(load_lpips(full)(x, y), expected)
    assert torch.equal(load_lpips(short)(x, y), expected)


def test_missing_key_is_named(tmp_path):
    path = tmp_path / "lpips.safetensors"
    state = state_of(random_lpips())
    del state["net.slice3.6.bias"]
    save_file(state, str(path))
    with pytest.raises(LpipsWeightsError, match=r"1 missing: net\.slice3\.6\.bias") as error:
        load_lpips(path)
    assert str(path.resolve()) in str(error.value)


def test_wrong_shape_is_named(tmp_path):
    path = tmp_path / "lpips.safetensors"
    state = state_of(random_lpips())
    state["lin1.model.1.weight"], state["lins.1.model.1.weight"] = torch.zeros(1, 64, 1, 1), torch.zeros(1, 64, 1, 1)
    save_file(state, str(path))
    with pytest.raises(LpipsWeightsError, match=r"wrong shape: lin1\.model\.1\.weight"):
        load_lpips(path)


@pytest.mark.parametrize("name", ["alex.pth", "lpips_alex.safetensors"])
def test_pickles_are_refused(tmp_path, name):
    path = tmp_path / name
    torch.save(state_of(random_lpips()), path)
    with pytest.raises(LpipsWeightsError, match="pickle"):
        load_lpips(path)


def test_no_weights_means_no_lpips(no_weights):
    image = smooth_image()
    assert load_lpips() is None
    assert M.lpips(image, noisy(image, 0.1)) is None
    assert M.lpips_status() == M.LPIPS_UNAVAILABLE
    assert ENV_VAR in M.LPIPS_UNAVAILABLE and "save_model" in M.LPIPS_UNAVAILABLE


def test_available_weights_have_no_reason(weights):
    assert M.lpips_status() is None


# --- in the reconstruct stage ----------------------------------------------------------------------------------


def test_train_reports_lpips_when_weights_are_present(weights, tmp_path):
    from test_train import make_capture

    capture = make_capture(tmp_path / "capture", num_views=6)
    config = train.TrainConfig(steps=20, random_init_points=100, psnr_samples=0, turntable_frames=0,
                               checkpoint_every=0, device="cpu")  # fmt: skip
    out = train.run(config, capture, tmp_path / "scene")
    report = json.loads((out / "metrics.json").read_text())
    per_view = [view["lpips"] for view in report["per_view"]]
    assert report["lpips_reason"] is None and isinstance(report["lpips"], float) and report["lpips"] > 0
    assert all(isinstance(value, float) for value in per_view)
    assert report["lpips"] == pytest.approx(sum(per_view) / len(per_view))


class OneClip:
    """The slice of ``generate.dataset``'s clips that ``evaluate`` reads: one 4-frame orbit at 32 px."""

    def __init__(self) -> None:
        self.frames = smooth_image(32).permute(2, 0, 1).expand(4, 3, 32, 32)
        self.orbit = SimpleNamespace(num_frames=4, input_index=0, azimuths_deg=torch.tensor([0.0, 90.0, 180.0, 270.0]))
        self.entries = [{"path": "clip_0", "asset": "duck"}]

    def __len__(self) -> int:
        return 1

    def clip(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(input_view=self.frames[0], orbit=self.orbit, frames=self.frames, masks=None)


def test_eval_generator_reports_lpips_when_weights_are_present(weights):
    from orbit4d.eval_generator import evaluate

    clips = OneClip()
    generated = torch.stack([noisy(f.permute(1, 2, 0), 0.1, seed=k).permute(2, 0, 1)
                             for k, f in enumerate(clips.frames)])  # fmt: skip
    report, _ = evaluate(lambda *args, **kwargs: generated, clips, steps=1)
    expected = [M.lpips(generated[k].permute(1, 2, 0), clips.frames[k].permute(1, 2, 0)) for k in (1, 2, 3)]
    assert report["lpips_reason"] is None
    assert report["lpips"] == pytest.approx(sum(expected) / 3, rel=1e-5)
