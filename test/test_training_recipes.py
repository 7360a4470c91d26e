"""Every recipe trains end to end through the real loop on simulated scans and its loss goes down.

Sizes are tiny (16-beam sim LiDAR, 0.2 m voxels, nano encoder) so each run takes seconds on a CPU.
``tiny_config`` (test/builders.py) is shared with the other training tests.
"""
from __future__ import annotations

import numpy as np
import pytest

from builders import read_metrics, tiny_config


@pytest.mark.parametrize("recipe", ["sonata", "msm", "jepa", "mae", "acl"])
def test_recipe_loss_decreases(recipe, tmp_path):
    from ssl3d_ros.checkpoint import load_checkpoint
    from ssl3d_ros.training.loop import train

    steps = 24
    cfg = tiny_config(recipe, tmp_path, steps=steps, checkpoint_every=steps)
    # one scene seen again and again: the loss must fall as the model fits it
    cfg.data.sources = ["sim:outdoor:2"]
    result = train(cfg, progress=False)
    assert result.completed and result.step == steps
    rows = read_metrics(tmp_path)
    losses = np.array([r["loss"] for r in rows])
    assert len(losses) == steps and np.isfinite(losses).all()
    first, last = losses[:4].mean(), losses[-4:].mean()
    assert last < first, f"{recipe}: loss did not decrease ({first:.4f} -> {last:.4f}): {losses.round(4).tolist()}"
    final = rows[-1]
    if recipe == "sonata":
        assert final["matched"] > 0.3  # views overlap: most student voxels find their teacher voxel
        assert final["mask_ratio"] > rows[0]["mask_ratio"]  # the mask ratio rises over training
    if recipe == "jepa":
        assert final["target_std"] > 0 and "pred_std" in final  # collapse monitors are reported
        assert final["loss"] == pytest.approx(final["prediction"], rel=1e-5)  # spread_weight 0: plain L2
    if recipe == "mae":
        assert final["chamfer_position_only_m"] > 0
    if recipe == "acl":
        assert rows[0]["contrast_weight"] == 0.0 and final["contrast_weight"] == pytest.approx(0.5)
    # the exported encoder is what the node loads
    ckpt = load_checkpoint(result.encoder_path)
    assert ckpt.recipe.name == recipe and ckpt.training_data["scans_seen"] == steps * 2
    # with a novelty reference of its data (run.novelty_scans 16: both simulated scans)
    assert ckpt.novelty is not None and ckpt.novelty.frames == 2 and ckpt.novelty.sources == ["sim:outdoor:2"]


def test_jepa_spread_term_is_zero_for_spread_predictions_and_lifts_collapsed_ones():
    import torch

    from ssl3d_ros.training.recipes.jepa import spread_shortfall

    torch.manual_seed(0)
    target = torch.randn(64, 8)
    assert float(spread_shortfall(target * 1.5, target)) == 0.0
    collapsed = (target.mean(0, keepdim=True) + 0.01 * torch.randn(64, 8)).requires_grad_()
    shortfall = spread_shortfall(collapsed, target)
    assert float(shortfall) > 0.9  # targets' std ~1, predictions' ~0.01
    shortfall.backward()
    stepped = collapsed - 0.5 * collapsed.grad * collapsed.shape[0]
    assert float(spread_shortfall(stepped, target)) < float(shortfall)  # the gradient spreads them out


def test_jepa_with_spread_weight_trains_and_logs_the_term(tmp_path):
    from ssl3d_ros.training.loop import train

    cfg = tiny_config("jepa", tmp_path, steps=4, checkpoint_every=4)
    cfg.recipe.spread_weight = 1.0
    assert train(cfg, progress=False).completed
    rows = read_metrics(tmp_path)
    for row in rows:
        assert row["loss"] == pytest.approx(row["prediction"] + row["spread_shortfall"], rel=1e-4, abs=1e-6)
    assert any(row["spread_shortfall"] > 0 for row in rows)
