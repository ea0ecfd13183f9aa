"""Writing outputs: JSON any strict reader takes, output folders that never replace an input, nothing left behind."""

from __future__ import annotations

import json
import math

import pytest

from multiview.errors import OutputExistsError
from multiview.outputs import checked_out_dir, staged_dir, write_json


def test_json_outputs_hold_null_where_a_value_was_not_finite(tmp_path):
    """Python's json writes NaN and Infinity, which browsers and jq reject: a diverged metric is written as null."""
    write_json(tmp_path / "m.json", {"psnr": math.nan, "curve": [1.5, math.inf, (2, -math.inf)], "n": 3})

    def strict(token):
        raise ValueError(f"{token} is not JSON")

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=strict) == {
        "psnr": None, "curve": [1.5, None, [2, None]], "n": 3}  # fmt: skip


def test_an_out_folder_never_replaces_an_input(tmp_path):
    photos = tmp_path / "project" / "photos"
    photos.mkdir(parents=True)
    for out in (photos, tmp_path / "project", tmp_path):
        with pytest.raises(OutputExistsError, match="would replace the input"):
            checked_out_dir(out, [photos])
    assert checked_out_dir(photos / "capture", [photos]) == photos / "capture"  # inside the input is fine
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        checked_out_dir(tmp_path / "file" / "scene")


def test_a_failed_stage_leaves_no_folders_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "kept" / "new" / "deeper" / "out") as stage:
            (stage / "half.txt").write_text("half written")
            raise RuntimeError("the stage failed")
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
    with staged_dir(tmp_path / "kept" / "new" / "out") as stage:
        (stage / "done.txt").write_text("complete")
    assert (tmp_path / "kept" / "new" / "out" / "done.txt").read_text() == "complete"
