"""Heads: linear segmentation outputs, PCA projection, streaming k-means with stable ids."""
from __future__ import annotations

import math

import pytest
import torch

from ssl3d_ros.labels import NO_CLASS
from ssl3d_ros.models.heads import LinearSegHead, PCAProjection, StreamingKMeans, segment_outputs


def test_segment_outputs_class_probability_and_normalised_entropy():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 50.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.5]])
    out = segment_outputs(logits)
    assert out.class_id.dtype == torch.uint8 and out.class_id.tolist() == [0, 1, 2]
    prob = torch.softmax(logits, dim=1)
    torch.testing.assert_close(out.probability, prob.max(dim=1).values)
    nats = -(prob * prob.log()).sum(dim=1)
    torch.testing.assert_close(out.entropy, nats / math.log(4))
    assert out.entropy[0] == pytest.approx(1.0) and out.entropy[1] == pytest.approx(0.0, abs=1e-6)

    masked = segment_outputs(logits, valid=torch.tensor([True, False, True]))
    assert masked.class_id.tolist() == [0, NO_CLASS, 2]
    assert masked.probability[1] == 0.0 and masked.entropy[1] == 1.0


def test_linear_head_predicts_uint8_ids_and_rejects_too_many_classes():
    head = LinearSegHead(6, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 6) * 10)
        head.bias.zero_()
    feats = torch.zeros(4, 6)
    feats[0, 2] = 1
    feats[1, 0] = 1
    feats[2, 1] = 1
    out = head.predict(feats, valid=torch.tensor([True, True, True, False]))
    assert out.class_id.tolist() == [2, 0, 1, NO_CLASS]
    assert (head.in_channels, head.num_classes) == (6, 3)
    assert set(head.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="classes"):
        LinearSegHead(6, 300)


def test_pca_reconstructs_low_rank_embeddings_and_orders_components():
    gen = torch.Generator().manual_seed(0)
    d, rank, n = 16, 3, 2000
    axes, _ = torch.linalg.qr(torch.randn(d, rank, generator=gen))
    scales = torch.tensor([5.0, 2.0, 0.5])
    latent = torch.randn(n, rank, generator=gen) * scales
    offset = torch.randn(d, generator=gen) * 3
    embeddings = latent @ axes.T + offset

    pca = PCAProjection.fit(embeddings, rank)
    assert (pca.in_channels, pca.out_channels) == (d, rank)
    torch.testing.assert_close(pca.basis.T @ pca.basis, torch.eye(rank), atol=1e-5, rtol=0)
    z = pca(embeddings)
    variances = z.var(dim=0)
    assert (variances[:-1] > variances[1:]).all()
    torch.testing.assert_close(pca.reconstruct(z), embeddings, atol=1e-3, rtol=0)
    assert float(pca.explained_variance_ratio.sum()) == pytest.approx(1.0, abs=1e-5)

    # Fewer components: reconstruction error is what the dropped component carried.
    pca2 = PCAProjection.fit(embeddings, 2)
    residual = (pca2.reconstruct(pca2(embeddings)) - embeddings).pow(2).sum(dim=1).mean()
    assert float(residual) == pytest.approx(float(latent[:, 2].var()), rel=0.1)
    # Same data, same basis (sign fixed), also after shuffling rows.
    again = PCAProjection.fit(embeddings[torch.randperm(n, generator=gen)], rank)
    torch.testing.assert_close(again.basis, pca.basis, atol=1e-4, rtol=0)


def blobs(centres: torch.Tensor, per_blob: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(per_blob)
    x = centres[labels] + spread * torch.randn(len(labels), centres.shape[1], generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return x[order], labels[order]


def test_streaming_kmeans_keeps_cluster_ids_across_similar_frames():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 8, generator=gen) * 6
    frame1, truth1 = blobs(centres, 400, 0.3, seed=2)
    frame2, truth2 = blobs(centres + 0.2, 300, 0.3, seed=3)  # the scene moved a little, new samples

    kmeans = StreamingKMeans(k=5, dim=8, seed=7)
    ids1 = kmeans.step(frame1)
    ids2 = kmeans.step(frame2)
    # Each true blob gets one id, distinct per blob, and the same id in both frames.
    blob_to_id = {}
    for blob in range(5):
        assert ids1[truth1 == blob].unique().numel() == 1
        blob_to_id[blob] = int(ids1[truth1 == blob][0])
        assert (ids2[truth2 == blob] == blob_to_id[blob]).all()
    assert len(set(blob_to_id.values())) == 5

    # Deterministic given the seed; a stored centroid set reproduces the ids.
    replay = StreamingKMeans(k=5, dim=8, seed=7)
    assert torch.equal(replay.step(frame1), ids1)
    restored = StreamingKMeans.from_centroids(kmeans.centroids)
    assert torch.equal(restored.assign(frame2), kmeans.assign(frame2))


def test_streaming_kmeans_with_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    kmeans = StreamingKMeans(k=4, dim=2, seed=0)
    ids = kmeans.step(x)
    assert ids[0] == ids[1] and ids[0] != ids[2]
    assert kmeans.step(torch.empty(0, 2)).shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        kmeans.step(torch.zeros(3, 5))
