"""Checkpoints: real SparseEncoder weights written to safetensors and loaded back, and every way a
file can be wrong (missing, truncated, corrupt, mismatched, a malicious pickle) refused by name."""
from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ssl3d_ros.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    ClassInfo,
    add_heads,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from ssl3d_ros.config import to_dict
from ssl3d_ros.models.encoder import SparseEncoder
from ssl3d_ros.models.heads import LinearSegHead, PCAProjection, StreamingKMeans
from ssl3d_ros.preprocessing import PreprocessConfig, collate, preprocess, unpool
from ssl3d_ros.scan import Scan

from builders import PRE, rewrite, tiny_encoder

CLASSES = ClassInfo(names=["ground", "wall", "thing"], colors=[(0, 255, 0), (128, 128, 128), (255, 0, 0)], ignore_index=0)


def small_scan() -> Scan:
    rng = np.random.default_rng(0)
    points = rng.uniform(-4, 4, size=(1200, 3)).astype(np.float32)
    return Scan(points=points, fields={"intensity": rng.uniform(0, 255, 1200).astype(np.float32)}, source="small")


def hypercolumn(encoder: SparseEncoder, pre: PreprocessConfig) -> torch.Tensor:
    """Per-point hypercolumn of the small scan, in input order (what the node publishes)."""
    vox = preprocess(small_scan(), pre)
    out = encoder.infer(collate([vox]))
    per_point = unpool(out, vox.point_voxel)
    assert torch.equal(per_point, unpool(encoder.hypercolumn(out), vox.point_voxel))
    assert per_point.shape == (len(vox.point_voxel), encoder.hypercolumn_channels)
    return per_point


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint with every head, and the objects it was written from."""
    folder = tmp_path_factory.mktemp("ckpt")
    encoder = tiny_encoder()
    channels = encoder.hypercolumn_channels
    torch.manual_seed(1)
    seg_head = LinearSegHead(channels, len(CLASSES.names))
    embeddings = torch.randn(500, channels)
    pca = PCAProjection.fit(embeddings, 3)
    kmeans = StreamingKMeans(4, channels, seed=0)
    kmeans.step(embeddings)
    path = save_checkpoint(
        folder / "model.safetensors", encoder, preprocessing=PRE,
        recipe={"name": "sonata", "config": {"epochs": 2, "lr": 1e-3}},
        training_data={"sources": ["kitti/004139.bin"], "scans": 1},
        classes=CLASSES, seg_head=seg_head, pca=pca, kmeans=kmeans,
        extra_tensors={"stats.feature_mean": torch.arange(4.0)},
    )
    return {"path": path, "encoder": encoder, "seg_head": seg_head, "pca": pca, "kmeans": kmeans}


def test_round_trip_gives_identical_outputs_and_metadata(saved, tmp_path):
    ckpt = load_checkpoint(saved["path"])
    assert not ckpt.encoder.training and ckpt.encoder_config.backend == "auto"
    assert ckpt.preprocessing == PRE and ckpt.classes == CLASSES
    assert ckpt.class_names == CLASSES.names and ckpt.class_colors == CLASSES.colors
    expected = hypercolumn(saved["encoder"], PRE)
    assert torch.equal(hypercolumn(ckpt.encoder, ckpt.preprocessing), expected)
    # The backend is chosen at load time; same weights, same function up to summation order.
    pure_torch = load_checkpoint(saved["path"], backend="torch")
    assert pure_torch.encoder_config.backend == "torch"
    torch.testing.assert_close(hypercolumn(pure_torch.encoder, PRE), expected, atol=1e-4, rtol=1e-4)
    for name, value in saved["encoder"].state_dict().items():
        assert torch.equal(ckpt.encoder.state_dict()[name], value), name
    assert torch.equal(ckpt.seg_head.weight, saved["seg_head"].weight) and torch.equal(ckpt.seg_head.bias, saved["seg_head"].bias)
    assert torch.equal(ckpt.pca.basis, saved["pca"].basis) and torch.equal(ckpt.pca.mean, saved["pca"].mean)
    assert torch.equal(ckpt.kmeans_centroids, saved["kmeans"].centroids)
    assert torch.equal(ckpt.kmeans().centroids, saved["kmeans"].centroids)
    assert torch.equal(ckpt.extra_tensors["stats.feature_mean"], torch.arange(4.0))
    assert ckpt.recipe.name == "sonata" and ckpt.recipe.config["epochs"] == 2
    assert ckpt.training_data == {"sources": ["kitti/004139.bin"], "scans": 1}
    meta = ckpt.meta  # typed; the stored document is the same data
    assert meta.format_version == 1 and meta.ssl3d_ros_version and meta.created
    assert meta.encoder == saved["encoder"].cfg and read_metadata(saved["path"])["encoder"] == to_dict(saved["encoder"].cfg)
    assert to_dict(meta.heads.seg) == {"in_channels": saved["encoder"].hypercolumn_channels, "num_classes": 3, "input": "hypercolumn"}
    assert to_dict(meta) == read_metadata(saved["path"])
    assert ckpt.kmeans_input == meta.kmeans_input == "hypercolumn"
    assert sorted(p.name for p in saved["path"].parent.iterdir()) == ["model.safetensors"]  # no temp files left


def test_missing_empty_truncated_and_garbage_files_are_refused_by_name(saved, tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: checkpoint file not found"):
        load_checkpoint(missing)
    data = saved["path"].read_bytes()
    cases = {
        "empty.safetensors": (b"", "empty or truncated"),
        "four.safetensors": (data[:4], "empty or truncated"),
        "header_cut.safetensors": (data[:200], "not a safetensors checkpoint or truncated"),
        "data_cut.safetensors": (data[: len(data) - 100], "truncated: tensor data needs"),
        "garbage.safetensors": (np.random.default_rng(0).bytes(4096), "not a safetensors checkpoint"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: .*{reason}"):
            load_checkpoint(path)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.safetensors: .*not an ssl3d_ros checkpoint"):
        load_checkpoint(foreign)


def test_mismatched_weights_config_and_heads_are_named(saved, tmp_path):
    src = saved["path"]
    document = read_metadata(src)

    wider = json.loads(json.dumps(document))
    wider["encoder"]["stage_channels"] = [8, 24]
    with pytest.raises(CheckpointError, match=r"wider.safetensors: encoder weights do not match.*shape mismatch.*stages\.1"):
        load_checkpoint(rewrite(src, tmp_path / "wider.safetensors", document=wider))

    tensors = dict(load_file(src))
    dropped = sorted(k for k in tensors if k.startswith("encoder.stem_conv"))[0]
    del tensors[dropped]
    with pytest.raises(CheckpointError, match=rf"missing 1: \['{dropped[len('encoder.'):]}'\]"):
        load_checkpoint(rewrite(src, tmp_path / "dropped.safetensors", tensors=tensors))

    unknown = dict(document, learning_rate=0.1)
    with pytest.raises(CheckpointError, match=r"unknown.safetensors: invalid checkpoint metadata.*learning_rate"):
        load_checkpoint(rewrite(src, tmp_path / "unknown.safetensors", document=unknown))

    fewer_classes = json.loads(json.dumps(document))
    fewer_classes["classes"] = {"names": ["a", "b"], "colors": None, "ignore_index": None}
    with pytest.raises(CheckpointError, match=r"fewer.safetensors: heads.seg says 3 classes.*2 class names"):
        load_checkpoint(rewrite(src, tmp_path / "fewer.safetensors", document=fewer_classes))

    other_features = json.loads(json.dumps(document))
    other_features["preprocessing"]["features"] = ["xyz", "intensity", "range"]
    with pytest.raises(CheckpointError, match=r"features.safetensors: encoder in_channels=4 .* give 5"):
        load_checkpoint(rewrite(src, tmp_path / "features.safetensors", document=other_features))

    tensors = dict(load_file(src))
    tensors["head.seg.weight"] = tensors["head.seg.weight"][:, :5].contiguous()
    with pytest.raises(CheckpointError, match=r"seghead.safetensors: segmentation head weight \(3, 5\)"):
        load_checkpoint(rewrite(src, tmp_path / "seghead.safetensors", tensors=tensors))

    tensors = dict(load_file(src))
    name = next(k for k in tensors if k.startswith("encoder.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"nan.safetensors: encoder weights contain NaN"):
        load_checkpoint(rewrite(src, tmp_path / "nan.safetensors", tensors=tensors))

    future = dict(document, format_version=99)
    with pytest.raises(CheckpointError, match=r"future.safetensors: format_version 99 is newer"):
        load_checkpoint(rewrite(src, tmp_path / "future.safetensors", document=future))


class CreatesMarker:
    """Unpickling this object opens (creates) the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    # The payload is live: unpickling it (as torch.load(weights_only=False) would) creates its marker.
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(CreatesMarker(control))).close()
    assert control.exists()

    marker = tmp_path / "pwned_marker"
    raw_pickle = tmp_path / "model.pkl"
    raw_pickle.write_bytes(pickle.dumps({"encoder": CreatesMarker(marker)}, protocol=4))
    torch_zip = tmp_path / "model.pt"
    torch.save({"state_dict": CreatesMarker(marker)}, torch_zip)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(torch_zip.read_bytes())

    for path, kind in ((raw_pickle, "a Python pickle"), (torch_zip, "a zip archive"), (disguised, "a zip archive")):
        with pytest.raises(CheckpointError, match=rf"{path.name}: {kind}.*refusing"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError):
            read_metadata(path)
    assert not marker.exists()


def test_failed_write_leaves_the_earlier_checkpoint_intact(saved, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(saved["path"].read_bytes())
    before = path.read_bytes()
    other = tiny_encoder(seed=5)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for target in ("replace", "fsync"):  # full disk at the flush, or a failed rename
        with monkeypatch.context() as patch:
            patch.setattr(os, target, disk_full)
            with pytest.raises(CheckpointError, match=r"model.safetensors: could not write checkpoint \(No space left"):
                save_checkpoint(path, other, preprocessing=PRE)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert load_checkpoint(path).seg_head is not None


def test_save_refuses_inconsistent_heads(tmp_path):
    encoder = tiny_encoder()
    with pytest.raises(CheckpointError, match="needs class names"):
        save_checkpoint(tmp_path / "a.safetensors", encoder, preprocessing=PRE, seg_head=LinearSegHead(encoder.hypercolumn_channels, 3))
    with pytest.raises(CheckpointError, match=r"b.safetensors: segmentation head weight \(3, 7\)"):
        save_checkpoint(tmp_path / "b.safetensors", encoder, preprocessing=PRE, classes=CLASSES, seg_head=LinearSegHead(7, 3))
    with pytest.raises(CheckpointError, match="in_channels=4 .* give 7"):
        save_checkpoint(tmp_path / "c.safetensors", encoder, preprocessing=PreprocessConfig(features=("xyz", "rgb", "intensity")))
    with pytest.raises(CheckpointError, match="not plain JSON"):
        save_checkpoint(tmp_path / "d.safetensors", encoder, preprocessing=PRE, training_data={"scans": float("nan")})
    assert not any(tmp_path.iterdir())


def test_add_heads_writes_a_probe_into_a_checkpoint(saved, tmp_path):
    bare = save_checkpoint(tmp_path / "bare.safetensors", saved["encoder"], preprocessing=PRE)
    assert load_checkpoint(bare).seg_head is None
    probe = LinearSegHead(saved["encoder"].hypercolumn_channels, 2)
    out = add_heads(bare, tmp_path / "probed.safetensors", seg_head=probe, classes=["road", "car"], pca=saved["pca"])
    ckpt = load_checkpoint(out)
    assert ckpt.class_names == ["road", "car"] and torch.equal(ckpt.seg_head.weight, probe.weight)
    assert torch.equal(ckpt.pca.basis, saved["pca"].basis)
    for name, value in saved["encoder"].state_dict().items():
        assert torch.equal(ckpt.encoder.state_dict()[name], value), name
    # In place, replacing the head; the class count must follow.
    add_heads(out, out, seg_head=LinearSegHead(probe.in_features, 3), classes=CLASSES)
    assert load_checkpoint(out).seg_head.num_classes == 3
    with pytest.raises(CheckpointError, match="does not match 2 classes"):
        add_heads(out, out, seg_head=LinearSegHead(probe.in_features, 5), classes=["a", "b"])


def test_saved_checkpoint_is_readable_by_others_like_any_new_file(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay owner-only."""
    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "shared.safetensors", tiny_encoder(), preprocessing=PRE)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
