"""Segmentation metrics on class indices (pure numpy).

Convention used across evaluation: class indices are ``0..K-1``; ``IGNORE`` (-1) marks points
without a usable label (unlabelled, outliers, classes outside the benchmark). Ignored ground truth
never counts; a prediction of ``IGNORE`` (e.g. a point the node marked invalid) on a labelled point
counts as a miss of that point's class (it is a false negative, not a false positive of any class).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -1


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; ignored truth skipped.

    Predictions outside ``0..K-1`` (invalid points) are dropped from the matrix but still reduce
    recall, because IoU and accuracy are computed against the row sums of all labelled points; see
    ``segmentation_scores``.
    """
    truth = np.asarray(truth).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if truth.shape != pred.shape:
        raise ValueError(f"truth has {truth.size} points, prediction {pred.size}")
    keep = (truth >= 0) & (truth < num_classes) & (pred >= 0) & (pred < num_classes)
    flat = truth[keep] * num_classes + pred[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def labelled_counts(truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) number of labelled points per class (including ones predicted invalid)."""
    truth = np.asarray(truth).reshape(-1).astype(np.int64)
    truth = truth[(truth >= 0) & (truth < num_classes)]
    return np.bincount(truth, minlength=num_classes)


@dataclass
class SegmentationScores:
    miou: float  # mean over classes present in ground truth or prediction
    accuracy: float  # overall point accuracy on labelled points
    mean_accuracy: float  # mean per-class recall over classes present in ground truth
    iou: np.ndarray  # (K,) float, NaN where the class is absent from both truth and prediction
    confusion: np.ndarray  # (K, K) int64
    support: np.ndarray  # (K,) labelled points per class

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(len(self.iou))]
        return {
            "miou": _finite(self.miou),
            "accuracy": _finite(self.accuracy),
            "mean_accuracy": _finite(self.mean_accuracy),
            "iou": {n: _finite(v) for n, v in zip(names, self.iou)},
            "support": {n: int(s) for n, s in zip(names, self.support)},
            "confusion": self.confusion.tolist(),
            "class_names": list(names),
        }


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def scores_from_confusion(confusion: np.ndarray, support: np.ndarray | None = None) -> SegmentationScores:
    """IoU per class, mIoU, accuracy from a confusion matrix.

    ``support`` (labelled points per class) defaults to the row sums; pass the true counts when some
    labelled points were predicted invalid so that they count as misses.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(1) if support is None else np.asarray(support, dtype=np.int64)
    predicted = confusion.sum(0).astype(np.float64)
    union = support + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    total = support.sum()
    return SegmentationScores(
        miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        accuracy=float(tp.sum() / total) if total else float("nan"),
        mean_accuracy=float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
        iou=iou,
        confusion=confusion,
        support=support,
    )


def segmentation_scores(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> SegmentationScores:
    """Scores of one prediction; labelled points predicted invalid count as misses."""
    return scores_from_confusion(confusion_matrix(truth, pred, num_classes), labelled_counts(truth, num_classes))


class ScoreAccumulator:
    """Sums confusion matrices and supports over frames, for the overall score of a sequence."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.support = np.zeros(num_classes, dtype=np.int64)

    def add(self, truth: np.ndarray, pred: np.ndarray) -> SegmentationScores:
        """Add one frame; returns that frame's own scores."""
        conf = confusion_matrix(truth, pred, self.num_classes)
        sup = labelled_counts(truth, self.num_classes)
        self.confusion += conf
        self.support += sup
        return scores_from_confusion(conf, sup)

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.confusion, self.support)


def r2_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination over all output dimensions (variance-weighted, like sklearn's
    ``multioutput='variance_weighted'``): 1 - SSE / SST summed over columns."""
    truth = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    sse = ((truth - pred) ** 2).sum()
    sst = ((truth - truth.mean(0)) ** 2).sum()
    return float(1.0 - sse / sst) if sst > 0 else float("nan")


__all__ = [
    "IGNORE", "confusion_matrix", "labelled_counts", "SegmentationScores", "scores_from_confusion",
    "segmentation_scores", "ScoreAccumulator", "r2_score",
]
