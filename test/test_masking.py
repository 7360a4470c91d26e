"""Masking (ssl3d_ros.training.masking): patch sampling at an exact ratio, whole-patch masks, jittered
masked voxels."""
from __future__ import annotations

import torch

from ssl3d_ros.training import masking


def test_sample_patches_exact_ratio_and_scores():
    batch = torch.tensor([0] * 10 + [1] * 20)
    g = torch.Generator().manual_seed(0)
    picked = masking.sample_patches(batch, 0.3, g)
    assert int(picked[batch == 0].sum()) == 3 and int(picked[batch == 1].sum()) == 6
    # with strongly peaked scores and low temperature the highest-scoring patches are chosen
    scores = torch.arange(30, dtype=torch.float32)
    picked = masking.sample_patches(batch, 0.3, g, scores=scores, temperature=0.01)
    assert picked[7:10].all() and picked[24:30].all() and int(picked.sum()) == 9
    # a scan with a single patch keeps it visible
    assert not masking.sample_patches(torch.tensor([0]), 0.9, g).any()


def test_patch_mask_masks_whole_patches():
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(2000, 3) * 10
    batch = (torch.arange(2000) >= 1000).long()
    mask, patches, patch_masked = masking.patch_mask(pos, batch, 2.0, 0.5, g)
    # every voxel of a patch shares its fate, and patches never straddle scans
    assert torch.equal(mask, patch_masked[patches.of_voxel])
    assert torch.equal(patches.batch[patches.of_voxel], batch)
    cells = torch.floor((pos - patches.offset) / 2.0).long()
    assert torch.equal(cells, patches.cell[patches.of_voxel])
    assert 0.3 < mask.float().mean() < 0.7


def test_jitter_masked_coords_keeps_visible_voxels():
    coords = torch.cat([torch.zeros(500, 1, dtype=torch.int32), torch.randint(0, 30, (500, 3), dtype=torch.int32)], 1)
    coords = torch.unique(coords, dim=0)
    masked = torch.rand(len(coords)) < 0.5
    moved, kept = masking.jitter_masked_coords(coords, masked, 2.0, torch.Generator().manual_seed(0))
    assert kept[~masked].all()
    assert torch.equal(moved[~masked], coords[~masked])
    assert not torch.equal(moved[masked], coords[masked])
    assert len(torch.unique(moved[kept], dim=0)) == int(kept.sum())  # no duplicate voxels remain
