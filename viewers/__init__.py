"""orbit4d stage: viewers (see DESIGN.md): the web viewer and file exports.

- ``viewers.formats``: splat files (.ply, .splat, .spz) read and written; ``export_splats``.
- ``viewers.scene``: what a viewer shows, read from a scene folder, a 4D scene, per-frame files or a splat file.
- ``viewers.server``: the live viewer (viser) of ``orbit4d view`` and ``orbit4d train --view``.
- ``viewers.static``: the static export (``orbit4d view --export``).
- ``viewers.render``: videos along a camera path (``orbit4d render``).
"""
