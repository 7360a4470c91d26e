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


def test_range_equalised_views_lose_the_density_fall_off():
    """range_equalise thins a view so that points per occupied surface cell no longer fall with range:
    on a simulated spinning-LiDAR scan, points per 0.5 m cell at 4-8 m are several times those at
    16-20 m; after equalising (R = 20 m) they are within a factor 1.5. Off (the default), the
    augmentation draws no random number: existing runs keep their views."""
    from ssl3d_ros.sim import SimConfig, SimSource, with_lidar
    from ssl3d_ros.training.views import AugmentConfig, density_keep, range_equalised_keep

    scan = SimSource(with_lidar(SimConfig(), beams=32, columns=1024, motion_distortion=False), 1, seed=3)[0]

    def points_per_cell(points, lo, hi):
        r = np.linalg.norm(points, axis=1)
        inside = points[(r >= lo) & (r < hi)]
        cells = np.unique(np.floor(inside / 0.5).astype(np.int64), axis=0)
        return len(inside) / len(cells)

    before = points_per_cell(scan.points, 4, 8) / points_per_cell(scan.points, 16, 20)
    keep = density_keep(scan, AugmentConfig(beam_drop=0.0, range_equalise=1.0, range_equalise_range=20.0),
                        np.random.default_rng(0))
    after = points_per_cell(scan.points[keep], 4, 8) / points_per_cell(scan.points[keep], 16, 20)
    assert before > 2.5 and 1 / 1.5 < after < 1.5, (before, after)
    np.testing.assert_allclose(range_equalised_keep(np.array([[10.0, 0, 0], [0, 30.0, 0]]), 20.0), [0.25, 1.0])

    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    density_keep(scan, AugmentConfig(), rng_a)
    density_keep(scan, AugmentConfig(range_equalise=0.0, range_equalise_range=5.0), rng_b)
    assert rng_a.random() == rng_b.random()
