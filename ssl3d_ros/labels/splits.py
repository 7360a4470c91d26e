"""Train/test splits for probes, stated as rules so a report can say exactly what was held out.

- ``block``: the xy plane is cut into ``block_size`` metre squares; a seeded permutation of the
  occupied squares puts the first ``round(test_fraction * n_blocks)`` (at least one, at most all but
  one) into test. Neighbouring points of one object mostly share a block, so a probe cannot score
  by memorising its train neighbours.
- ``x_half``: points with x above the scan's median x are test.
- ``scans``: for sequences, the last ``ceil(test_fraction * n)`` scans are test (a temporal hold-out;
  interleaving consecutive frames would put nearly the same points on both sides).
- ``files``: the caller names the test scans (``ssl3d-probe --test-inputs``); the others train.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass
class SplitConfig:
    kind: Literal["block", "x_half", "scans", "files"] = "block"
    block_size: float = 8.0  # metres (outdoor); ~1.5 m suits rooms
    test_fraction: float = 0.3
    seed: int = 0

    def describe(self) -> str:
        if self.kind == "block":
            return (f"spatial blocks of {self.block_size:g} m x {self.block_size:g} m in xy; a seeded "
                    f"(seed {self.seed}) {self.test_fraction:.0%} of occupied blocks per scan held out for test")
        if self.kind == "x_half":
            return "points with x above each scan's median x held out for test"
        if self.kind == "files":
            return "whole scans: the --test-inputs scans test, the input scans train"
        return f"the last {self.test_fraction:.0%} of scans (rounded up) held out for test"


def block_split(points: np.ndarray, block_size: float, test_fraction: float, seed: int = 0) -> np.ndarray:
    """(N,) bool test mask from the block rule above."""
    blocks = np.floor(np.asarray(points)[:, :2] / block_size).astype(np.int64)
    _, block_of_point = np.unique(blocks, axis=0, return_inverse=True)
    block_of_point = block_of_point.reshape(-1)
    n_blocks = int(block_of_point.max()) + 1 if len(block_of_point) else 0
    if n_blocks < 2:
        raise ValueError(f"scan spans {n_blocks} block(s) of {block_size} m: too few for a spatial split")
    n_test = min(max(1, round(test_fraction * n_blocks)), n_blocks - 1)
    test_blocks = np.random.default_rng(seed).permutation(n_blocks)[:n_test]
    is_test_block = np.zeros(n_blocks, dtype=bool)
    is_test_block[test_blocks] = True
    return is_test_block[block_of_point]


def x_half_split(points: np.ndarray) -> np.ndarray:
    x = np.asarray(points)[:, 0]
    return x > np.median(x)


def scan_split(n_scans: int, test_fraction: float) -> np.ndarray:
    """(n_scans,) bool: True for test scans (the last ones)."""
    if n_scans < 2:
        raise ValueError("a per-scan split needs at least 2 scans; use a spatial split for one scan")
    n_test = min(max(1, math.ceil(test_fraction * n_scans)), n_scans - 1)
    test = np.zeros(n_scans, dtype=bool)
    test[n_scans - n_test:] = True
    return test


def point_test_masks(points_per_scan: list[np.ndarray], cfg: SplitConfig,
                     test_scans: list[bool] | None = None) -> list[np.ndarray]:
    """One (N_i,) bool test mask per scan under ``cfg``; ``test_scans`` (one flag per scan) names the
    test scans of the ``files`` split."""
    if cfg.kind in ("scans", "files"):
        if cfg.kind == "scans":
            test_scans = scan_split(len(points_per_scan), cfg.test_fraction).tolist()
        elif test_scans is None or len(test_scans) != len(points_per_scan) or all(test_scans) or not any(test_scans):
            raise ValueError("the files split needs both train and test scans, one flag per scan")
        return [np.full(len(p), t, dtype=bool) for p, t in zip(points_per_scan, test_scans)]
    if cfg.kind == "x_half":
        return [x_half_split(p) for p in points_per_scan]
    return [block_split(p, cfg.block_size, cfg.test_fraction, cfg.seed + i) for i, p in enumerate(points_per_scan)]


__all__ = ["SplitConfig", "block_split", "x_half_split", "scan_split", "point_test_masks"]
