"""All device script sections after ``environment``, in the order run.py runs them."""
from __future__ import annotations

from sections_model import SECTIONS as MODEL
from sections_node import SECTIONS as NODE
from sections_training import SECTIONS as TRAINING

SECTIONS = {**MODEL, **NODE, **TRAINING}
