"""Writing outputs without losing what is already there: temporary name first, then rename."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from multiview.errors import OutputExistsError


def checked_out_dir(out_dir: Path, inputs: Iterable[Path] = ()) -> Path:
    """``out_dir`` made absolute, once it is known that replacing it cannot destroy one of ``inputs`` (it is none of
    them and holds none of them) and that no file stands where it or a folder above it would be.
    OutputExistsError naming both otherwise."""
    out_dir = Path(out_dir).absolute()
    resolved = out_dir.resolve()
    for source in inputs:
        source_resolved = Path(source).resolve()
        if resolved == source_resolved or resolved in source_resolved.parents:
            raise OutputExistsError(f"--out {out_dir} would replace the input {source}: choose an --out outside it")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder: choose another --out")
    blocking = next((folder for folder in out_dir.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise OutputExistsError(f"--out {out_dir}: {blocking} is a file, not a folder: choose another --out")
    return out_dir


def writable_out_dir(out_dir: Path, overwrite: bool = False, inputs: Iterable[Path] = ()) -> Path:
    """``checked_out_dir``, and OutputExistsError for an existing, non-empty ``out_dir`` unless ``overwrite``: what
    ``staged_dir`` checks first, for commands to check before long work."""
    out_dir = checked_out_dir(out_dir, inputs)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists and is not empty: pass --overwrite or choose another --out")
    return out_dir


@contextmanager
def staged_dir(out_dir: Path, overwrite: bool = False, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty sibling folder of ``out_dir``; on success it replaces ``out_dir`` in one rename.

    On failure the staging folder is removed and ``out_dir`` is untouched. Refuses an existing,
    non-empty ``out_dir`` unless ``overwrite``, and an ``out_dir`` that is or holds one of ``inputs``
    (``checked_out_dir``).
    """
    out_dir = writable_out_dir(out_dir, overwrite, inputs)
    created = [folder for folder in reversed(out_dir.parents) if not folder.exists()]  # outermost first
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):  # the folders made for out_dir, where nothing else came to be written
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    replace_dir(staging, out_dir)
    os.chmod(out_dir, 0o755)


def replace_dir(staging: Path, target: Path) -> None:
    """Move the folder ``staging`` to ``target``, replacing what is there (two renames, the old copy removed after)."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / "old")
        os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename). NaN and infinities, which Python's
    json would write as tokens no strict reader accepts, are written as null: a value that was not measured."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _finite_or_null(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
