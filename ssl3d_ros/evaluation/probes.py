"""Probes on frozen per-point features (torch, CPU): linear softmax and kNN.

Both take plain (N, C) float tensors and (N,) class indices (``IGNORE`` = -1 already removed by
the caller), so the same code scores any feature set: encoder hypercolumns, multi-level features,
raw input features.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LinearProbeConfig:
    max_iter: int = 100  # L-BFGS iterations (full batch)
    weight_decay: float = 1e-4  # L2 on the weights, per point-mean loss
    class_balanced: bool = False  # weight the loss by inverse class frequency
    max_train_points: int = 200_000  # random subsample of the train points (memory, time)
    seed: int = 0


@dataclass
class KNNProbeConfig:
    k: int = 10
    max_bank_points: int = 50_000  # random subsample of the train points kept as the memory bank
    chunk: int = 4096  # query rows per cdist call
    seed: int = 0


@dataclass
class LinearProbe:
    """Softmax regression on standardised features; ``folded()`` gives weights on raw features."""

    weight: torch.Tensor  # (K, C) on standardised features
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor, chunk: int = 65536) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([self.logits(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)]).numpy()

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W', b') with ``x @ W'.T + b' == logits(x)``, so the node's plain linear head can use it."""
        w = self.weight / self.std
        b = self.bias - w @ self.mean
        return w.contiguous(), b.contiguous()


def subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def train_linear_probe(x: torch.Tensor, y: np.ndarray, num_classes: int, cfg: LinearProbeConfig) -> LinearProbe:
    """Full-batch L-BFGS on the cross-entropy of a linear map of standardised features."""
    keep = subsample(len(x), cfg.max_train_points, cfg.seed)
    x = x[keep].float()
    y_t = torch.as_tensor(np.asarray(y)[keep], dtype=torch.long)
    if len(y_t) == 0:
        raise ValueError("no labelled training points for the linear probe")
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)  # constant features (e.g. dead channels) stay finite
    xs = (x - mean) / std
    class_weight = None
    if cfg.class_balanced:
        counts = torch.bincount(y_t, minlength=num_classes).float()
        class_weight = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), 0.0)
    torch.manual_seed(cfg.seed)
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=cfg.max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ weight.T + bias, y_t, weight=class_weight)
        loss = loss + cfg.weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std)


def knn_predict(bank_x: torch.Tensor, bank_y: np.ndarray, query_x: torch.Tensor, num_classes: int,
                cfg: KNNProbeConfig) -> np.ndarray:
    """Majority vote of the ``k`` most cosine-similar bank points, weighted by similarity
    (ties and all-negative similarities resolved by the plain vote through a small epsilon)."""
    keep = subsample(len(bank_x), cfg.max_bank_points, cfg.seed)
    bank = F.normalize(bank_x[keep].float(), dim=1)
    labels = torch.as_tensor(np.asarray(bank_y)[keep], dtype=torch.long)
    k = min(cfg.k, len(bank))
    out = []
    with torch.no_grad():
        for i in range(0, len(query_x), cfg.chunk):
            q = F.normalize(query_x[i:i + cfg.chunk].float(), dim=1)
            sim, idx = (q @ bank.T).topk(k, dim=1)
            votes = torch.zeros(len(q), num_classes)
            votes.scatter_add_(1, labels[idx], sim.clamp_min(0) + 1e-3)
            out.append(votes.argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


__all__ = ["LinearProbeConfig", "KNNProbeConfig", "LinearProbe", "train_linear_probe", "knn_predict", "subsample"]
