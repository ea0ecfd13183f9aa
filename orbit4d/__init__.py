"""orbit4d: one photo, a video or synchronized videos into 3D and 4D Gaussian-splat scenes."""

__version__ = "0.1.0"
