"""orbit4d stage: generate (see DESIGN.md)."""
