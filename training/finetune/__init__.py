"""Supervised fine-tuning of a (pretrained) encoder with a segmentation head: ``ssl3d-finetune``."""
from .cli import main

__all__ = ["main"]
