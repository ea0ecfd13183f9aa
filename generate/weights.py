"""Model weights on disk: safetensors only, every key accounted for.

A model folder is diffusers' layout: ``config.json`` (the constructor's arguments) beside
``diffusion_pytorch_model.safetensors``. ``load_model`` builds the class from the config and loads the tensors
strictly; a file meant for another architecture fails with the first missing, unexpected and mis-shaped keys named.
Pickle-based files are refused without being opened by pickle (``multiview.weights``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from multiview.weights import PICKLE_SUFFIXES, WeightsError, read_safetensors, refuse_pickle, state_dict_problems

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """WeightsError naming the first missing, unexpected and mis-shaped keys when ``state`` does not fit ``model``,
    or the first tensor ``check_tensor`` refuses."""
    expected = model.state_dict()
    problems = state_dict_problems(expected, state)
    if problems:
        raise WeightsError(f"{source} does not fit {type(model).__name__} ({'; '.join(problems)}): "
                           "these weights are for another architecture or size; check the model's config.json")
    for key, tensor in state.items():
        check_tensor(tensor, expected[key], key, source)


def check_tensor(tensor: torch.Tensor, expected: torch.Tensor, key: str, source: Path) -> None:
    """WeightsError naming ``key`` and ``source`` for a tensor ``load_state_dict`` would take without a word but that
    cannot be the weight meant for ``expected``: integers or booleans where floats belong (load_state_dict casts
    them), or NaN / Inf values (every output would be NaN)."""
    if expected.is_floating_point() and not tensor.is_floating_point():
        raise WeightsError(f"{source}: tensor {key} is {str(tensor.dtype).removeprefix('torch.')}, not a floating "
                           "type: these are not float weights (quantized or damaged); use a float16, bfloat16 or "
                           "float32 file")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise WeightsError(f"{source}: tensor {key} holds NaN or Inf values: the file is damaged (or saved from a "
                           "diverged run); download or train it again")


def save_model(model, folder: Path, dtype: torch.dtype | None = None) -> Path:
    """``config.json`` + ``diffusion_pytorch_model.safetensors`` in ``folder`` (a diffusers ``ModelMixin``); floating
    tensors stored in ``dtype`` when given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config["_class_name"] = type(model).__name__
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=list) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    tmp = folder / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_NAME)
    return folder


def load_model(cls, folder: Path, dtype: torch.dtype = torch.float32):
    """An instance of ``cls`` built from ``folder/config.json`` with the weights of its safetensors file."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        files = folder.glob("*") if folder.is_dir() else []
        stray = sorted(p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
        if stray:
            refuse_pickle(folder / stray[0])
        raise WeightsError(f"{folder} has no {CONFIG_NAME}: a model folder holds config.json and {WEIGHTS_NAME}")
    try:
        config = json.loads(config_path.read_text())
        model = cls.from_config(config)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise WeightsError(f"{config_path} does not configure a {cls.__name__} ({error})") from None
    state = read_safetensors(folder / WEIGHTS_NAME)
    check_state_dict(model, state, folder / WEIGHTS_NAME)
    model.load_state_dict(state, strict=True)
    return torch.nn.Module.to(model, dtype).eval()  # ModelMixin.to warns about fp32 modules we do not have
