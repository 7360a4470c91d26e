"""The streaming pass: every scan of the pool through the encoder once, kept only as pooled vectors.

One scan at a time is read, run through the node's own pipeline (``PerceptionPipeline.process``: the
same preprocessing and encoder as the node), reduced to its mean hypercolumn over voxels and the head's
entropy, written to the cache and dropped, so memory holds one scan plus one (D,) vector per scan
however long the bag. Scans already in the cache are not read at all. An unreadable scan, or one
with no point left after preprocessing, is logged, counted and left out of the pool.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ...config import ConfigError
from ...io import ScanReadError, ScanSource
from .cache import EmbeddingCache, PooledScan
from .scan_refs import ScanRef

_log = logging.getLogger(__name__)

TOP_FRACTION = 0.1  # entropy_top: the mean over this share of a scan's voxels, the most uncertain ones


def pool_frame(voxel_embedding: np.ndarray, voxel_entropy: np.ndarray | None, *, points: int,
               stamp_ns: int) -> PooledScan:
    """A scan's pooled vectors from its (M, D) per-voxel embeddings and (M,) per-voxel entropies."""
    embedding = np.asarray(voxel_embedding, dtype=np.float32)
    if voxel_entropy is None or len(voxel_entropy) == 0:
        entropy_mean = entropy_top = math.nan
    else:
        entropy = np.sort(np.asarray(voxel_entropy, dtype=np.float64))[::-1]
        entropy_mean = float(entropy.mean())
        entropy_top = float(entropy[: max(1, int(math.ceil(TOP_FRACTION * len(entropy))))].mean())
    return PooledScan(mean=embedding.mean(axis=0), entropy_mean=entropy_mean,
                      entropy_top=entropy_top, voxels=len(embedding), points=points, stamp_ns=stamp_ns)


def voxel_entropy(result: Any) -> np.ndarray | None:
    """(M,) entropy per voxel of a ``FrameResult`` (every point of a voxel carries its voxel's value)."""
    if result.entropy is None or result.voxel_embedding is None:
        return None
    per_voxel = np.zeros(len(result.voxel_embedding), dtype=np.float32)
    valid = result.point_voxel >= 0
    per_voxel[result.point_voxel[valid]] = result.entropy[valid]
    return per_voxel


@dataclass
class EmbeddingPass:
    """The pool after the pass: ``pooled[i]`` for scan i (None where it was left out), and the counts."""

    pooled: list[PooledScan | None]
    encoded: int = 0  # scans read and run through the encoder in this run
    cached: int = 0  # scans taken from the cache without reading them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (scan, why) of the scans left out

    @property
    def kept(self) -> list[int]:
        return [i for i, p in enumerate(self.pooled) if p is not None]


def embed_pool(pipeline: Any, pool: ScanSource, refs: Sequence[ScanRef], cache: EmbeddingCache, *,
               segmentation: bool, progress: bool = True) -> EmbeddingPass:
    """Pool every scan of ``pool`` (``refs`` are its ``scan_refs``), from the cache where it has them.

    ``segmentation``: also run the head for the per-scan entropy (the pipeline must have one)."""
    from tqdm import tqdm

    done = EmbeddingPass(pooled=[None] * len(refs))
    with tqdm(total=len(refs), unit="scan", desc="embedding", disable=not progress, dynamic_ncols=True) as bar:
        for ref in refs:
            pooled = cache.get(ref.identity)
            if pooled is not None:
                done.cached += 1
            else:
                pooled = _encode(pipeline, pool, ref, segmentation, done)
                if pooled is not None:
                    cache.put(ref.identity, pooled)
            done.pooled[ref.position] = pooled
            bar.update(1)
            bar.set_postfix(encoded=done.encoded, cached=done.cached, skipped=len(done.skipped), refresh=False)
    return done


def _encode(pipeline: Any, pool: ScanSource, ref: ScanRef, segmentation: bool, done: EmbeddingPass) -> PooledScan | None:
    from ...preprocessing import MissingFieldError  # torch: loaded with the pipeline, not for --help

    where = pool.describe(ref.position)
    try:
        scan = pool[ref.position]
    except ScanReadError as error:
        _log.warning("skipping scan %s: %s", error.path, error.reason)
        done.skipped.append((error.path, error.reason))
        return None
    try:
        result = pipeline.process(scan, segmentation=segmentation, embeddings=True, update_clusters=False,
                                  point_embeddings=False)
    except MissingFieldError as error:  # holds for every scan of that input: the model cannot read it
        raise ConfigError(f"{error} (the checkpoint's preprocessing needs it)") from None
    done.encoded += 1
    if result.voxel_embedding is None or len(result.voxel_embedding) == 0:
        why = "no point left after the checkpoint's preprocessing (range, crop)"
        _log.warning("skipping scan %s: %s", where, why)
        done.skipped.append((where, why))
        return None
    stamp = int(scan.stamp_ns) if scan.stamp_ns else (ref.stamp_ns or 0)
    return pool_frame(result.voxel_embedding, voxel_entropy(result) if segmentation else None,
                      points=len(scan), stamp_ns=stamp)


__all__ = ["TOP_FRACTION", "pool_frame", "voxel_entropy", "EmbeddingPass", "embed_pool"]
