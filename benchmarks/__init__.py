"""Benchmarks of recurrax against its anchors (flax, equinox, haiku, PyTorch); see run.py."""
