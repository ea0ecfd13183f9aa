"""``.npy`` arrays read only once their header is known to fit in the file.

``np.load`` allocates what the header's shape promises before it reads: a 100-byte file that promises 10^10 floats
asks for 75 GB (a MemoryError, reported as the machine running out of memory). ``load_npy`` compares the promise with
the bytes the file holds first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def load_npy(path: Path) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (no pickles). ValueError saying why when the file is not a ``.npy``
    array, holds Python objects, or is shorter than its header's shape and type promise; OSError when unreadable."""
    path = Path(path)
    with open(path, "rb") as file:
        version = npy_format.read_magic(file)
        read_header = _HEADER_READERS.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        shape, _, dtype = read_header(file)
        if dtype.hasobject:
            raise ValueError("it holds Python objects, not numbers")
        promised = int(np.prod(shape, dtype=object)) * dtype.itemsize
        held = path.stat().st_size - file.tell()
        if promised > held:
            raise ValueError(f"its header promises a {dtype} array of shape {tuple(shape)} ({promised:,} bytes) but "
                             f"the file holds {held:,} bytes after it: truncated")  # fmt: skip
    return np.load(path, allow_pickle=False)
