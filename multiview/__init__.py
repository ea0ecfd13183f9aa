"""Cameras and their conventions, video decoding and frame selection, SfM with pycolmap, the capture format."""

from multiview.camera import Camera
from multiview.errors import InputError, Orbit4dError, OutputExistsError, SfmError

__all__ = ["Camera", "InputError", "Orbit4dError", "OutputExistsError", "SfmError"]
