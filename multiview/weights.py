"""Tensors read from files orbit4d did not write: safetensors only, pickles refused unopened, every key accounted for.

Shared by the generator's weights (``generate.weights``, ``generate.convert``) and the LPIPS metric
(``reconstruct.lpips``). A pickle-based checkpoint (``.ckpt``, ``.pt``, ``.pth``, ``.bin``; or a zip / pickle stream
under another name) is refused by name and first bytes, never opened by pickle: unpickling runs code chosen by whoever
wrote the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from multiview.errors import InputError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
SHOWN_KEYS = 5  # keys named per kind of problem in an error message
PICKLE_ADVICE = ("convert it where you trust it, e.g. "
                 "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')")  # fmt: skip


class WeightsError(InputError):
    """A weights file that cannot be used: a pickle, unreadable, or keys that do not fit."""


def refuse_pickle(path: Path, advice: str = PICKLE_ADVICE, error: type[WeightsError] = WeightsError) -> None:
    """``error`` for a pickle-based checkpoint: by suffix, or by a zip / pickle start (a safetensors file has '{' at
    byte 8, after its header length)."""
    path = Path(path)
    with open(path, "rb") as file:
        head = file.read(9)
    looks_pickled = (head[:2] == b"PK" or head[:1] == b"\x80") and head[8:9] != b"{"
    if path.suffix.lower() in PICKLE_SUFFIXES or looks_pickled:
        raise error(f"{path} is a pickle-based checkpoint; orbit4d reads weights only from .safetensors (loading a "
                    f"pickle runs code from the file): {advice}")


def read_safetensors(path: Path, advice: str = "download or convert it again",
                     error: type[WeightsError] = WeightsError) -> dict[str, torch.Tensor]:  # fmt: skip
    """Every tensor of a .safetensors file, on the CPU; ``error`` naming the file for a missing, pickled or unreadable
    one (``advice`` says what to do about the last)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist: give the path of a .safetensors file or a model folder")
    refuse_pickle(path, error=error)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as failure:
        raise error(f"{path} is not a readable safetensors file ({failure}): {advice}") from None


def summarize_keys(groups: Iterable[tuple[str, list[str]]]) -> list[str]:
    """'3 missing: a, b, c' per non-empty group, at most ``SHOWN_KEYS`` keys named each."""
    found = []
    for label, keys in groups:
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            found.append(f"{len(keys)} {label}: {', '.join(keys[:SHOWN_KEYS])}{more}")
    return found


def state_dict_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                        owner: str = "model") -> list[str]:  # fmt: skip
    """What keeps ``state`` from loading strictly where ``expected`` (a state_dict) is: missing, unexpected and
    mis-shaped keys, summarized; empty when it fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} ({owner}: {tuple(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    return summarize_keys((("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)))
