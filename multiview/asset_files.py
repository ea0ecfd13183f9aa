"""The files a 3D asset names, checked before Blender opens them: glTF buffers and images, OBJ materials and maps.

A ``.gltf`` (or the JSON chunk of a ``.glb``) names its buffers and images by URI, an ``.obj`` its material libraries
(``mtllib``), and each ``.mtl`` its texture maps, all relative to the file that names them. Blender's importers
follow whatever they say, ``../../`` and absolute paths included. ``check_asset_references`` reads those names
(no bpy needed) and refuses, through ``multiview.paths.inside_folder``, any that leads out of the asset's folder
unless ``allow_outside``; embedded (``data:``) URIs name nothing.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from urllib.parse import unquote

from multiview.errors import InputError
from multiview.paths import exists, inside_folder

_GLB_MAGIC = b"glTF"
_JSON_CHUNK = 0x4E4F534A
_MTLLIB = re.compile(rb"^[ \t]*mtllib[ \t]+([^\r\n]*)", re.MULTILINE)
_MAP = re.compile(rb"^[ \t]*(map_\w+|bump|disp|decal|refl|norm)[ \t]+([^\r\n]*)", re.MULTILINE | re.IGNORECASE)
# Options of a texture-map statement: (words always taken, most words taken while they are numbers).
_MAP_OPTIONS = {"-blendu": (1, 1), "-blendv": (1, 1), "-boost": (1, 1), "-mm": (2, 2), "-o": (1, 3), "-s": (1, 3),
                "-t": (1, 3), "-texres": (1, 1), "-clamp": (1, 1), "-bm": (1, 1), "-imfchan": (1, 1), "-type": (1, 1),
                "-cc": (1, 1), "-colorspace": (1, 1)}  # fmt: skip


def check_asset_references(path: Path, allow_outside: bool = False) -> None:
    """InputError naming ``path`` (or its .mtl) and the entry when a file the asset names leads out of its folder
    (unless ``allow_outside``), or when a ``.glb`` / ``.gltf`` is not readable as glTF."""
    path = Path(path).absolute()
    suffix = path.suffix.lower()
    if suffix in (".gltf", ".glb"):
        _check_gltf(path, _gltf_json(path), allow_outside)
    elif suffix == ".obj":
        _check_obj(path, allow_outside)


def _gltf_json(path: Path) -> dict:
    """The glTF JSON of a ``.gltf`` file, or of a ``.glb``'s first chunk (its lengths checked against the file)."""
    try:
        with open(path, "rb") as file:
            head = file.read(20)
            if head[:4] == _GLB_MAGIC:
                data = _glb_json_chunk(path, file, head)
            elif path.suffix.lower() == ".glb":
                raise InputError(f"{path} could not be imported (not a GLB file: no 'glTF' header): re-export the model as "
                                 "glTF 2.0")  # fmt: skip
            else:
                data = head + file.read()
    except OSError as error:
        raise InputError(f"{path} is not readable ({error.strerror or error}): check the file") from None
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path} could not be imported (not glTF JSON: {error}): re-export the model as glTF 2.0") \
            from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} could not be imported (its JSON is not a glTF object): re-export the model")
    return meta


def _glb_json_chunk(path: Path, file, head: bytes) -> bytes:
    """The JSON chunk of a GLB whose first 20 bytes are ``head``, once the header's lengths fit in the file."""
    size = path.stat().st_size
    if len(head) < 20:
        raise InputError(f"{path} could not be imported (a truncated GLB of {size} bytes): re-export the model")
    (total,) = struct.unpack_from("<I", head, 8)
    length, kind = struct.unpack_from("<II", head, 12)
    if kind != _JSON_CHUNK or total > size or 20 + length > size:
        raise InputError(f"{path} could not be imported (its GLB header promises {max(total, 20 + length):,} bytes "
                         f"and a JSON chunk first, the file has {size:,}: truncated or corrupt): re-export the model")
    return file.read(length)


def _check_gltf(path: Path, meta: dict, allow_outside: bool) -> None:
    for key in ("buffers", "images"):
        entries = meta.get(key, [])
        if not isinstance(entries, list):
            raise InputError(f"{path}: '{key}' is not a list: re-export the model as glTF 2.0")
        for index, entry in enumerate(entries):
            uri = entry.get("uri") if isinstance(entry, dict) else None
            if uri is None or (isinstance(uri, str) and uri.startswith("data:")):
                continue  # embedded (a bufferView or a data URI)
            if not isinstance(uri, str):
                raise InputError(f"{path}: {key}[{index}].uri {uri!r} is not a URI: re-export the model")
            inside_folder(path.parent, unquote(uri), path, f"{key}[{index}].uri", allow_outside)


def _check_obj(path: Path, allow_outside: bool) -> None:
    for match in _MTLLIB.finditer(_read(path)):
        for name in _names(match.group(1).decode("utf-8", errors="replace")):
            library = inside_folder(path.parent, name, path, "mtllib", allow_outside)
            if exists(library):
                _check_mtl(library, path.parent, allow_outside)


def _check_mtl(path: Path, folder: Path, allow_outside: bool) -> None:
    """The texture maps of the material library ``path`` (names relative to it) stay inside the asset's ``folder``."""
    for match in _MAP.finditer(_read(path)):
        statement = match.group(1).decode("ascii", errors="replace")
        for name in _map_file_names(match.group(2).decode("utf-8", errors="replace")):
            inside_folder(path.parent, name, path, statement, allow_outside, within=folder)


def _names(text: str) -> list[str]:
    """The file names of an ``mtllib`` line: each word, and the whole line (importers differ on spaces)."""
    words = text.split()
    return list(dict.fromkeys([*words, text.strip()])) if words else []


def _map_file_names(text: str) -> list[str]:
    """The file name of a texture-map statement after its options: the rest of the line, and its last word."""
    words = text.split()
    index = 0
    while index < len(words) - 1 and words[index].lower() in _MAP_OPTIONS:
        least, most = _MAP_OPTIONS[words[index].lower()]
        index += 1 + least
        extra = 0
        while extra < most - least and index < len(words) - 1 and _is_number(words[index]):
            index, extra = index + 1, extra + 1
    rest = " ".join(words[index:])
    return list(dict.fromkeys([rest, words[-1]])) if rest else []


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{path} is not readable ({error.strerror or error}): check the file") from None
