"""Ridge regression (closed form, torch) with the penalty chosen on a held-out part of the train set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..labels import r2_score
from .probes import subsample


@dataclass
class RidgeConfig:
    alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # penalty per point (scaled by n)
    max_train_points: int = 100_000
    validation_fraction: float = 0.2
    seed: int = 0


def _fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weights (C+1, D) for standardised x with a bias column that is not penalised."""
    n, c = x.shape
    xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    reg = torch.eye(c + 1, dtype=x.dtype) * alpha * n
    reg[-1, -1] = 0.0
    return torch.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def _predict(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w[:-1] + w[-1]


def ridge_r2(x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, y_test: np.ndarray,
             cfg: RidgeConfig = RidgeConfig()) -> tuple[float, float]:
    """Test R² of a ridge fit (penalty picked on a validation slice of train) and the chosen alpha."""
    keep = subsample(len(x_train), cfg.max_train_points, cfg.seed)
    x = x_train[keep].double()
    y = torch.as_tensor(np.asarray(y_train, dtype=np.float64).reshape(len(x_train), -1)[keep])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    xt = (x_test.double() - mean) / std
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    n_val = max(1, int(cfg.validation_fraction * len(x)))
    val, fit = perm[:n_val], perm[n_val:]
    best = max(cfg.alphas, key=lambda a: r2_score(y[val].numpy(), _predict(x[val], _fit(x[fit], y[fit], a)).numpy()))
    w = _fit(x, y, best)
    return r2_score(np.asarray(y_test, dtype=np.float64).reshape(len(x_test), -1), _predict(xt, w).numpy()), best


__all__ = ["RidgeConfig", "ridge_r2"]
