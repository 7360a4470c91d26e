"""Step -> value schedules shared by the loop and the recipes (learning rate, EMA momentum, mask ratio...).

Every schedule is a pure function of the global step, so a resumed run recomputes exactly the value
an uninterrupted run had: no schedule state needs to be checkpointed.
"""
from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total`` and after)."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def linear(step: int, start_step: int, end_step: int, start: float, end: float) -> float:
    """``start`` until ``start_step``, linear to ``end`` at ``end_step``, constant after."""
    if end_step <= start_step:
        return end if step >= start_step else start
    t = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return start + t * (end - start)


def warmup_cosine(step: int, total: int, warmup: int, base: float, final: float) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup`` steps, then cosine decay to ``final`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return cosine(step - warmup, max(total - warmup, 1), base, final)


def ramp(step: int, total: int, start: float, end: float) -> float:
    """Linear over the whole run: ``start`` at step 0, ``end`` at ``total`` (mask ratios and patch sizes)."""
    return linear(step, 0, total, start, end)


__all__ = ["cosine", "linear", "warmup_cosine", "ramp"]
