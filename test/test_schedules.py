"""Learning-rate and momentum schedules (ssl3d_ros.training.schedules, and ema.momentum_at)."""
from __future__ import annotations

import pytest

from ssl3d_ros.training import schedules
from ssl3d_ros.training.ema import momentum_at


def test_schedules():
    assert schedules.warmup_cosine(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert schedules.warmup_cosine(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert schedules.warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    mid = schedules.warmup_cosine(55, 100, 10, 1.0, 0.0)
    assert mid == pytest.approx(0.5)
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99) and momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert schedules.ramp(50, 100, 0.3, 0.7) == pytest.approx(0.5)
    assert schedules.linear(5, 10, 20, 0.0, 1.0) == 0.0 and schedules.linear(30, 10, 20, 0.0, 1.0) == 1.0
