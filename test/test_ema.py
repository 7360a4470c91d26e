"""The EMA teacher (ssl3d_ros.training.ema): frozen, and moving towards the student by the momentum."""
from __future__ import annotations

import torch

from ssl3d_ros.training.ema import EMATeacher


def test_ema_teacher_moves_towards_student():
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.add_(1.0)
    before = teacher.module.weight.clone()
    teacher.update(student, 0.9)
    expected = 0.9 * before + 0.1 * student.weight
    assert torch.allclose(teacher.module.weight, expected)
    teacher.update(student, 1.0)
    assert torch.allclose(teacher.module.weight, expected)
