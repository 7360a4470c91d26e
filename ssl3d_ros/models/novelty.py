"""How unlike its reference data a frame is: a compact reference of the encoder's embedding
distribution, fitted offline, and the novelty score it gives a frame at run time.

The reference (:class:`NoveltyReference`, a few small tensors) holds

- ``mean`` (C,) and ``basis`` (C, d): the principal subspace of the reference voxels' hypercolumns;
- ``prototypes`` (K, d): k-means centres of the reference voxels in that subspace;
- ``share_mean`` and ``share_std`` (K,): the share of a reference frame's voxels nearest to each
  prototype, its mean over the reference frames and its frame-to-frame standard deviation (floored at
  :data:`SHARE_STD_FLOOR`), a diagonal Gaussian of the frames' prototype histograms;
- ``voxel_quantiles`` and ``frame_quantiles`` (Q,) at ``quantile_levels``: of the voxel distance and of
  the frame divergence below, over the reference data.

A voxel's distance is its hypercolumn's Euclidean distance to the nearest prototype (the prototype
lying in the subspace: the in-subspace part plus the residual outside it). A frame's divergence is the
mean over prototypes of its share's squared deviation from ``share_mean`` in units of ``share_std``:
what differs between sensors and places is the mix of local patterns (beam spacing, density, ground,
walls) more than any single voxel, which another sensor's frame reproduces one by one (the per-voxel
distance averaged over a frame separated other sensors from held-back KITTI frames far worse:
docs/novelty-study). Both scores are over the reference's quantile at ``normalise_at`` (0.95): 1.0 is
the reference's 95th percentile, a held-back frame of the reference data scores below 1, a frame of
another sensor above.

At run time :class:`NoveltyScorer` needs only the encoder's levels, never the (M, C) hypercolumn: the
projection and the squared norm are taken level by level at each level's own resolution and gathered
once (as :meth:`SparseEncoder.linear_over_levels`), then one (M, d) x (d, K) product and a bincount.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .heads import PCAProjection, StreamingKMeans

QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99)
NORMALISE_AT = 0.95  # a score of 1.0 is the reference's quantile at this level
DEFAULT_DIMS = 16
DEFAULT_PROTOTYPES = 32
MAX_PROTOTYPES = 4096
MAX_QUANTILES = 64
#: voxels kept per reference frame (a random subset): PCA, k-means and the calibration use them
VOXELS_PER_FRAME = 8192
#: voxels kept over all frames: bounds the fit's memory (C floats each)
MAX_VOXELS = 400_000
#: the tensor names of a reference (a checkpoint stores them under ``novelty.``)
#: a prototype's share varies at least this much from frame to frame (1 percentage point): a share no
#: reference frame moved (a pattern they never or always show) still scores finitely
SHARE_STD_FLOOR = 0.01
TENSOR_NAMES = ("mean", "basis", "prototypes", "share_mean", "share_std", "voxel_quantiles", "frame_quantiles")


class NoveltyFitError(ValueError):
    """The data cannot give a reference (too few frames or voxels, frames too alike); one line saying why."""


@dataclass
class NoveltyReference:
    """A fitted reference: tensors (float32, CPU) and what they were fitted on."""

    mean: torch.Tensor  # (C,)
    basis: torch.Tensor  # (C, d) orthonormal columns
    prototypes: torch.Tensor  # (K, d) in subspace coordinates (x - mean) @ basis
    share_mean: torch.Tensor  # (K,) mean share of a reference frame's voxels per prototype (sums to 1)
    share_std: torch.Tensor  # (K,) its frame-to-frame standard deviation, at least SHARE_STD_FLOOR
    voxel_quantiles: torch.Tensor  # (Q,) voxel distance at quantile_levels
    frame_quantiles: torch.Tensor  # (Q,) frame divergence at quantile_levels
    quantile_levels: tuple[float, ...] = QUANTILE_LEVELS
    normalise_at: float = NORMALISE_AT
    frames: int = 0  # reference frames
    voxels: int = 0  # reference voxels the subspace and prototypes were fitted on
    sources: list[str] = field(default_factory=list)  # what the frames were (provenance)

    @property
    def in_channels(self) -> int:
        return int(self.basis.shape[0])

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])

    @property
    def num_prototypes(self) -> int:
        return int(self.prototypes.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Name (of :data:`TENSOR_NAMES`) -> tensor."""
        return {name: getattr(self, name) for name in TENSOR_NAMES}

    def quantile(self, which: str, level: float | None = None) -> float:
        """The stored ``which`` ("voxel" distance or "frame" divergence) quantile at ``level`` (default
        ``normalise_at``)."""
        values = self.voxel_quantiles if which == "voxel" else self.frame_quantiles
        return float(values[self.quantile_levels.index(self.normalise_at if level is None else level)])


# --------------------------------------------------------------------------------------------------
# Scores from hypercolumns (fitting, tests) and from the encoder's levels (run time)
# --------------------------------------------------------------------------------------------------


def _nearest(z: torch.Tensor, centred_sq: torch.Tensor, prototypes: torch.Tensor,
             prototype_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance to the nearest prototype, its index) per voxel, from the subspace coordinates ``z``
    and the squared norm of (x - mean): |x - (mean + basis p)|^2 = |x - mean|^2 - 2 z.p + |p|^2."""
    scores = prototype_sq - 2.0 * (z @ prototypes.T)  # (M, K)
    best, index = scores.min(dim=1)
    return (centred_sq + best).clamp_min_(0.0).sqrt_(), index


def share_divergence(counts: torch.Tensor, share_mean: torch.Tensor, share_std: torch.Tensor) -> float:
    """Mean over prototypes of ((share - share_mean) / share_std)^2 for a frame's prototype counts."""
    total = float(counts.sum())
    if total <= 0:
        return float("nan")
    deviation = (counts.double() / total - share_mean.double()) / share_std.double()
    return float((deviation * deviation).mean())


def voxel_distances(hypercolumns: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor,
                    prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) distance of each hypercolumn to its nearest prototype and (M,) that prototype's index."""
    centred = hypercolumns.float() - mean
    z = centred @ basis
    return _nearest(z, (centred * centred).sum(dim=1), prototypes, (prototypes * prototypes).sum(dim=1))


@dataclass
class FrameNovelty:
    """One frame's novelty: ``score`` (1.0 = the reference's 95th-percentile frame), ``voxel_share``
    (share of its voxels scoring over 1.0) and, when asked for, ``voxel_scores`` (M,) float32."""

    score: float
    voxel_share: float
    voxel_scores: torch.Tensor | None = None


class NoveltyScorer:
    """A reference made ready for one device: ``score(encoder, output)`` per frame."""

    def __init__(self, reference: NoveltyReference, device: torch.device | str = "cpu") -> None:
        self.reference = reference
        device = torch.device(device)
        d = reference.dims
        # [basis | mean]: the subspace coordinates and x . mean in one product per level
        self._weight = torch.cat([reference.basis, reference.mean[:, None]], dim=1).float().to(device)  # (C, d + 1)
        self._z_offset = (reference.mean @ reference.basis).float().to(device)  # mean @ basis
        self._mean_sq = float(reference.mean.double().pow(2).sum())
        self._prototypes = reference.prototypes.float().to(device)
        self._prototype_sq = (self._prototypes * self._prototypes).sum(dim=1)
        self._share_mean = reference.share_mean.double().cpu()
        self._share_std = reference.share_std.double().cpu()
        self._voxel_scale = reference.quantile("voxel")
        self._frame_scale = reference.quantile("frame")
        self._dims = d

    @property
    def num_prototypes(self) -> int:
        return int(self._prototypes.shape[0])

    def project(self, encoder: torch.nn.Module, output) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, d) subspace coordinates and (M,) |x - mean|^2 of every level-0 voxel's hypercolumn x,
        computed level by level (each level's slice of the weights at its own resolution, one gather)."""
        if self._weight.shape[0] != encoder.hypercolumn_channels:
            raise ValueError(f"the novelty reference has {self._weight.shape[0]} input channels, the encoder's "
                             f"hypercolumn {encoder.hypercolumn_channels}")
        total = None
        start = 0
        for level, parent in zip(output.levels, output.parents):
            feats = level.feats.float()
            width = feats.shape[1]
            part = torch.cat([feats @ self._weight[start:start + width], (feats * feats).sum(dim=1, keepdim=True)], 1)
            part = part.index_select(0, parent)
            total = part if total is None else total.add_(part)
            start += width
        z = total[:, :self._dims] - self._z_offset
        centred_sq = total[:, self._dims + 1] - 2.0 * total[:, self._dims] + self._mean_sq
        return z, centred_sq

    def score(self, encoder: torch.nn.Module, output, voxel_scores: bool = False) -> FrameNovelty | None:
        """The frame's novelty from the encoder's output (None for a frame without voxels)."""
        z, centred_sq = self.project(encoder, output)
        return self._score(z, centred_sq, voxel_scores)

    def score_hypercolumns(self, hypercolumns: torch.Tensor, voxel_scores: bool = False) -> FrameNovelty | None:
        """The same from an (M, C) hypercolumn (offline tools; the node uses :meth:`score`)."""
        ref = self.reference
        centred = hypercolumns.float().to(self._weight.device) - ref.mean.to(self._weight.device)
        return self._score(centred @ ref.basis.to(centred.device), (centred * centred).sum(dim=1), voxel_scores)

    def _score(self, z: torch.Tensor, centred_sq: torch.Tensor, voxel_scores: bool) -> FrameNovelty | None:
        if z.shape[0] == 0:
            return None
        distance, index = _nearest(z, centred_sq, self._prototypes, self._prototype_sq)
        scores = distance.div_(self._voxel_scale)
        counts = torch.bincount(index, minlength=self.num_prototypes).cpu()
        share = float((scores > 1.0).float().mean())
        frame = share_divergence(counts, self._share_mean, self._share_std) / self._frame_scale
        return FrameNovelty(frame, share, scores if voxel_scores else None)


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def sample_voxels(hypercolumns: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """At most ``count`` random rows of one frame's (M, C) hypercolumns (float32, CPU)."""
    rows = hypercolumns.shape[0]
    if rows > count:
        hypercolumns = hypercolumns.index_select(0, torch.randperm(rows, generator=generator)[:count].to(hypercolumns.device))
    return hypercolumns.detach().float().cpu()


def fit_reference(
    frames: Sequence[torch.Tensor],
    *,
    dims: int = DEFAULT_DIMS,
    prototypes: int = DEFAULT_PROTOTYPES,
    quantile_levels: Sequence[float] = QUANTILE_LEVELS,
    normalise_at: float = NORMALISE_AT,
    seed: int = 0,
    sources: Sequence[str] = (),
) -> NoveltyReference:
    """Fit a reference on ``frames``: per frame an (M_i, C) sample of its voxels' hypercolumns (at most
    :data:`VOXELS_PER_FRAME` rows each is enough: :func:`sample_voxels`).

    Each frame's voxels are split in two random halves: the subspace and the prototypes are fitted on
    the first halves, the voxel quantiles taken on the second (distances of voxels the prototypes never
    saw); frame histograms use every given voxel. :class:`NoveltyFitError` (one line) when the data
    cannot give a reference: fewer than 2 frames, fewer voxels than prototypes, identical frames."""
    if len(frames) < 2:
        raise NoveltyFitError(f"a novelty reference needs at least 2 frames, got {len(frames)}")
    levels = tuple(float(q) for q in quantile_levels)
    if normalise_at not in levels:
        raise NoveltyFitError(f"normalise_at {normalise_at} is not one of the quantile levels {levels}")
    channels = {int(f.shape[1]) for f in frames}
    if len(channels) != 1:
        raise NoveltyFitError(f"frames have different channel counts {sorted(channels)}")
    (c,) = channels
    if not 1 <= dims <= c:
        raise NoveltyFitError(f"novelty dims must be within 1..{c} (the hypercolumn's channels), got {dims}")
    if not 1 <= prototypes <= MAX_PROTOTYPES:
        raise NoveltyFitError(f"novelty prototypes must be within 1..{MAX_PROTOTYPES}, got {prototypes}")
    generator = torch.Generator().manual_seed(seed)
    per_frame = max(64, min(VOXELS_PER_FRAME, MAX_VOXELS // len(frames)))
    samples = [sample_voxels(f, per_frame, generator) for f in frames]
    fit_part, calibration = [], []
    for sample in samples:
        order = torch.randperm(sample.shape[0], generator=generator)
        half = (sample.shape[0] + 1) // 2
        fit_part.append(sample[order[:half]])
        calibration.append(sample[order[half:]])
    fit_voxels = torch.cat(fit_part)
    if fit_voxels.shape[0] < max(prototypes, 2):
        raise NoveltyFitError(f"{fit_voxels.shape[0]} reference voxels cannot place {prototypes} prototypes")
    pca = PCAProjection.fit(fit_voxels, dims, generator=generator)
    z = pca(fit_voxels)
    kmeans = StreamingKMeans(prototypes, dims, seed=seed, momentum=0.0, init_iters=30,
                             max_init_samples=min(z.shape[0], 200_000))
    kmeans.step(z)
    centres = kmeans.centroids.float()
    reference = NoveltyReference(
        mean=pca.mean, basis=pca.basis, prototypes=centres, share_mean=torch.zeros(prototypes),
        share_std=torch.ones(prototypes),
        voxel_quantiles=torch.ones(len(levels)), frame_quantiles=torch.ones(len(levels)),
        quantile_levels=levels, normalise_at=float(normalise_at), frames=len(frames),
        voxels=int(fit_voxels.shape[0]), sources=list(sources),
    )
    held = torch.cat([c_ for c_ in calibration if c_.shape[0]]) if any(c_.shape[0] for c_ in calibration) else fit_voxels
    distance, _ = voxel_distances(held, pca.mean, pca.basis, centres)
    counts = []
    for sample in samples:
        _, index = voxel_distances(sample, pca.mean, pca.basis, centres)
        counts.append(torch.bincount(index, minlength=prototypes).double())
    shares = torch.stack([c_ / c_.sum() for c_ in counts])
    share_mean = shares.mean(dim=0)
    share_std = (shares.var(dim=0, unbiased=True) + SHARE_STD_FLOOR ** 2).sqrt()
    divergences = torch.tensor([share_divergence(c_, share_mean, share_std) for c_ in counts], dtype=torch.float64)
    q = torch.tensor(levels, dtype=torch.float64)
    reference.share_mean = share_mean.float()
    reference.share_std = share_std.float()
    reference.voxel_quantiles = torch.quantile(distance.double(), q).float()
    reference.frame_quantiles = torch.quantile(divergences, q).float()
    for which in ("voxel", "frame"):
        if not reference.quantile(which) > 0:
            raise NoveltyFitError(f"the reference's {which} scores are all zero at the {normalise_at} quantile: "
                             f"its {len(frames)} frames are too alike to calibrate a score (give more varied scans)")
    return reference


__all__ = [
    "QUANTILE_LEVELS", "NORMALISE_AT", "DEFAULT_DIMS", "DEFAULT_PROTOTYPES", "MAX_PROTOTYPES", "MAX_QUANTILES",
    "VOXELS_PER_FRAME", "MAX_VOXELS", "TENSOR_NAMES", "NoveltyFitError", "NoveltyReference", "FrameNovelty", "NoveltyScorer",
    "SHARE_STD_FLOOR", "fit_reference", "sample_voxels", "share_divergence", "voxel_distances",
]
