"""Analysis of models: cost per bit-width (profile.py)."""
