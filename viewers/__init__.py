"""orbit4d stage: viewers (see DESIGN.md)."""
