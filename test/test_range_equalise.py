"""Range-equalised views (issue 27): thinning a view so that point density no longer tells range."""
from __future__ import annotations

import numpy as np


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
