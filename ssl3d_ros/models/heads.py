"""Heads on the encoder's per-point hypercolumn features, as the node and the probes use them.

- :class:`LinearSegHead`: the linear probe, trained offline, shipped in the checkpoint.
- :class:`PCAProjection`: embedding reduction to a few dims (a stored mean and basis).
- :class:`StreamingKMeans`: unsupervised segments when the checkpoint has no head; cluster ids stay
  the same from frame to frame because the centroids are carried over and only nudged (EMA).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..labels import NO_CLASS  # class id of points without a prediction; heads have <= NO_CLASS classes


class Segmentation(NamedTuple):
    """Per-point segmentation outputs, (N,) each."""

    class_id: torch.Tensor  # uint8, NO_CLASS where not predicted
    probability: torch.Tensor  # float32 softmax probability of the chosen class (0 where not predicted)
    entropy: torch.Tensor  # float32 softmax entropy / ln(K), in [0, 1] (1 where not predicted)


def segment_outputs(logits: torch.Tensor, valid: torch.Tensor | None = None) -> Segmentation:
    """Class id, its probability and the normalised entropy (nats / ln K, so 0..1) from (N, K) logits.

    ``valid`` (N,) bool marks points that have a prediction; the others get NO_CLASS, probability 0
    and entropy 1 (maximal uncertainty), so a consumer never mistakes them for a confident class.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if not 1 <= num_classes <= NO_CLASS:
        raise ValueError(f"{num_classes} classes do not fit uint8 class ids below {NO_CLASS}")
    # With s = logits - max and z = sum(exp(s)): p_max = 1 / z and entropy = log z - sum(exp(s) * s) / z.
    # Five elementwise passes instead of log_softmax's; 2-3x cheaper on CPU for (N, K) with small K.
    logits = logits.float()
    best, class_id = logits.max(dim=1)
    shifted = logits - best[:, None]
    unnormalised = shifted.exp()
    z = unnormalised.sum(dim=1)
    entropy = z.log() - (unnormalised * shifted).sum(dim=1) / z
    entropy = entropy / math.log(num_classes) if num_classes > 1 else torch.zeros_like(entropy)
    class_id = class_id.to(torch.uint8)
    probability = z.reciprocal()
    if valid is not None:
        valid = valid.to(logits.device)
        class_id = torch.where(valid, class_id, torch.full_like(class_id, NO_CLASS))
        probability = torch.where(valid, probability, torch.zeros_like(probability))
        entropy = torch.where(valid, entropy, torch.ones_like(entropy))
    return Segmentation(class_id, probability, entropy.clamp(0.0, 1.0))


class LinearSegHead(nn.Linear):
    """Linear segmentation probe on hypercolumn features: ``weight`` (K, C), ``bias`` (K,)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        if not 1 <= num_classes <= NO_CLASS:
            raise ValueError(f"LinearSegHead supports 1..{NO_CLASS} classes (uint8 ids), got {num_classes}")
        super().__init__(in_channels, num_classes)

    @property
    def in_channels(self) -> int:
        return self.in_features

    @property
    def num_classes(self) -> int:
        return self.out_features

    @torch.no_grad()
    def predict(self, feats: torch.Tensor, valid: torch.Tensor | None = None) -> Segmentation:
        """Per-point class id (uint8), probability and normalised entropy; see :func:`segment_outputs`."""
        return segment_outputs(self(feats.to(self.weight.dtype)), valid)


class PCAProjection(nn.Module):
    """x -> (x - mean) @ basis: (N, D) embeddings to (N, k). ``basis`` (D, k) has orthonormal columns,
    ordered by decreasing variance, each signed so its largest-magnitude entry is positive (so a
    re-fit on the same data gives the same colours)."""

    mean: torch.Tensor
    basis: torch.Tensor

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor) -> None:
        super().__init__()
        if mean.ndim != 1 or basis.ndim != 2 or basis.shape[0] != mean.shape[0]:
            raise ValueError(f"PCA mean (D,) and basis (D, k) disagree: {tuple(mean.shape)} vs {tuple(basis.shape)}")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("basis", basis.detach().float().clone())
        self.explained_variance_ratio: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        return self.basis.shape[0]

    @property
    def out_channels(self) -> int:
        return self.basis.shape[1]

    @classmethod
    def fit(
        cls,
        embeddings: torch.Tensor,
        dim: int,
        *,
        max_samples: int = 200_000,
        generator: torch.Generator | None = None,
    ) -> "PCAProjection":
        """Principal axes of (N, D) embeddings (at most ``max_samples`` random rows are used)."""
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got {tuple(embeddings.shape)}")
        n, d = embeddings.shape
        if not 1 <= dim <= d:
            raise ValueError(f"PCA dim must be within 1..{d}, got {dim}")
        if n < 2:
            raise ValueError(f"PCA needs at least 2 embeddings, got {n}")
        x = embeddings
        if n > max_samples:
            rows = torch.randperm(n, generator=generator)[:max_samples].to(x.device)
            x = x.index_select(0, rows)
        x = x.double()
        mean = x.mean(dim=0)
        centred = x - mean
        cov = centred.T @ centred / (x.shape[0] - 1)  # (D, D): cheaper than an SVD of (N, D) for N >> D
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        eigenvalues = eigenvalues.flip(0).clamp_min(0.0)
        basis = eigenvectors.flip(1)[:, :dim]
        peak = basis.abs().argmax(dim=0)
        signs = torch.sign(basis[peak, torch.arange(dim)])
        basis = basis * torch.where(signs == 0, torch.ones_like(signs), signs)
        pca = cls(mean.float(), basis.float())
        total = eigenvalues.sum()
        pca.explained_variance_ratio = (eigenvalues[:dim] / total).float() if total > 0 else torch.zeros(dim)
        return pca

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.dtype) - self.mean) @ self.basis

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """Back to the embedding space: z @ basis.T + mean."""
        return z.to(self.basis.dtype) @ self.basis.T + self.mean


class StreamingKMeans:
    """Unsupervised segments with cluster ids that persist across frames.

    The first frame initialises the centroids (k-means++ then ``init_iters`` Lloyd steps on at most
    ``max_init_samples`` points). Every call of :meth:`step` labels a frame by the nearest centroid
    and then moves each centroid a fraction ``momentum`` towards the mean of its points in that frame,
    so a centroid tracks slow changes of the scene but keeps its id. Deterministic given ``seed``.
    Inputs are the valid points only (no NaN rows).
    """

    def __init__(
        self,
        k: int,
        dim: int,
        seed: int = 0,
        *,
        momentum: float = 0.1,
        init_iters: int = 10,
        max_init_samples: int = 20_000,
    ) -> None:
        if k < 1 or dim < 1:
            raise ValueError(f"StreamingKMeans needs k >= 1 and dim >= 1, got k={k}, dim={dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.k = k
        self.dim = dim
        self.seed = seed
        self.momentum = momentum
        self.init_iters = init_iters
        self.max_init_samples = max_init_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.centroids: torch.Tensor | None = None  # (k, dim) float32 once initialised

    @classmethod
    def from_centroids(cls, centroids: torch.Tensor, seed: int = 0, **kwargs) -> "StreamingKMeans":
        """Start from stored centroids (e.g. a checkpoint's ``kmeans.centroids``), so ids match it."""
        if centroids.ndim != 2:
            raise ValueError(f"centroids must be (k, dim), got {tuple(centroids.shape)}")
        kmeans = cls(centroids.shape[0], centroids.shape[1], seed, **kwargs)
        kmeans.centroids = centroids.detach().float().clone()
        return kmeans

    @property
    def initialised(self) -> bool:
        return self.centroids is not None

    def reset(self) -> None:
        """Forget the centroids and restart the random stream (a new scene)."""
        self.generator = torch.Generator().manual_seed(self.seed)
        self.centroids = None

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) embeddings, got {tuple(x.shape)}")
        return x.float()

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) int64 id of the nearest centroid; no update."""
        if self.centroids is None:
            raise RuntimeError("StreamingKMeans.assign before any frame: call step() first")
        x = self._check(x)
        return _nearest(x, self.centroids.to(x.device))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Label one frame (N, dim) and update the centroids; returns (N,) int64 ids in 0..k-1."""
        x = self._check(x)
        if x.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64, device=x.device)
        if self.centroids is None:
            self.centroids = self._initialise(x).cpu()
        centroids = self.centroids.to(x.device)
        labels = _nearest(x, centroids)
        sums, counts = _cluster_sums(x, labels, self.k)
        seen = counts > 0
        frame_mean = sums / counts.clamp_min(1).unsqueeze(1)
        moved = centroids + self.momentum * (frame_mean - centroids)
        self.centroids = torch.where(seen.unsqueeze(1), moved, centroids).cpu()
        return labels

    def _initialise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_init_samples:
            rows = torch.randperm(x.shape[0], generator=self.generator)[: self.max_init_samples].to(x.device)
            x = x.index_select(0, rows)
        centroids = _kmeans_plus_plus(x, self.k, self.generator)
        for _ in range(self.init_iters):  # Lloyd steps on the first frame
            labels = _nearest(x, centroids)
            sums, counts = _cluster_sums(x, labels, self.k)
            centroids = torch.where((counts > 0).unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1), centroids)
        return centroids


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    # argmin |x - c|^2 = argmin |c|^2 - 2 x.c; |x|^2 is the same for every centroid.
    scores = (centroids * centroids).sum(dim=1) - 2.0 * (x @ centroids.T)
    return scores.argmin(dim=1)


def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    return sums, counts


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centroid drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    closest = ((x - x[first]) ** 2).sum(dim=1)
    for _ in range(1, k):  # k iterations, each vectorised over the points
        total = closest.sum()
        if total > 0:
            weights = (closest / total).double().cpu()
            index = int(torch.multinomial(weights, 1, generator=generator))
        else:  # fewer distinct points than clusters: duplicates stay empty clusters
            index = int(torch.randint(n, (1,), generator=generator))
        centroids.append(x[index])
        closest = torch.minimum(closest, ((x - x[index]) ** 2).sum(dim=1))
    return torch.stack(centroids).float()


__all__ = [
    "LinearSegHead",
    "PCAProjection",
    "Segmentation",
    "StreamingKMeans",
    "segment_outputs",
]
