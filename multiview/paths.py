"""Paths written inside input files stay inside the input's folder, unless the user says otherwise.

A ``transforms.json`` names its images (``file_path``), masks, depth maps and point cloud; a COLMAP model names its
images; a glTF names its buffers and textures; an OBJ its material libraries and their texture maps. Each is a path
relative to the file's folder, and a hostile or careless file can make it leave that folder (``../../etc/passwd``,
an absolute path, a link that points elsewhere). Every reader resolves such names through ``inside_folder``, which
refuses one that leaves unless ``allow_outside`` (``--allow-outside-paths``): nothing outside the input's folder is
opened, and nothing is copied into an output, without the user's say-so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from multiview.errors import InputError

ALLOW_OPTION = "--allow-outside-paths"
MAX_NAME_BYTES = 4096  # Linux's PATH_MAX: a longer name cannot be opened (ENAMETOOLONG), whatever it says
_HINT = f"pass {ALLOW_OPTION} to read it where it is"


def inside_folder(base: Path, name: object, source: Path, what: str = "file_path", allow_outside: bool = False,
                  hint: str = _HINT, within: Path | None = None) -> Path:  # fmt: skip
    """``name``, as written in ``source``, resolved against the folder ``base``: absolute and normalised.

    InputError naming ``source``, ``what`` (the key or role of the entry) and ``name`` when ``name`` is not a
    usable file name (``check_name``) or, unless ``allow_outside``, when it leads outside ``within`` (default
    ``base``): an absolute path elsewhere, ``..`` climbing out, or a link inside it that points out of it. ``hint``:
    what the user can do to read such a file anyway (the end of the message).
    """
    check_name(name, source, what)
    path = Path(os.path.normpath(Path(base).absolute() / name))  # an absolute name replaces base here
    if allow_outside:
        return path
    base = Path(os.path.normpath(Path(within if within is not None else base).absolute()))
    if not is_within(path, base):
        raise InputError(f"{source}: {what} {name!r} leads outside {base}: copy the file into that folder and name "
                         f"it relative to it, or {hint}")  # fmt: skip
    real, real_base = Path(os.path.realpath(path)), Path(os.path.realpath(base))
    if not is_within(real, real_base):
        raise InputError(f"{source}: {what} {name!r} is a link to {real}, outside {base}: copy the file into that "
                         f"folder, or {hint}")  # fmt: skip
    return path


def check_relative(name: object, source: Path, what: str = "file_path", allow_outside: bool = False,
                   hint: str = _HINT) -> str:  # fmt: skip
    """``name`` when it is a usable file name that stays below the folder it is relative to (not absolute, no
    ``..`` climbing out; the lexical half of ``inside_folder``, for names whose folder is not known yet)."""
    check_name(name, source, what)
    normal = os.path.normpath(name)
    if not allow_outside and (os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep)):
        raise InputError(f"{source}: {what} {name!r} leads outside its folder: name the file relative to the folder "
                         f"and inside it, or {hint}")  # fmt: skip
    return name


def check_name(name: object, source: Path, what: str = "file_path") -> str:
    """``name`` when it is a non-empty string the system can open (no NUL byte, not beyond PATH_MAX); InputError
    naming ``source`` and ``what`` otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{source}: {what} {name!r} is not a file name: fix the file")
    if "\0" in name or len(os.fsencode(name)) > MAX_NAME_BYTES:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InputError(f"{source}: {what} {shown!r} is not a usable file name (a NUL byte, or too long): fix the "
                         "file")  # fmt: skip
    return name


def destination_names(paths: Sequence[Path], root: Path) -> list[Path]:
    """Relative names for copies of ``paths`` gathered in one folder: a path under ``root`` keeps its name relative
    to ``root``, any other (read from outside, as allowed) its file name, made unique (``photo_1.jpg``, ...)."""
    root = Path(os.path.normpath(Path(root).absolute()))
    names: list[Path | None] = [Path(p).relative_to(root) if is_within(Path(p), root) else None for p in paths]
    taken = {name for name in names if name is not None}
    for index, path in enumerate(paths):
        if names[index] is None:
            stem, suffix, count = Path(path).stem, Path(path).suffix, 0
            name = Path(Path(path).name)
            while name in taken:
                count += 1
                name = Path(f"{stem}_{count}{suffix}")
            names[index] = name
            taken.add(name)
    return names  # type: ignore[return-value]


def is_within(path: Path, folder: Path) -> bool:
    """Whether the normalised absolute ``path`` is ``folder`` or lies under it (lexically: links are not followed)."""
    return path == folder or folder in path.parents


def exists(path: Path) -> bool:
    """``path.is_file()``, False instead of an error for names the system cannot look up (too long, say)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False
