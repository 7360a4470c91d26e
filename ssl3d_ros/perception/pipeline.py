"""Per-frame inference shared by the ROS node, the offline replay and the evaluation.

One path for a frame: :meth:`PerceptionPipeline.process_cloud` decodes a PointCloud2 once, keeping
every point (non-finite ones too); :func:`ssl3d_ros.preprocessing.preprocess` alone decides which
points are valid and maps each message point to its voxel (``point_voxel``, the only index map);
after inference :func:`ssl3d_ros.preprocessing.unpool` gives every point its voxel's output. A point
dropped by preprocessing (NaN, out of range, cropped, over the voxel budget) stays in place with
``valid = False`` and ``class_id = 255``. With a base frame (``frame.*`` parameters, :mod:`.mounting`)
the points are moved into it before preprocessing, so the model sees z up whatever the sensor's
orientation; the results stay in the message's order and frame. The node, the replay and the tests call the very same
``process`` on the same scan, so "the node's output equals offline inference" is checkable exactly.

Inference only: the parameters are :mod:`.params`, what is published :mod:`.outputs`.
No rclpy here.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import Checkpoint, load_checkpoint, packaged_checkpoint
from ..codec import CloudFormatError, scan_from_cloud
from ..config import ConfigError
from ..labels import NO_CLASS
from ..models.heads import StreamingKMeans, segment_outputs
from ..models.novelty import NoveltyScorer
from ..models.sparse import spconv_available
from ..preprocessing import PreprocessConfig, collate, preprocess, unpool
from ..scan import Scan
from .device import DeviceStaging, resolve_device, resolve_precision
from .mounting import FrameMounting, Mount
from .params import AUTO_EMBEDDING_DIMS, DEFAULT_MAX_INPUT_POINTS, NodeConfig, apply_preprocessing_overrides
from .results import CloudResult, FrameResult
from .warm_up import warm_up_scan

# Sparse-conv backend on CPU: the pure-torch convs. spconv 2.3.8's multi-threaded CPU forward races
# (outputs change from run to run, traveller59/spconv#679), and the node's output must equal offline
# inference of the same scan.
CPU_BACKEND = "torch"


class PerceptionPipeline:
    """Checkpoint + preprocessing + heads, loaded once and warmed up; ``process(scan)`` per frame."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        device: torch.device,
        dtype: torch.dtype,
        preprocess_cfg: PreprocessConfig,
        class_names: list[str],
        class_colors: np.ndarray,
        embedding_dims: int = 0,
        kmeans_clusters: int = 12,
        kmeans_input: str = "hypercolumn",
        intensity_field: str = "intensity",
        missing_intensity: str = "zero",
        source: str = "",
        warnings: list[str] | None = None,
        max_input_points: int = 0,
        mounting: FrameMounting | None = None,
        novelty: bool = True,
    ) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.preprocess_cfg = preprocess_cfg
        self.source = source
        self.warnings = list(warnings or [])
        self.encoder = checkpoint.encoder.to(device=device, dtype=dtype).eval()
        self.seg_head = None
        self.kmeans = None
        self.intensity_field = intensity_field
        self.missing_intensity = missing_intensity
        self.max_input_points = int(max_input_points)  # 0 = no limit
        self.mounting = mounting or FrameMounting()  # which base frame each cloud's frame moves into
        self.kmeans_input = kmeans_input
        if checkpoint.seg_head is not None:
            self.seg_head = checkpoint.seg_head.to(device=device, dtype=torch.float32).eval()
        elif checkpoint.kmeans_centroids is not None:
            self.kmeans = checkpoint.kmeans(seed=0)
        else:
            self.kmeans = StreamingKMeans(kmeans_clusters, self._full_dims, seed=0)
        self._initial_centroids = None if self.kmeans is None else self.kmeans.centroids
        self.class_names = list(class_names)
        self.class_colors = class_colors  # (K, 3) uint8 stored in the checkpoint; may be empty
        self.pca = checkpoint.pca.to(device).eval() if embedding_dims > 0 else None
        self.embedding_dims = embedding_dims
        self._readouts: dict[tuple[bool, bool], tuple[torch.Tensor, torch.Tensor] | None] = {}
        in_channels = int(checkpoint.encoder_config.in_channels)
        capacity = int(getattr(preprocess_cfg, "max_points", 0) or 0) or 150_000
        self._staging = DeviceStaging(device, dtype, in_channels, capacity) if device.type == "cuda" else None
        # novelty: on when asked for and the checkpoint has a reference (older checkpoints have none)
        self.novelty = NoveltyScorer(checkpoint.novelty, device) if novelty and checkpoint.novelty is not None else None
        self.frames = 0

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        overrides: NodeConfig | None = None,
    ) -> "PerceptionPipeline":
        """Load a checkpoint for inference; ``overrides`` are the node's parameters (NodeConfig).

        ``path`` None or '' means the packaged default checkpoint. Raises ConfigError for parameters
        that do not fit the checkpoint and CheckpointError for unreadable checkpoints.
        """
        cfg = overrides if overrides is not None else NodeConfig()
        path = Path(path) if path else (Path(cfg.checkpoint) if cfg.checkpoint else packaged_checkpoint())
        torch_device, warnings = resolve_device(device)
        dtype, more = resolve_precision(precision, torch_device)
        warnings += more
        backend = "auto" if torch_device.type == "cuda" else CPU_BACKEND
        if torch_device.type == "cuda" and not spconv_available(torch_device):
            warnings.append("the spconv CUDA wheel is missing; using the pure-torch sparse convolutions on CUDA")
            backend = "torch"
        ckpt = load_checkpoint(path, device=torch_device, backend=backend)
        pre = apply_preprocessing_overrides(ckpt.preprocessing, cfg)

        kmeans_input = "hypercolumn"
        if ckpt.seg_head is not None:
            num_classes = int(ckpt.seg_head.num_classes)
            ckpt_names = ckpt.class_names or [f"class_{i}" for i in range(num_classes)]
        elif ckpt.kmeans_centroids is not None:  # stored segments: ids match the checkpoint's
            num_classes = int(ckpt.kmeans_centroids.shape[0])
            ckpt_names = [f"segment_{i}" for i in range(num_classes)]
            kmeans_input = ckpt.kmeans_input
        else:
            num_classes = cfg.kmeans.clusters
            ckpt_names = [f"segment_{i}" for i in range(num_classes)]
        if num_classes >= NO_CLASS:
            raise ConfigError(f"{path}: {num_classes} classes do not fit class_id uint8 ({NO_CLASS} marks invalid points)")
        names = list(cfg.classes.names) or ckpt_names
        if len(names) != num_classes:
            raise ConfigError(
                f"parameter 'classes.names': {len(names)} names for the {num_classes} classes of {path}"
            )

        dims = cfg.embeddings.dims
        if dims < 0:  # auto: reduced when the checkpoint can reduce, else everything
            dims = min(AUTO_EMBEDDING_DIMS, int(ckpt.pca.out_channels)) if ckpt.pca is not None else 0
        if dims > 0:
            if ckpt.pca is None:
                raise ConfigError(
                    f"parameter 'embeddings.dims' = {dims} needs a PCA basis, and {path} has none "
                    "(set embeddings.dims: 0 for the full embedding)"
                )
            available = int(ckpt.pca.out_channels)
            if dims > available:
                raise ConfigError(
                    f"parameter 'embeddings.dims' = {dims} exceeds the {available} PCA components of {path}"
                )
        return cls(
            ckpt,
            device=torch_device,
            dtype=dtype,
            preprocess_cfg=pre,
            class_names=names,
            class_colors=_checkpoint_colors(ckpt),
            embedding_dims=dims,
            kmeans_clusters=num_classes,
            kmeans_input=kmeans_input,
            intensity_field=cfg.input.intensity_field,
            missing_intensity=cfg.input.missing_intensity,
            source=str(path),
            warnings=warnings,
            # auto (-1): the node resolves it against its transport first (transport.resolve_max_input_points)
            max_input_points=cfg.input.max_points if cfg.input.max_points >= 0 else DEFAULT_MAX_INPUT_POINTS,
            mounting=FrameMounting.from_config(cfg.frame),
            novelty=cfg.novelty.enabled,
        )

    @classmethod
    def from_config(cls, cfg: NodeConfig) -> "PerceptionPipeline":
        """:meth:`from_checkpoint` with everything taken from the node's parameters."""
        return cls.from_checkpoint(cfg.checkpoint or None, cfg.device, cfg.precision, cfg)

    # -- per frame ------------------------------------------------------------------------------

    @property
    def embedding_channels(self) -> int:
        """D of the published embedding."""
        if self.embedding_dims > 0:
            return self.embedding_dims
        return int(self._full_dims)

    @property
    def _full_dims(self) -> int:
        """Channels of the hypercolumn (every level at level-0 resolution), the full embedding."""
        return int(self.encoder.hypercolumn_channels)

    def warm_up(self, points: int | None = None, iterations: int | None = None, seed: int = 0) -> float:
        """Run the model on a synthetic scan so kernels, caches and buffers exist before the first scan.

        Defaults: on CUDA two passes over 100k points (kernel selection, allocator pools and the pinned
        staging buffers sized for a full scan); on CPU one pass over 5k points (only lazy
        initialisation to trigger). Returns the last pass's time in ms. k-means state is restored
        afterwards so the warm-up does not shape the unsupervised segments.
        """
        cuda = self.device.type == "cuda"
        points = points or (100_000 if cuda else 5_000)
        iterations = iterations or (2 if cuda else 1)
        scan = warm_up_scan(points, float(self.preprocess_cfg.max_range or 0) or 50.0, seed)
        elapsed = 0.0
        for _ in range(iterations):
            t0 = time.perf_counter()
            self.process(scan, segmentation=True, embeddings=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = (time.perf_counter() - t0) * 1e3
        if self.kmeans is not None:  # the synthetic scan must not shape the segments of the real scene
            self.kmeans.reset()
            if self._initial_centroids is not None:
                self.kmeans.centroids = self._initial_centroids.clone()
        self.frames = 0
        return elapsed

    @torch.inference_mode()
    def process(
        self,
        scan: Scan,
        *,
        segmentation: bool = True,
        embeddings: bool = True,
        update_clusters: bool = True,
        point_embeddings: bool = True,
        mount: Mount | None = None,
        novelty: bool = True,
        point_novelty: bool = False,
    ) -> FrameResult:
        """Segmentation, embeddings and/or novelty of every point of ``scan``, in its order.

        ``mount`` (base frame <- the scan's frame) moves the points into the base frame before
        preprocessing: the model, and the grid and obstacles made from ``base_points``, see z up; the
        results keep the scan's order, and ``voxel_coord`` its coordinates.

        ``point_embeddings`` False leaves ``embedding`` None and keeps only ``voxel_embedding`` (the
        node's ``embeddings.per_voxel``): the (N, D) per-point array is a frame's largest by far.

        ``update_clusters`` (k-means segmentation only) lets this frame nudge the cluster centres;
        ids stay stable across frames because the centres are carried over, never re-initialised.

        ``novelty`` scores the frame against the checkpoint's novelty reference (when the pipeline has
        one: ``self.novelty``), ``point_novelty`` also each point (its voxel's score, 0 where invalid).
        """
        t0 = time.perf_counter()
        seen = mount.scan_to_base(scan) if mount is not None else scan
        vox = preprocess(seen, self.preprocess_cfg)  # the only place that decides which points are valid
        result = FrameResult(
            valid=vox.point_valid.numpy(),
            point_voxel=vox.point_voxel.numpy(),
            # the kept point of each voxel as the input has it (published with the input's header)
            voxel_coord=vox.coord.numpy() if mount is None else scan.points[vox.voxel_point.numpy()],
            points_over_budget=vox.points_over_budget,
        )
        if mount is not None:
            result.base_points, result.base_frame = seen.points, mount.base_frame
            result.sensor_origin = np.array(mount.translation, np.float64)
        t1 = time.perf_counter()
        voxel_class = voxel_prob = voxel_entropy = voxel_embedding = frame_novelty = None
        novelty = novelty and self.novelty is not None
        if len(vox) == 0:  # nothing survived preprocessing: every point invalid, no model call
            if segmentation:
                voxel_class = np.zeros(0, np.uint8)
                voxel_prob = voxel_entropy = np.zeros(0, np.float32)
            if embeddings:
                voxel_embedding = np.zeros((0, self.embedding_channels), np.float32)
        else:
            voxel_class, voxel_prob, voxel_entropy, voxel_embedding, frame_novelty, novelty_ms = self._infer(
                vox, segmentation, embeddings, update_clusters, novelty, point_novelty)
            if novelty:
                result.timings_ms["novelty"] = novelty_ms
        t2 = time.perf_counter()

        # Un-pool to the input points: every point takes its voxel's output; dropped points stay invalid.
        point_voxel = vox.point_voxel.numpy()
        if voxel_class is not None:
            result.class_id = unpool(voxel_class, point_voxel, fill=NO_CLASS)
            result.probability = unpool(voxel_prob, point_voxel, fill=0.0)
            result.entropy = unpool(voxel_entropy, point_voxel, fill=1.0)  # maximal uncertainty
        if voxel_embedding is not None:
            result.voxel_embedding = voxel_embedding
            if point_embeddings:
                result.embedding = unpool(voxel_embedding, point_voxel, fill=0.0)
        if frame_novelty is not None:
            result.novelty, result.novelty_voxel_share = frame_novelty.score, frame_novelty.voxel_share
            if frame_novelty.voxel_scores is not None:
                result.point_novelty = unpool(frame_novelty.voxel_scores.float().cpu().numpy(), point_voxel, fill=0.0)
        t3 = time.perf_counter()
        self.frames += 1
        result.timings_ms.update({
            "preprocess": (t1 - t0) * 1e3,
            "inference": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
        })
        return result

    def _infer(self, vox: Any, segmentation: bool, embeddings: bool, update_clusters: bool, novelty: bool = False,
               point_novelty: bool = False):
        """Per-voxel class, probability, entropy and embedding (numpy, None where not asked for), the
        frame's novelty (None where not asked for) and the ms the novelty score took."""
        sparse = collate([vox])
        if self._staging is not None:
            feats, coords = self._staging.upload(sparse.feats, sparse.coords)
            sparse = dataclasses.replace(sparse, feats=feats, coords=coords, cache={})
        elif sparse.feats.dtype != self.dtype or sparse.feats.device != self.device:
            sparse = dataclasses.replace(
                sparse, feats=sparse.feats.to(self.device, self.dtype), coords=sparse.coords.to(self.device)
            )
        output = self.encoder(sparse)
        # The (M, C_total) hypercolumn is the largest tensor of a frame. A linear head and the PCA
        # embedding are linear maps of it, so they run level by level in one fused call instead
        # (measured: seg + 32-D embeddings of an HDL-64 scan 135 -> 89 ms on 2 CPU cores); only
        # k-means and full-width embeddings need the hypercolumn itself. Heads run in fp32.
        readout = self._linear_readout(segmentation, embeddings)
        fused = self.encoder.linear_over_levels(output, *readout) if readout is not None else None
        needs_hypercolumn = (embeddings and self.pca is None) or (segmentation and self.seg_head is None)
        hyper = self.encoder.hypercolumn(output).float() if needs_hypercolumn else None
        num_classes = self.seg_head.weight.shape[0] if self.seg_head is not None and segmentation else 0
        voxel_class = voxel_prob = voxel_entropy = voxel_embedding = None
        if segmentation and self.seg_head is not None:
            seg = segment_outputs(fused[:, :num_classes])
            voxel_class, voxel_prob, voxel_entropy = seg.class_id, seg.probability, seg.entropy
        elif segmentation:
            voxel_class, voxel_prob, voxel_entropy = self._cluster(hyper, update_clusters)
        if embeddings:
            voxel_embedding = fused[:, num_classes:] if self.pca is not None else hyper
        # One device->host transfer per output, after the whole graph is queued.
        if voxel_class is not None:
            voxel_class = voxel_class.to(torch.uint8).cpu().numpy()
            voxel_prob = voxel_prob.cpu().numpy().astype(np.float32, copy=False)
            voxel_entropy = voxel_entropy.cpu().numpy().astype(np.float32, copy=False)
        if voxel_embedding is not None:
            voxel_embedding = voxel_embedding.cpu().numpy().astype(np.float32, copy=False)
        frame_novelty, novelty_ms = None, 0.0
        if novelty:  # after the transfers (its counts come back to the host too); timed: what a reference adds
            t = time.perf_counter()
            frame_novelty = self.novelty.score(output, voxel_scores=point_novelty)
            novelty_ms = (time.perf_counter() - t) * 1e3
        return voxel_class, voxel_prob, voxel_entropy, voxel_embedding, frame_novelty, novelty_ms

    def scan_from_message(self, msg: Any) -> tuple[Scan, bool]:
        """Decode a PointCloud2 (rclpy or rosbags) once into the Scan the model reads: every one of
        its ``height*width`` points in row-major order, non-finite ones included (preprocessing marks
        them invalid).

        The configured intensity field becomes ``fields['intensity']``; without it (or with
        ``input.intensity_field`` empty) a model that reads intensity gets zeros, unless
        ``input.missing_intensity`` is ``reject``. Returns the scan and whether intensity was missing.
        Raises CloudFormatError for malformed clouds, including an intensity that is not one value per point.
        """
        total = int(getattr(msg, "height", 0)) * int(getattr(msg, "width", 0))
        if 0 < self.max_input_points < total <= 0xFFFFFFFF:  # larger totals: the decoder names the overflow
            raise CloudFormatError(
                f"cloud of {total} points ({msg.height} x {msg.width}) exceeds parameter input.max_points = "
                f"{self.max_input_points}"
            )
        scan, _ = scan_from_cloud(msg, keep_invalid=True)
        name = self.intensity_field
        fields = dict(scan.fields)
        intensity = fields.pop(name, None) if name else None
        fields.pop("intensity", None)  # only the configured field is the model's intensity
        if intensity is not None and intensity.ndim != 1:
            raise CloudFormatError(f"field {name!r} (parameter input.intensity_field) has count "
                                   f"{intensity.shape[1]}; intensity needs count 1")
        missing = intensity is None and self.uses_intensity
        if missing and name and self.missing_intensity == "reject":
            raise CloudFormatError(
                f"no field {name!r} (parameter input.intensity_field) in the cloud; its fields are "
                f"{[f.name for f in msg.fields]} (parameter input.missing_intensity: zero feeds zeros instead)")
        if missing:
            intensity = np.zeros(len(scan), np.float32)
        if intensity is not None:
            fields["intensity"] = intensity
        scan = dataclasses.replace(scan, fields=fields, intensity_scale=1.0 if missing else scan.intensity_scale)
        return scan, missing

    @property
    def uses_intensity(self) -> bool:
        return "intensity" in tuple(self.preprocess_cfg.features)

    def process_cloud(self, msg: Any, *, segmentation: bool = True, embeddings: bool = True,
                      point_embeddings: bool = True, novelty: bool = True, point_novelty: bool = False) -> CloudResult:
        """``process`` on a PointCloud2, results in the message's point order (all height*width points),
        in the base frame its ``frame_id`` has (``frame.*`` parameters); raises
        :class:`~.mounting.TransformUnavailable` while /tf_static has not linked the two."""
        t0 = time.perf_counter()
        scan, intensity_missing = self.scan_from_message(msg)
        mount = self.mounting.mount_for(scan.frame_id)
        decode_ms = (time.perf_counter() - t0) * 1e3
        result = self.process(scan, segmentation=segmentation, embeddings=embeddings,
                              point_embeddings=point_embeddings, mount=mount, novelty=novelty,
                              point_novelty=point_novelty)
        return CloudResult(result=result, xyz=scan.points, height=int(msg.height), width=int(msg.width),
                           decode_ms=decode_ms, intensity_missing=intensity_missing)

    def _cluster(self, hyper: torch.Tensor, update_clusters: bool):
        """Unsupervised segments: k-means on the embeddings with ids carried across frames."""
        x = self.checkpoint.pca(hyper) if self.kmeans_input == "pca" else hyper
        labels = self.kmeans.step(x) if update_clusters or not self.kmeans.initialised else self.kmeans.assign(x)
        # Soft assignment for probability/entropy: softmax of negative squared distances in units of
        # the frame's mean nearest distance, so the sharpness does not depend on the embedding scale.
        centroids = self.kmeans.centroids.to(x.device)
        sq_dist = torch.cdist(x, centroids).square()
        nearest = sq_dist.gather(1, labels.unsqueeze(1))
        scale = nearest.mean().clamp_min(1e-12)
        seg = segment_outputs(-sq_dist / scale)
        return labels.to(torch.uint8), seg.probability, seg.entropy

    def _linear_readout(self, segmentation: bool, embeddings: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weight, bias) of every linear output of the hypercolumn asked for this frame, stacked:
        the segmentation head's logits first, then the PCA embedding, ``(x - mean) @ basis[:, :k]``
        written as ``x @ basis_k - mean @ basis_k``. None when nothing linear is asked for. Built
        once per combination (the weights never change), not per frame."""
        key = (segmentation, embeddings)
        if key not in self._readouts:
            parts = []
            if segmentation and self.seg_head is not None:
                parts.append((self.seg_head.weight.float(), self.seg_head.bias.float()))
            if embeddings and self.pca is not None:
                basis = self.pca.basis[:, : self.embedding_dims]
                parts.append((basis.T, -(self.pca.mean @ basis)))
            self._readouts[key] = (torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts])) if parts else None
        return self._readouts[key]

    def memory_bytes(self) -> dict[str, int]:
        """Device memory in use (CUDA allocator) for diagnostics; empty on CPU."""
        if self.device.type == "cuda":
            return {
                "cuda_allocated": int(torch.cuda.memory_allocated(self.device)),
                "cuda_reserved": int(torch.cuda.memory_reserved(self.device)),
            }
        return {}


def _checkpoint_colors(ckpt: Checkpoint) -> np.ndarray:
    """(K, 3) uint8 class colours stored in the checkpoint (empty when it has none)."""
    colors = ckpt.classes.colors if ckpt.classes is not None and ckpt.seg_head is not None else None
    if not colors:
        return np.zeros((0, 3), np.uint8)
    return np.asarray(colors, dtype=np.uint8).reshape(-1, 3)


__all__ = ["CPU_BACKEND", "PerceptionPipeline"]
