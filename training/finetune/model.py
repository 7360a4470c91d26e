"""Encoder + linear segmentation head trained end to end, its optimiser groups and losses.

The head is the node's head: a linear map of the hypercolumn (every level gathered to level-0
voxels), applied through ``encoder.linear_over_levels`` as the node applies it, so the fine-tuned
checkpoint runs in ``ssl3d-perception`` unchanged.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssl3d_ros.models.heads import LinearSegHead
from ssl3d_ros.models.structure import SparseTensor

from ..runtime.run import param_groups
from .config import FinetuneOptimConfig, LossConfig


class SegmentationModel(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = LinearSegHead(encoder.hypercolumn_channels, num_classes)

    def forward(self, x: SparseTensor, freeze_encoder: bool = False) -> torch.Tensor:
        """(M, K) fp32 logits of the level-0 voxels. ``freeze_encoder``: no encoder gradients."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_encoder):
            out = self.encoder(x)
        return self.encoder.linear_over_levels(out, self.head.weight, self.head.bias)


_STAGE = re.compile(r"^encoder\.stages\.(\d+)\.")


def layer_depth(name: str, num_stages: int) -> int:
    """0 for the stem (and the input mask token), s + 1 for stage s, num_stages + 1 for the head."""
    if name.startswith("head."):
        return num_stages + 1
    found = _STAGE.match(name)
    if found:
        return int(found.group(1)) + 1
    if name.startswith("encoder.decoder"):  # only encoders exported with an MSM decoder
        return num_stages
    return 0


def layerwise_groups(model: SegmentationModel, cfg: FinetuneOptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: per depth, lr scale ``layer_decay ** (head depth - depth)``, weight decay on
    matrices and kernels only (pretraining's rule, ``runtime.run.param_groups``). Every group records
    ``lr_scale`` and whether it belongs to the encoder (``encoder``), for the schedule and warm-up."""
    num_stages = len(model.encoder.stages)
    top = num_stages + 1
    decay_ids = {id(p) for p in param_groups(model, cfg.weight_decay)[0]["params"]}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_depth(name, num_stages)
        decays = id(p) in decay_ids
        group = groups.setdefault((depth, decays), {
            "params": [], "weight_decay": cfg.weight_decay if decays else 0.0,
            "lr_scale": cfg.layer_decay ** (top - depth), "encoder": depth < top, "depth": depth,
        })
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def class_weights(counts: torch.Tensor, cfg: LossConfig) -> torch.Tensor | None:
    """Balanced: (mean count / count) ** power over the classes present; absent classes weigh 0."""
    if cfg.class_weights == "none":
        return None
    counts = counts.double()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = (counts[present].mean() / counts[present]) ** cfg.balance_power
    return weights.float()


def lovasz_grad(truth_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman et al. 2018)."""
    total = truth_sorted.sum()
    intersection = total - truth_sorted.cumsum(0)
    union = total + (1.0 - truth_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if truth_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss over the classes present in ``labels`` (a convex surrogate of 1 - IoU)."""
    probs = logits.float().softmax(dim=1)
    losses = []
    for c in torch.unique(labels):
        truth = (labels == c).float()
        errors = (truth - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(truth[order])))
    return torch.stack(losses).mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: LossConfig,
                      weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``loss`` plus its terms, on the labelled points' logits (L, K) and classes (L,)."""
    out: dict[str, torch.Tensor] = {}
    if cfg.kind in ("ce", "ce+lovasz"):
        out["ce"] = F.cross_entropy(logits.float(), labels, weight=None if weights is None else weights.to(logits.device))
    if cfg.kind in ("lovasz", "ce+lovasz"):
        out["lovasz"] = lovasz_softmax(logits, labels)
    if cfg.kind == "ce":
        out["loss"] = out["ce"]
    elif cfg.kind == "lovasz":
        out["loss"] = out["lovasz"]
    else:
        out["loss"] = out["ce"] + cfg.lovasz_weight * out["lovasz"]
    return out


__all__ = ["SegmentationModel", "layer_depth", "layerwise_groups", "class_weights", "lovasz_softmax", "lovasz_grad",
           "segmentation_loss"]
