"""Properties of the objectives themselves: what the MAE decoder may know about masked patches,
that attention-driven masking masks the most-attended patches, and that msm's decoder targets nest."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl3d_ros.training import masking
from ssl3d_ros.training.loop import build_recipe
from ssl3d_ros.training.recipes.acl import attention_significance
from ssl3d_ros.training.recipes.base import StepInfo, encode
from ssl3d_ros.training.recipes.msm import full_hierarchy
from ssl3d_ros.training.data import DataConfig, simulated_source
from ssl3d_ros.training.voxels import VoxelBatch

from builders import tiny_config


@pytest.fixture(scope="module")
def scans():
    source = simulated_source("sim:outdoor:2", DataConfig(sim_lidar={"beams": 16, "columns": 256}))
    return [source[0], source[1]]


def views_for(recipe, scans):
    return recipe.make_views(scans, np.random.default_rng(0))


@pytest.mark.parametrize("leak", [False, True])
def test_mae_decoder_position_information(leak, scans, tmp_path):
    cfg = tiny_config("mae", tmp_path)
    cfg.recipe.leak_positions = leak
    recipe = build_recipe(cfg)
    view = views_for(recipe, scans)["scene"][0]
    voxel_mask, patches, patch_masked = masking.patch_mask(view.coord, view.batch, 0.8, 0.6, torch.Generator().manual_seed(0))
    rows, region_of, region_batch, query_pos, size = recipe.regions(view, patches, patch_masked, voxel_mask)
    # move every masked voxel by a small amount inside its patch
    cell_lo = patches.cell[patches.of_voxel].float() * patches.size + patches.offset
    moved_coord = view.coord.clone()
    moved_coord[voxel_mask] = cell_lo[voxel_mask] + 0.1 * patches.size
    moved = VoxelBatch(view.coords, moved_coord, view.origin, view.feat, view.batch_size)
    _, _, _, moved_query, _ = recipe.regions(moved, patches, patch_masked, voxel_mask)
    if leak:
        # the leaky baseline hands the decoder the exact centroid of the hidden points
        assert size == pytest.approx(0.8)
        assert not torch.allclose(moved_query, query_pos)
        centroid = torch.zeros_like(query_pos).index_add_(0, region_of, view.coord[rows]) / torch.bincount(region_of).unsqueeze(1)
        assert torch.allclose(query_pos, centroid, atol=1e-5)
    else:
        # mitigated: the query only knows the coarse block, not where the hidden points lie in it
        assert size == pytest.approx(1.6)
        assert torch.equal(moved_query, query_pos)
        assert len(query_pos) < int(patch_masked.sum())  # several masked patches share one block query


def test_attention_driven_masking_prefers_attended_patches(scans, tmp_path):
    recipe = build_recipe(tiny_config("acl", tmp_path))
    view = views_for(recipe, scans)["scene"][0]
    with torch.no_grad():
        scores = attention_significance(encode(recipe.base.student, view.sparse(), need_attention=True), view.batch, view.batch_size)
    assert scores.std() > 0
    recipe.cfg.mask_temperature = 0.05
    step = StepInfo(0, 10, 0.99, torch.Generator().manual_seed(0))
    voxel_mask, patches, patch_masked = recipe.attention_mask(view, 0.8, 0.4, step)
    patch_scores = torch.zeros(len(patches)).index_add_(0, patches.of_voxel, scores) / torch.bincount(patches.of_voxel, minlength=len(patches))
    assert patch_scores[patch_masked].mean() > patch_scores[~patch_masked].mean() + 0.3
    random_mask, _, random_patches = masking.patch_mask(view.coord, view.batch, 0.8, 0.4, torch.Generator().manual_seed(0))
    assert not torch.equal(random_mask, voxel_mask)


def test_msm_visible_hierarchy_nests_in_full_scene(scans, tmp_path):
    recipe = build_recipe(tiny_config("msm", tmp_path))
    view = views_for(recipe, scans)["student"][0]
    mask, _, _ = masking.patch_mask(view.coord, view.batch, 0.8, 0.5, torch.Generator().manual_seed(0))
    visible = view.select(~mask)
    out = encode(recipe.student, visible.sparse())
    full, parents = full_hierarchy(view.coords, len(out.levels))
    decoded = recipe.student.decode(out.raw, targets=full, mask_token=True)
    assert [len(d) for d in decoded] == [len(c) for c in reversed(full)]
    assert len(full[0]) > len(out.levels[0])  # masked voxels are back, as tokens, in the decoder
    for k in range(len(full)):
        assert len(full[k]) == int(parents[k].max()) + 1
