"""Shortcut audit: geometric targets, ridge R², and the audit table for a real checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssl3d_ros.evaluation.geometry_targets import estimate_normals_knn, ground_height, normal_target
from ssl3d_ros.evaluation.ridge import ridge_r2


def test_normals_of_a_plane_and_a_sphere():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(-5, 5, (2000, 2)), np.full(2000, 1.5)]
    np.testing.assert_allclose(normal_target(plane), np.tile([0, 0, 1.0], (2000, 1)), atol=1e-5)
    sphere = rng.normal(size=(4000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    n = estimate_normals_knn(sphere, k=12)
    cos = np.abs((n * sphere).sum(1))  # normal axis of a sphere is radial
    assert np.median(cos) > 0.99
    # A normal field given by the scan wins over estimation (sign dropped, unit length).
    given = np.tile([0, -2.0, 0], (2000, 1))
    np.testing.assert_allclose(normal_target(plane, given), np.tile([0, 1.0, 0], (2000, 1)))
    z = np.r_[np.full(98, 3.0), np.linspace(3, 10, 100)]
    assert ground_height(np.c_[np.zeros((198, 2)), z]).min() == pytest.approx(0.0)


def test_ridge_r2_separates_decodable_from_not():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(6000, 1))
    informative = torch.tensor(np.c_[target @ rng.normal(size=(1, 8)), rng.normal(size=(6000, 24))])
    noise = torch.tensor(rng.normal(size=(6000, 32)))
    r2_good, _ = ridge_r2(informative[:4000], target[:4000], informative[4000:], target[4000:])
    r2_bad, _ = ridge_r2(noise[:4000], target[:4000], noise[4000:], target[4000:])
    assert r2_good > 0.99 and r2_bad < 0.05


def test_audit_cli_table_for_a_checkpoint(tmp_path):
    """The audit of an untrained encoder on a simulated scan: its rows, and the raw-input reference
    (whose features are xyz and height, linearly) decoding xyz and height almost perfectly."""
    pytest.importorskip("open3d")
    from ssl3d_ros.checkpoint import save_checkpoint
    from ssl3d_ros.evaluation.audit import main
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels

    pre = PreprocessConfig(voxel_size=0.15, max_range=40.0, features=("xyz", "height", "intensity"), coord_scale=20.0)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "enc.safetensors",
                           SparseEncoder(EncoderConfig.preset("nano", in_channels=feature_channels(pre))),
                           preprocessing=pre)
    out = tmp_path / "audit"
    assert main(["--checkpoint", str(ckpt), "--sim", "outdoor", "--sim-scans", "1", "--max-points-per-scan", "5000",
                 "--block-size", "6", "--out", str(out)]) == 0
    doc = json.loads((out / "audit.json").read_text())
    rows = {r["encoder"]: r for r in doc["rows"]}
    assert list(rows) == ["enc.safetensors", "random init (same architecture)", "raw input features"]
    raw = rows["raw input features"]
    assert raw["r2"]["xyz"] > 0.95 and raw["r2"]["height"] > 0.95
    assert raw["r2"]["normal"] < raw["r2"]["height"]  # normals are not a linear function of xyz
    for r in rows.values():
        assert set(r["r2"]) == {"height", "normal", "xyz", "range"}
        assert r["probe_miou"] is not None and 0.0 < r["probe_miou"] <= 1.0
        assert r["test_points"] > 200
    md = (out / "audit.md").read_text()
    assert "| encoder | R² height | R² normal | R² xyz | R² range | probe mIoU (%) | test pts |" in md
    assert md.count("\n| ") >= 4  # header + 3 rows
    # The random-init reference is a different initialisation than the (untrained) checkpoint.
    assert rows["enc.safetensors"]["r2"] != rows["random init (same architecture)"]["r2"]


def test_range_target_is_log_distance_from_the_scan_origin():
    """The range target of the audit: log(1 + |p|) from the scan frame's origin, so a point 1 m and one
    e - 1 m away differ by as much as points at 10 and 10 e m (density falls with range squared)."""
    from ssl3d_ros.evaluation.geometry_targets import sensor_range

    pts = np.array([[0.0, 0.0, 0.0], [np.e - 1, 0.0, 0.0], [0.0, 3.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(sensor_range(pts), [0.0, 1.0, np.log(6.0)], rtol=1e-6)


def test_rows_of_checkpoints_with_one_file_name_are_told_apart_by_folder():
    from ssl3d_ros.evaluation.audit import row_names

    assert row_names(["runs/a/encoder.safetensors", "runs/b/encoder.safetensors", "x/model.safetensors"]) == [
        "a/encoder.safetensors", "b/encoder.safetensors", "model.safetensors"]
