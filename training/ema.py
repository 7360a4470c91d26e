"""Exponential-moving-average teacher shared by the recipes that distil from themselves (sonata, msm, jepa)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import schedules


class EMATeacher(nn.Module):
    """A frozen copy of ``student`` updated as ``teacher = m * teacher + (1 - m) * student``.

    Registered as a submodule of the recipe, so its weights travel in the recipe's ``state_dict``
    (training-state checkpoints) but never reach the optimizer (``requires_grad`` is off).
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        # The teacher stays in eval mode: it produces targets, never trains.
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        teacher_params = list(self.module.parameters())
        student_params = [p.detach() for p in student.parameters()]
        if len(teacher_params) != len(student_params):
            raise RuntimeError("EMA teacher and student have different parameter lists")
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
        # Buffers (e.g. normalisation statistics) follow the student exactly.
        for tb, sb in zip(self.module.buffers(), student.buffers()):
            tb.copy_(sb)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


def momentum_at(step: int, total: int, start: float, end: float = 1.0) -> float:
    """EMA momentum schedule: cosine from ``start`` to ``end`` (DINO / Sonata practice)."""
    return schedules.cosine(step, total, start, end)


__all__ = ["EMATeacher", "momentum_at"]
