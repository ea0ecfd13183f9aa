"""orbit4d stage: reconstruct (see DESIGN.md): Gaussian splats, their rasterizer, training, metrics, splat files.

The stage itself is ``reconstruct.train.run(TrainConfig, capture_dir, out_dir) -> Path``; the shared type is
``reconstruct.Splats``.
"""

from reconstruct.ply import read_ply, write_ply, write_splat
from reconstruct.splats import Splats

__all__ = ["Splats", "read_ply", "write_ply", "write_splat"]
