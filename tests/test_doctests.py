"""The examples in docstrings run and print what they say (kornia's habit: a doctest per public function)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["multiview.align", "multiview.layouts", "reconstruct.corrections", "reconstruct.lpips", "reconstruct.metrics",
           "reconstruct.rasterize"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    results = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0, f"{name} has no examples: drop it from MODULES"
    assert results.failed == 0
