"""robustlab."""
