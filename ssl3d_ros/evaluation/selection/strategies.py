"""Which scans to label next: the selection strategies, pure functions of per-scan vectors (numpy only).

Every strategy takes the pool's pooled embeddings (and, where it needs them, per-scan uncertainties and
the time-ordered streams the scans belong to), a budget K and a seeded generator, and returns the chosen
scans in rank order. Same inputs and seed, same ranking.

- ``diversity``: greedy k-center (farthest-point) on the normalised pooled embeddings: the first scan is
  drawn by the seed, each next one is the scan farthest (cosine distance) from every scan chosen so far.
- ``uncertainty``: the scans whose segmentation the head is least sure of (mean normalised entropy of
  its softmax over the scan's voxels, or of its most uncertain tenth), most uncertain first.
- ``mix``: uncertainty-weighted k-center: the first scan is the most uncertain, each next one maximises
  (cosine distance to the chosen) x (uncertainty).
- ``random``: K scans drawn by the seed, the baseline a team would otherwise use.
- ``uniform-time``: K scans evenly spaced over each stream's order (a folder of files, a bag topic),
  the budget shared between streams by their length; the seed sets where the spacing starts.

Near-duplicates: the three embedding strategies never choose a scan whose cosine distance to an
already chosen scan is below ``duplicate_distance`` (consecutive frames of a slow robot, a sensor
standing still, a bag recorded twice). When every remaining scan is that close to a chosen one they
stop with fewer than K scans and say so. The baselines apply no such rule: they are what a team does
without embeddings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

STRATEGIES = ("diversity", "uncertainty", "mix", "random", "uniform-time")
EMBEDDING_STRATEGIES = ("diversity", "uncertainty", "mix")  # the ones the near-duplicate rule applies to
UNCERTAINTY_STRATEGIES = ("uncertainty", "mix")  # the ones that need a segmentation head

# Cosine distance between normalised pooled embeddings (``normalised_embeddings``) below which two scans
# count as near-duplicates. Measured with the pretrained nano encoder of docs/results.md on the 35 scans of
# SemanticKITTI sequences 00-05 and 07 plus kitti_seq00 and kitti_raw_0002 (docs/selection-study/
# selection.md): the same scan found twice (kitti_seq00 holds byte copies of two frames of sequence 00)
# 0; frames 0.2 s apart 0.007-0.05 for 4 of the 28 pairs (sequences 01, a highway, and 07), 0.08-1.1 for
# the others; scans of different drives 0.17 at the least (1st percentile 0.27).
DEFAULT_DUPLICATE_DISTANCE = 0.05


@dataclass
class Selection:
    """The chosen scans (indices into the pool) in rank order, with each one's score at the moment it was
    chosen (k-center: its cosine distance to the scans chosen before it; uncertainty: its uncertainty;
    mix: their product; NaN where a strategy has no score, and for the seeded first k-center pick)."""

    strategy: str
    indices: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    note: str = ""  # why fewer than the budget were chosen, when they were


def normalised_embeddings(pooled: np.ndarray) -> np.ndarray:
    """(N, D) unit vectors from the pool's (N, D) mean-pooled embeddings: every channel standardised over
    the pool (zero mean, unit spread), then each scan's vector scaled to unit length.

    Standardising matters: the hypercolumn's levels have very different scales and raw cosines between
    scans crowd near 1, so a distance says how different two scans are compared with the rest of the
    pool. A channel constant over the pool counts for nothing."""
    x = np.asarray(pooled, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"pooled embeddings must be (N, D) with one row per scan, got {x.shape}")
    spread = x.std(axis=0, keepdims=True)
    z = np.divide(x - x.mean(axis=0, keepdims=True), spread, out=np.zeros_like(x), where=spread > 1e-12)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return np.divide(z, norms, out=np.zeros_like(z), where=norms > 1e-12)


def cosine_distance_to(vectors: np.ndarray, index: int) -> np.ndarray:
    """(N,) cosine distance of every normalised vector to ``vectors[index]`` (0 same direction, 2 opposite)."""
    return np.clip(1.0 - vectors @ vectors[index], 0.0, 2.0)


def _tie_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded rank per item, to break exact ties without favouring the first scans of the pool."""
    return rng.permutation(n)


def _best(values: np.ndarray, eligible: np.ndarray, ties: np.ndarray) -> int:
    """Index of the largest eligible value; exact ties go to the lowest seeded rank."""
    candidates = np.flatnonzero(eligible & (values == values[eligible].max()))
    return int(candidates[np.argmin(ties[candidates])])


def _check_budget(budget: int, n: int) -> int:
    if budget <= 0:
        raise ValueError(f"the budget must be at least one scan, got {budget}")
    if n == 0:
        raise ValueError("no scans to choose from")
    return min(budget, n)


def k_center(vectors: np.ndarray, budget: int, rng: np.random.Generator, *,
             duplicate_distance: float = DEFAULT_DUPLICATE_DISTANCE,
             weights: np.ndarray | None = None, strategy: str = "diversity") -> Selection:
    """Greedy farthest-point selection on normalised ``vectors``; with ``weights`` (uncertainties) the
    first pick is the heaviest and each next one maximises distance x weight."""
    n = len(vectors)
    budget = _check_budget(budget, n)
    ties = _tie_order(n, rng)
    everything = np.ones(n, dtype=bool)
    if weights is None:
        first = int(rng.integers(n))
        first_score = math.nan
    else:
        weights = np.asarray(weights, dtype=np.float64)
        first = _best(weights, everything, ties)
        first_score = float(weights[first])
    selection = Selection(strategy, [first], [first_score])
    nearest = cosine_distance_to(vectors, first)
    available = everything.copy()
    available[first] = False
    while len(selection.indices) < budget:
        eligible = available & (nearest >= duplicate_distance)
        if not eligible.any():
            selection.note = _stopped_note(len(selection.indices), budget, int(available.sum()), duplicate_distance)
            break
        gain = nearest if weights is None else nearest * weights
        pick = _best(gain, eligible, ties)
        selection.indices.append(pick)
        selection.scores.append(float(gain[pick]))
        available[pick] = False
        nearest = np.minimum(nearest, cosine_distance_to(vectors, pick))
    return selection


def uncertainty_ranking(vectors: np.ndarray, uncertainty: np.ndarray, budget: int, rng: np.random.Generator, *,
                        duplicate_distance: float = DEFAULT_DUPLICATE_DISTANCE) -> Selection:
    """The most uncertain scans first, skipping any scan within ``duplicate_distance`` of one already chosen."""
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    n = len(uncertainty)
    budget = _check_budget(budget, n)
    ties = _tie_order(n, rng)
    selection = Selection("uncertainty")
    nearest = np.full(n, np.inf)
    for index in np.lexsort((ties, -uncertainty)):  # most uncertain first, seeded among equals
        if len(selection.indices) == budget:
            break
        if nearest[index] < duplicate_distance:
            continue
        selection.indices.append(int(index))
        selection.scores.append(float(uncertainty[index]))
        nearest = np.minimum(nearest, cosine_distance_to(vectors, int(index)))
    if len(selection.indices) < budget:
        selection.note = _stopped_note(len(selection.indices), budget, n - len(selection.indices), duplicate_distance)
    return selection


def _stopped_note(chosen: int, budget: int, left: int, duplicate_distance: float) -> str:
    return (f"{chosen} of the {budget} scans asked for: each of the {left} other scans is within cosine distance "
            f"{duplicate_distance:g} of a chosen one (near-duplicates; --duplicate-distance sets the threshold)")


def random_selection(n: int, budget: int, rng: np.random.Generator) -> Selection:
    budget = _check_budget(budget, n)
    indices = [int(i) for i in rng.permutation(n)[:budget]]
    return Selection("random", indices, [math.nan] * len(indices))


def uniform_in_time(streams: Sequence[Sequence[int]], budget: int, rng: np.random.Generator) -> Selection:
    """Evenly spaced scans of each stream (its scans' pool indices in time order). Stream s of length n_s
    gets K n_s / N scans (largest remainders round, seeded among equal remainders); its k scans are
    ``floor((j + phase) n_s / k)`` for j < k, with one seeded phase in [0, 1) per stream."""
    lengths = np.array([len(s) for s in streams], dtype=np.int64)
    total = int(lengths.sum())
    budget = _check_budget(budget, total)
    quota = budget * lengths / total
    counts = np.floor(quota).astype(np.int64)
    remainder = quota - counts
    ties = _tie_order(len(streams), rng)
    for s in np.lexsort((ties, -remainder))[: budget - int(counts.sum())]:
        counts[s] += 1
    indices: list[int] = []
    for stream, n, k in zip(streams, lengths, counts):
        phase = rng.random()
        if k:
            indices += [int(stream[int((j + phase) * n / k)]) for j in range(k)]
    return Selection("uniform-time", indices, [math.nan] * len(indices))


def select(strategy: str, budget: int, seed: int, streams: Sequence[Sequence[int]], *,
           vectors: np.ndarray | None = None, uncertainty: np.ndarray | None = None,
           duplicate_distance: float = DEFAULT_DUPLICATE_DISTANCE) -> Selection:
    """Run one strategy on a pool of N scans. ``streams``: the pool's indices 0..N-1 per time-ordered
    stream, covering the pool; ``vectors``: its ``normalised_embeddings`` (the embedding strategies);
    ``uncertainty``: (N,) per-scan uncertainty (uncertainty, mix)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    if duplicate_distance < 0:
        raise ValueError(f"the near-duplicate distance must be >= 0, got {duplicate_distance}")
    n = sum(len(s) for s in streams)
    if vectors is not None and len(vectors) != n:
        raise ValueError(f"{len(vectors)} embeddings for a pool of {n} scans")
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return random_selection(n, budget, rng)
    if strategy == "uniform-time":
        return uniform_in_time(streams, budget, rng)
    if vectors is None:
        raise ValueError(f"strategy {strategy!r} needs the pooled embeddings")
    if strategy == "diversity":
        return k_center(vectors, budget, rng, duplicate_distance=duplicate_distance)
    if uncertainty is None or len(uncertainty) != n or not np.all(np.isfinite(uncertainty)):
        raise ValueError(f"strategy {strategy!r} needs every scan's uncertainty (a segmentation head)")
    if strategy == "uncertainty":
        return uncertainty_ranking(vectors, uncertainty, budget, rng, duplicate_distance=duplicate_distance)
    return k_center(vectors, budget, rng, duplicate_distance=duplicate_distance, weights=uncertainty, strategy="mix")


__all__ = ["STRATEGIES", "EMBEDDING_STRATEGIES", "UNCERTAINTY_STRATEGIES", "DEFAULT_DUPLICATE_DISTANCE", "Selection",
           "normalised_embeddings", "cosine_distance_to", "k_center", "uncertainty_ranking", "random_selection",
           "uniform_in_time", "select"]
