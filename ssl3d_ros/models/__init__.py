"""Sparse 3D encoder, its two sparse-conv backends and the heads."""
