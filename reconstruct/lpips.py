"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), AlexNet, v0.1.

The network is the one of the ``lpips`` package (``lpips.LPIPS(net='alex', version='0.1')``): torchvision's AlexNet
``features`` cut after each of its five ReLUs, each layer's activations normalised to unit length over channels,
squared differences weighted per channel by a 1 x 1 convolution (the learned LPIPS head), averaged over pixels and
summed over layers. Inputs are in [-1, 1], shifted and scaled per channel first (the v0.1 ``ScalingLayer``).

orbit4d ships no weights and downloads nothing. ``load_lpips`` reads a safetensors file whose keys are exactly those
of ``lpips.LPIPS(net='alex').state_dict()``; make it once, where the ``lpips`` package is installed (it fetches
torchvision's ImageNet AlexNet itself)::

    import lpips, safetensors.torch
    m = lpips.LPIPS(net='alex')
    safetensors.torch.save_model(m, 'lpips_alex.safetensors')

``save_model`` rather than ``save_file(m.state_dict(), ...)``: the package registers its five heads twice, as
``lin{k}`` and again in the ``ModuleList`` ``lins``, so its state_dict holds ``lin{k}.model.1.weight`` and
``lins.{k}.model.1.weight`` sharing memory, which ``save_file`` refuses; ``save_model`` keeps one name of each pair.
This module mirrors that layout (its state_dict has both names) and accepts a file holding either name or both.

The file is found at the path given, else at ``$ORBIT4D_LPIPS_WEIGHTS``, else at
``~/.cache/orbit4d/lpips_alex.safetensors``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from multiview.weights import WeightsError, read_safetensors, state_dict_problems

ENV_VAR = "ORBIT4D_LPIPS_WEIGHTS"
DEFAULT_PATH = Path("~/.cache/orbit4d/lpips_alex.safetensors")
CHANNELS = (64, 192, 384, 256, 256)  # AlexNet activations compared, one LPIPS head each
MIN_SIZE = 31  # smaller images vanish in AlexNet's second max-pool

_LOADED: dict[Path, tuple[tuple[int, int], LPIPS]] = {}


class LpipsWeightsError(WeightsError):
    """An LPIPS weights file that cannot be used: a pickle, unreadable, or not the AlexNet LPIPS layout."""


class _ScalingLayer(nn.Module):
    """v0.1 input normalisation: (x - shift) / scale per channel; both are buffers, so they are in the state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class _AlexNetSlices(nn.Module):
    """torchvision AlexNet ``features[0:12]`` as five slices ending at each ReLU; layers keep their index there."""

    BOUNDS = (0, 2, 5, 8, 10, 12)

    def __init__(self) -> None:
        super().__init__()
        features = [
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        ]  # fmt: skip
        for k, (start, stop) in enumerate(zip(self.BOUNDS[:-1], self.BOUNDS[1:]), start=1):
            layers = OrderedDict((str(i), features[i]) for i in range(start, stop))
            self.add_module(f"slice{k}", nn.Sequential(layers))

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for k in range(1, len(self.BOUNDS)):
            x = getattr(self, f"slice{k}")(x)
            outputs.append(x)
        return outputs


class _Head(nn.Module):
    """One LPIPS head: dropout (inert in eval mode; kept so the weight is ``model.1``) and a 1 x 1 conv, no bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance, AlexNet v0.1, in eval mode with frozen parameters; state_dict keys as the ``lpips`` package.

    >>> net = LPIPS()
    >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
    >>> float(net(x, x))
    0.0
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _AlexNetSlices()
        heads = [_Head(c) for c in CHANNELS]
        for k, head in enumerate(heads):
            self.add_module(f"lin{k}", head)
        self.lins = nn.ModuleList(heads)  # the same heads again, as the package registers them (keys lins.{k}.*)
        self.requires_grad_(False)
        self.eval()

    def forward(
        self,
        image: Tensor,  # [N, 3, H, W] in [-1, 1]
        target: Tensor,  # [N, 3, H, W] in [-1, 1]
    ) -> Tensor:  # [N]
        if image.shape != target.shape or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"LPIPS compares [N, 3, H, W] images of one shape, got {tuple(image.shape)} and "
                             f"{tuple(target.shape)}")  # fmt: skip
        if min(image.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE} x {MIN_SIZE} pixels, got "
                             f"{image.shape[-1]} x {image.shape[-2]}")  # fmt: skip
        # two passes, not one batch of 2N: identical images then give features that are bit for bit equal
        features = self.net(self.scaling_layer(image))
        target_features = self.net(self.scaling_layer(target))
        distance = image.new_zeros(image.shape[0])
        for head, a, b in zip(self.lins, features, target_features):
            diff = (_unit_channels(a) - _unit_channels(b)) ** 2
            distance = distance + head(diff).mean(dim=(1, 2, 3))
        return distance


def _unit_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Each pixel's feature vector divided by its length (+ eps, as the package)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def weights_path(path: str | os.PathLike | None = None) -> Path:
    """Where LPIPS weights are looked for: ``path``, else ``$ORBIT4D_LPIPS_WEIGHTS``, else the default cache file."""
    if path is None:
        path = os.environ.get(ENV_VAR) or DEFAULT_PATH
    return Path(path).expanduser()


def load_lpips(path: str | os.PathLike | None = None) -> LPIPS | None:
    """The LPIPS network with the weights of ``weights_path(path)`` (on the CPU), or None when there is no such file.

    Loaded once per file (again when the file changes). Raises ``LpipsWeightsError`` for a pickle, an unreadable
    file, or keys that do not fit.
    """
    source = weights_path(path)
    if not source.is_file():
        return None
    source = source.resolve()
    stat = source.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _LOADED.get(source)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    model = LPIPS()
    model.load_state_dict(_read_state(source, model))
    _LOADED[source] = (stamp, model)
    return model


def _read_state(source: Path, model: LPIPS) -> dict[str, Tensor]:
    state = read_safetensors(source, "convert the LPIPS weights again (see reconstruct/lpips.py)", LpipsWeightsError)
    for k in range(len(CHANNELS)):  # the package's heads have two names; a file may hold either or both
        name, alias = f"lin{k}.model.1.weight", f"lins.{k}.model.1.weight"
        if name in state and alias in state and not torch.equal(state[name], state[alias]):
            raise LpipsWeightsError(f"{source}: {name} and {alias} differ, but they are one head in LPIPS")
        if name in state or alias in state:
            state.setdefault(name, state.get(alias))
            state.setdefault(alias, state[name])
    problems = state_dict_problems(model.state_dict(), state, owner="LPIPS")
    if problems:
        raise LpipsWeightsError(f"{source} does not hold the AlexNet LPIPS weights ({'; '.join(problems)}): convert "
                                "them from lpips.LPIPS(net='alex') (see reconstruct/lpips.py)")  # fmt: skip
    return state
