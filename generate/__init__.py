"""orbit4d stage: generate (see DESIGN.md): image -> camera-controlled orbit clip, and the recipe that trains it.

Nothing here reaches a model hub: weights load from local paths only, so the Hugging Face libraries are told to stay
offline before any of them is imported.
"""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

EMBEDDED_MODEL = Path(__file__).resolve().parent / "embedded" / "orbit-small"
"""The small orbit generator that ships with orbit4d (``MODEL_CARD.md`` beside it says how it was trained and what it
can do): ``orbit4d generate`` and ``image-to-3d`` use it when no ``--weights`` are given."""
