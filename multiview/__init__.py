"""Cameras and their conventions, video decoding and frame selection, SfM with pycolmap, the capture format."""

# PIL first: pycolmap 4.2.1 exports its own zlib symbols, and a PNG save after importing pycolmap
# first aborts the process (free(): invalid pointer in deflateEnd).
import PIL.Image  # noqa: F401  (import order matters, see above)

from multiview.camera import Camera
from multiview.errors import InputError, Orbit4dError, OutputExistsError, SfmError

__all__ = ["Camera", "InputError", "Orbit4dError", "OutputExistsError", "SfmError"]
