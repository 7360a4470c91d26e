"""Views and augmentations (ssl3d_ros.training.views): crops, beam drop, transforms, voxel origins."""
from __future__ import annotations

import numpy as np
import torch

from ssl3d_ros.preprocessing import PreprocessConfig
from ssl3d_ros.training.views import AugmentConfig, ViewGroupConfig, ViewMaker, crop, density_keep, transform

from builders import ground_and_boxes


def test_augmentations():
    scan = ground_and_boxes()
    rng = np.random.default_rng(0)
    idx = crop(scan.points, scan.points[0], ViewGroupConfig(crop="ball", crop_points=500), rng)
    d = np.linalg.norm(scan.points - scan.points[0], axis=1)
    assert len(idx) == 500 and d[idx].max() <= np.sort(d)[499] + 1e-6
    box = crop(scan.points, np.zeros(3, np.float32), ViewGroupConfig(crop="box", crop_points=10**6, box_size=4.0), rng)
    assert np.all(np.abs(scan.points[box, :2]) <= 2.0)
    keep = density_keep(scan, AugmentConfig(beam_drop=1.0, beam_keep=(0.5, 0.5)), rng)
    rings = np.asarray(scan.fields["ring"])
    kept_rings = set(rings[keep].tolist())
    assert 0 < len(kept_rings) < 16 and not (set(rings[~keep].tolist()) & kept_rings)  # whole beams dropped
    aug = AugmentConfig(rotate_z=180, scale=(2.0, 2.0), flip_x=0.0, jitter_sigma=0.0, intensity_sigma=0.0, intensity_scale=(1, 1))
    out = transform(scan, aug, rng)
    # rotation about z and scaling by 2: z doubles, horizontal radii double
    assert np.allclose(out.points[:, 2], 2 * scan.points[:, 2], atol=1e-5)
    assert np.allclose(np.hypot(*out.points[:, :2].T), 2 * np.hypot(*scan.points[:, :2].T), atol=1e-4)
    assert transform(scan, AugmentConfig(intensity_sigma=0.1), rng).fields["intensity"] is scan.fields["intensity"]  # no scale: untouched
    noisy = transform(scan, AugmentConfig(intensity_sigma=0.1), rng, intensity_full_scale=1.0)
    assert not np.allclose(noisy.fields["intensity"], scan.fields["intensity"])
    assert noisy.fields["intensity"].min() >= 0 and noisy.fields["intensity"].max() <= 1.0


def test_views_remember_original_coordinates():
    scan = ground_and_boxes()
    maker = ViewMaker({"a": ViewGroupConfig(count=2, crop_points=1500)}, PreprocessConfig(voxel_size=0.2))
    views = maker(scan, np.random.default_rng(0))["a"]
    for view in views:
        # each voxel's origin is a place of the original scan (mean of its points, within one voxel of one)
        d = torch.cdist(view.origin, torch.from_numpy(scan.points)).min(dim=1).values
        assert float(d.max()) < 0.2 * 1.2 * 2
        # and the augmented coordinates are not the originals
    assert not torch.allclose(views[0].coord.mean(0), views[0].origin.mean(0), atol=1e-3)
