"""The resumable cache of per-scan pooled embeddings: one small file per scan, keyed by what the scan is
and which model embedded it, so a rerun (or a stopped run continued, or another strategy on the same
pool) encodes only the scans it has not seen.

Layout: ``CACHE/<model key>/<2 hex digits>/<scan key>.npz``. The model key is a digest of the checkpoint file's bytes,
the inference precision and the pooling version; the scan key a digest of the scan's identity
(``ScanRef.identity``: path, size and modification time of a file; bag, topic, message number and
stamp of a bag message). Each file is written atomically, so a run killed mid-write leaves no torn entry;
an entry that does not load is recomputed.
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...atomic import atomic_write

_log = logging.getLogger(__name__)

# Bumped whenever what a pooled entry holds or how it is computed changes: old entries are then ignored.
POOLING_VERSION = 1


@dataclass
class PooledScan:
    """What the selection keeps of one scan: its pooled embeddings and uncertainty, never its points.

    mean: (D,) mean over the scan's voxels of the encoder's hypercolumn (the scan's pooled embedding).
    entropy_mean: mean normalised entropy (0..1) of the segmentation head's softmax over the voxels;
    entropy_top: the mean over the most uncertain tenth of the voxels (NaN for both without a head).
    voxels, points: the voxels the model saw and the points of the scan; stamp_ns: the scan's stamp.
    """

    mean: np.ndarray
    entropy_mean: float
    entropy_top: float
    voxels: int
    points: int
    stamp_ns: int

    def uncertainty(self, kind: str) -> float:
        return self.entropy_mean if kind == "mean" else self.entropy_top


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (a checkpoint can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_key(checkpoint_digest: str, precision: str) -> str:
    return hashlib.sha256(f"{checkpoint_digest}|{precision}|pooling-v{POOLING_VERSION}".encode()).hexdigest()[:20]


class EmbeddingCache:
    """Pooled scans of one model under ``root/<model key>/``; ``root`` None keeps nothing (no cache)."""

    def __init__(self, root: str | Path | None, key: str) -> None:
        self.folder = None if root is None else Path(root) / key
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, identity: str) -> Path:
        assert self.folder is not None
        digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return self.folder / digest[:2] / f"{digest}.npz"  # 256 shards: small folders for long bags

    def get(self, identity: str) -> PooledScan | None:
        if self.folder is None:
            return None
        path = self._path(identity)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["identity"]) != identity:  # a digest collision, or a copied-in file
                    return None
                return PooledScan(mean=data["mean"],
                                  entropy_mean=float(data["entropy_mean"]), entropy_top=float(data["entropy_top"]),
                                  voxels=int(data["voxels"]), points=int(data["points"]),
                                  stamp_ns=int(data["stamp_ns"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            _log.warning("%s: unreadable cache entry, encoding the scan again (%s)", path, exc)
            return None

    def put(self, identity: str, pooled: PooledScan) -> None:
        if self.folder is None:
            return

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.savez would add '.npz' to a path
                np.savez(handle, identity=np.array(identity), mean=pooled.mean,
                         entropy_mean=np.float64(pooled.entropy_mean), entropy_top=np.float64(pooled.entropy_top),
                         voxels=np.int64(pooled.voxels), points=np.int64(pooled.points),
                         stamp_ns=np.int64(pooled.stamp_ns))

        atomic_write(self._path(identity), write)


__all__ = ["POOLING_VERSION", "PooledScan", "file_digest", "model_key", "EmbeddingCache"]
