"""orbit4d stage: reconstruct (see DESIGN.md)."""
