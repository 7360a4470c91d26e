"""The class-id convention of everything that predicts or scores per-point classes.

Predicted class ids are uint8 (the node's ``class_id`` field, the heads' outputs); ``NO_CLASS`` marks a
point without a prediction (dropped by preprocessing: NaN, out of range, cropped, over the voxel
budget), kept in place rather than removed. Ground-truth class indices for scoring use ``IGNORE``
(:mod:`.metrics`) instead; a ``NO_CLASS`` prediction on a labelled point counts as a miss.
"""
from __future__ import annotations

NO_CLASS = 255  # uint8 class id of points without a prediction; real classes are 0 .. NO_CLASS - 1

__all__ = ["NO_CLASS"]
