"""Matching voxels of two views by position (ssl3d_ros.training.hierarchy)."""
from __future__ import annotations

import torch

from ssl3d_ros.training import hierarchy


def test_match_positions_finds_same_places():
    pos = torch.rand(300, 3) * 5
    batch = torch.zeros(300, dtype=torch.long)
    perm = torch.randperm(300)
    src, dst = hierarchy.match_positions(pos, batch, pos[perm], batch, 0.5)
    assert len(src) == 300
    assert torch.allclose(torch.floor(pos[src] / 0.5), torch.floor(pos[perm][dst] / 0.5))
    # different scans never match
    src, _ = hierarchy.match_positions(pos, batch, pos, batch + 1, 0.5)
    assert len(src) == 0
