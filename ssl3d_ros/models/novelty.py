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
walls) more than any single voxel, which another sensor's frame reproduces one by one (the share of a
frame's voxels far from every prototype separated other sensors from held-back KITTI frames far worse:
docs/novelty-study). Both scores are over the reference's quantile at ``normalise_at`` (0.95): 1.0 is
the reference's 95th percentile, a held-back frame of the reference data scores below 1, a frame of
another sensor above.

A frame is scored on :data:`FRAME_VOXELS` of its voxels, evenly spaced over its voxel list (all of
them in a smaller frame), at run time as in the reference's calibration: the histogram's sampling noise
is the same on both sides, and the cost no longer grows with the frame (a 40k-voxel HDL-64 frame: one
voxel in forty; BENCHMARKS.md, "Novelty score"). :class:`NoveltyScorer` needs only the encoder's
levels, never the (M, C) hypercolumn: the projection and the squared norm are taken level by level,
each at its own resolution or on the sampled rows, whichever is smaller, then one (n, d) x (d, K)
product and a bincount. The per-point field (``voxel_scores``) scores every voxel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .heads import PCAProjection, StreamingKMeans

QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99)
NORMALISE_AT = 0.95  # a score of 1.0 is the reference's quantile at this level
DEFAULT_DIMS = 16
DEFAULT_PROTOTYPES = 32
MAX_PROTOTYPES = 4096
MAX_QUANTILES = 64
#: voxels a frame is scored on (evenly spaced over its voxels), in the node and in the calibration
FRAME_VOXELS = 1024
#: voxels the subspace and the prototypes are fitted on, at most (a random subset of every frame's sample)
MAX_VOXELS = 400_000
#: the tensor names of a reference (a checkpoint stores them under ``novelty.``)
#: a prototype's share varies at least this much from frame to frame (1 percentage point): a share no
#: reference frame moved (a pattern they never or always show) still scores finitely
SHARE_STD_FLOOR = 0.01
#: a calibration quantile at or below this is zero: identical frames leave rounding residue (1.9e-30
#: was seen), not a scale a score could be normalised by
CALIBRATION_FLOOR = 1e-9
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
    scores = torch.addmm(prototype_sq, z, prototypes.T, alpha=-2.0)  # (M, K)
    best, index = scores.min(dim=1)
    return (centred_sq + best).clamp_min_(0.0).sqrt_(), index


def share_divergence(counts, share_mean, share_std) -> float:
    """Mean over prototypes of ((share - share_mean) / share_std)^2 for a frame's prototype counts
    (tensors or arrays of K values; computed in numpy: K is small, torch's per-call overhead is not)."""
    counts, share_mean, share_std = (np.asarray(v, dtype=np.float64) for v in (counts, share_mean, share_std))
    total = counts.sum()
    if total <= 0:
        return float("nan")
    deviation = (counts / total - share_mean) / share_std
    return float(np.mean(deviation * deviation))


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


def frame_sample(voxels: int, count: int = FRAME_VOXELS) -> torch.Tensor | None:
    """Rows of the voxels a frame of ``voxels`` voxels is scored on: ``count`` evenly spaced ones (None:
    every voxel, the frame is not larger)."""
    if voxels <= count:
        return None
    return torch.arange(count, dtype=torch.int64) * voxels // count


class NoveltyScorer:
    """A reference made ready for one device: ``score(output)`` per frame, from the encoder's output."""

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
        self._share_mean = reference.share_mean.double().cpu().numpy()
        self._share_std = reference.share_std.double().cpu().numpy()
        self._voxel_scale = reference.quantile("voxel")
        self._frame_scale = reference.quantile("frame")
        self._dims = d
        self._weights_by_layout: dict[tuple[int, ...], list[torch.Tensor]] = {}

    @property
    def num_prototypes(self) -> int:
        return int(self._prototypes.shape[0])

    def project(self, output, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) subspace coordinates and (n,) |x - mean|^2 of the hypercolumn x of level-0 voxels
        ``rows`` (None: all), level by level: a level larger than ``rows`` is gathered first, a smaller
        one projected first (its slice of the weights at its own resolution)."""
        weights = self._level_weights(tuple(int(level.feats.shape[1]) for level in output.levels))
        if rows is not None:
            rows = rows.to(output.parents[0].device)
        projected = squared = None
        for level, parent, weight in zip(output.levels, output.parents, weights):
            feats = level.feats if level.feats.dtype == torch.float32 else level.feats.float()
            if rows is not None:
                parent = rows if level is output.levels[0] else parent.index_select(0, rows)  # level 0: identity
                if feats.shape[0] > parent.shape[0]:  # fewer rows than the level has voxels: gather first
                    feats, parent = feats.index_select(0, parent), None
            part, norm = torch.mm(feats, weight), torch.linalg.vecdot(feats, feats)
            if parent is not None:
                part, norm = part.index_select(0, parent), norm.index_select(0, parent)
            if projected is None:
                projected, squared = part, norm
            else:
                projected += part
                squared += norm
        z = projected[:, :self._dims] - self._z_offset
        centred_sq = squared.sub_(projected[:, self._dims], alpha=2.0).add_(self._mean_sq)
        return z, centred_sq

    def _level_weights(self, widths: tuple[int, ...]) -> list[torch.Tensor]:
        """Each level's rows of [basis | mean], contiguous, made once per encoder layout."""
        if widths not in self._weights_by_layout:
            if sum(widths) != self._weight.shape[0]:
                raise ValueError(f"the novelty reference has {self._weight.shape[0]} input channels, the encoder's "
                                 f"hypercolumn {sum(widths)}")
            starts = [sum(widths[:i]) for i in range(len(widths))]
            self._weights_by_layout[widths] = [self._weight[s:s + w].contiguous() for s, w in zip(starts, widths)]
        return self._weights_by_layout[widths]

    def score(self, output, voxel_scores: bool = False) -> FrameNovelty | None:
        """The frame's novelty from the encoder's output (an ``EncoderOutput``; None for a frame without
        voxels); with
        ``voxel_scores`` every voxel is scored (the frame score still comes from the frame's sample)."""
        voxels = int(output.parents[0].shape[0])
        rows = None if voxel_scores else frame_sample(voxels)
        z, centred_sq = self.project(output, rows)
        return self._score(z, centred_sq, voxel_scores)

    def score_hypercolumns(self, hypercolumns: torch.Tensor, voxel_scores: bool = False) -> FrameNovelty | None:
        """The same from an (M, C) hypercolumn (offline tools; the node uses :meth:`score`)."""
        ref = self.reference
        rows = None if voxel_scores else frame_sample(hypercolumns.shape[0])
        if rows is not None:
            hypercolumns = hypercolumns.index_select(0, rows.to(hypercolumns.device))
        centred = hypercolumns.float().to(self._weight.device) - ref.mean.to(self._weight.device)
        return self._score(centred @ ref.basis.to(centred.device), (centred * centred).sum(dim=1), voxel_scores)

    def _score(self, z: torch.Tensor, centred_sq: torch.Tensor, voxel_scores: bool) -> FrameNovelty | None:
        """From the subspace coordinates and squared norms of the frame's sample, or of every voxel
        (``voxel_scores``: the sample is then taken from them)."""
        if z.shape[0] == 0:
            return None
        distance, index = _nearest(z, centred_sq, self._prototypes, self._prototype_sq)
        scores = distance.div_(self._voxel_scale)
        sampled_scores, sampled_index = scores, index
        rows = frame_sample(z.shape[0]) if voxel_scores else None
        if rows is not None:
            rows = rows.to(scores.device)
            sampled_scores, sampled_index = scores.index_select(0, rows), index.index_select(0, rows)
        counts = torch.bincount(sampled_index, minlength=self.num_prototypes).cpu().numpy()
        share = int(torch.count_nonzero(sampled_scores > 1.0)) / sampled_scores.shape[0]
        frame = share_divergence(counts, self._share_mean, self._share_std) / self._frame_scale
        return FrameNovelty(frame, share, scores if voxel_scores else None)


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def sample_voxels(hypercolumns: torch.Tensor) -> torch.Tensor:
    """The rows of one frame's (M, C) hypercolumns a frame is scored on (:func:`frame_sample`), as the
    reference keeps them: float16 on the CPU (0.5 MB a frame at C = 256)."""
    rows = frame_sample(hypercolumns.shape[0])
    if rows is not None:
        hypercolumns = hypercolumns.index_select(0, rows.to(hypercolumns.device))
    return hypercolumns.detach().to(device="cpu", dtype=torch.float16)


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
    """Fit a reference on ``frames``: per frame the (M_i, C) hypercolumns of its voxels, or only of the
    voxels it is scored on (:func:`sample_voxels`, which this applies anyway: :data:`FRAME_VOXELS`
    evenly spaced voxels, as :class:`NoveltyScorer` takes them).

    Each frame's sample is split in two random halves: the subspace and the prototypes are fitted on
    the first halves (at most :data:`MAX_VOXELS` of them, at random), the voxel quantiles taken on the
    second (distances of voxels the prototypes never saw); frame histograms use the whole sample.
    :class:`NoveltyFitError` (one line) when the data cannot give a reference: fewer than 2 frames,
    fewer voxels than prototypes, identical frames."""
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
    frames = [sample_voxels(f) for f in frames]
    generator = torch.Generator().manual_seed(seed)
    fit_part, calibration = [], []
    for sample in frames:
        order = torch.randperm(sample.shape[0], generator=generator)
        half = (sample.shape[0] + 1) // 2
        fit_part.append(order[:half])
        calibration.append(order[half:])
    fit_voxels = torch.cat([f.index_select(0, rows).float() for f, rows in zip(frames, fit_part)])
    if fit_voxels.shape[0] > MAX_VOXELS:
        fit_voxels = fit_voxels.index_select(0, torch.randperm(fit_voxels.shape[0], generator=generator)[:MAX_VOXELS])
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
    distances, counts = [], []
    for sample, held in zip(frames, calibration):
        distance, index = voxel_distances(sample.float(), pca.mean, pca.basis, centres)
        distances.append(distance.index_select(0, held))
        counts.append(torch.bincount(index, minlength=prototypes).double())
    distance = torch.cat(distances)
    if distance.numel() == 0:  # frames of a single voxel each: no held-out voxel
        distance = voxel_distances(fit_voxels, pca.mean, pca.basis, centres)[0]
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
        if not reference.quantile(which) > CALIBRATION_FLOOR:
            raise NoveltyFitError(f"the reference's {which} scores are all zero at the {normalise_at} quantile: "
                                  f"its {len(frames)} frames are too alike to calibrate a score (give more varied scans)")
    return reference


__all__ = [
    "QUANTILE_LEVELS", "NORMALISE_AT", "DEFAULT_DIMS", "DEFAULT_PROTOTYPES", "MAX_PROTOTYPES", "MAX_QUANTILES",
    "FRAME_VOXELS", "MAX_VOXELS", "TENSOR_NAMES", "NoveltyFitError", "NoveltyReference", "FrameNovelty", "NoveltyScorer",
    "SHARE_STD_FLOOR", "CALIBRATION_FLOOR", "fit_reference", "frame_sample", "sample_voxels", "share_divergence", "voxel_distances",
]
