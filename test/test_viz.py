"""Pictures: written, of the requested pixel size, and showing what they claim to show."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from ssl3d_ros.evaluation.viz import (
    RenderConfig, SceneOutputs, cosine_similarity_to, kmeans, nearest_point, pca_rgb, picture_set, render_views,
)
from ssl3d_ros.labels import load_class_map
from ssl3d_ros.scan import Scan


def read_rgb(path) -> np.ndarray:
    img = mpimg.imread(path)
    return (img[..., :3] * 255).round().astype(np.uint8)


def pixels_near(img: np.ndarray, rgb, tol: int = 12) -> int:
    return int((np.abs(img.astype(int) - np.asarray(rgb)).max(-1) <= tol).sum())


@pytest.fixture(scope="module")
def sim_scan() -> Scan:
    pytest.importorskip("open3d")
    from ssl3d_ros.sim import SimConfig, simulate_sequence

    return next(iter(simulate_sequence(SimConfig(scene="outdoor"), 1, 0)))


def class_embeddings(classes: np.ndarray, dims: int = 16, seed: int = 0) -> np.ndarray:
    """Embeddings that carry the class (one random centre per class) plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(classes.max()) + 1, dims))
    return (centres[classes] + 0.1 * rng.normal(size=(len(classes), dims))).astype(np.float32)


def test_ground_truth_picture_has_size_and_class_colours(sim_scan, tmp_path):
    cmap = load_class_map("sim-outdoor")
    truth = cmap.apply(sim_scan.labels)
    scene = SceneOutputs(points=sim_scan.points, valid=np.ones(len(sim_scan), bool), truth=truth, truth_map=cmap)
    written = picture_set(scene, tmp_path, colorings=["gt", "pca"], cfg=RenderConfig(width_px=900, height_px=450))
    assert set(written) == {"gt"}  # no embeddings -> pca skipped, not drawn wrong
    img = read_rgb(written["gt"])
    assert img.shape == (450, 900, 3)
    road, building = cmap.colors[cmap.class_names.index("road")], cmap.colors[cmap.class_names.index("building")]
    car = cmap.colors[cmap.class_names.index("car")]
    # The scan is mostly road and buildings: both colours cover many pixels; cars are drawn too.
    assert pixels_near(img, road) > 500
    assert pixels_near(img, building) > 150
    assert pixels_near(img, car) > 5
    # A colour of no class (pure green-cyan) is absent.
    assert pixels_near(img, (0, 255, 128), tol=5) == 0


def test_embedding_pictures_pca_kmeans_similarity(sim_scan, tmp_path):
    cmap = load_class_map("sim-outdoor")
    truth = cmap.apply(sim_scan.labels)
    emb = class_embeddings(np.clip(truth, 0, None))
    valid = truth >= 0
    car = cmap.class_names.index("car")
    query = int(np.flatnonzero(truth == car)[0])
    scene = SceneOutputs(points=sim_scan.points, valid=valid, embedding=emb, truth=truth, truth_map=cmap)
    cfg = RenderConfig(width_px=800, height_px=400)
    written = picture_set(scene, tmp_path, colorings=["pca", "kmeans", "similarity"], query_index=query, cfg=cfg,
                          prefix="t")
    assert sorted(p.name for p in written.values()) == ["t_kmeans.png", "t_pca.png", "t_similarity.png"]
    for path in written.values():
        assert read_rgb(path).shape == (400, 800, 3)
    # Similarity: the query's class is drawn at turbo's similar end (dark red), the rest at the blue end;
    # car points are a small share of the scan, so red pixels are few but present.
    sim_img = read_rgb(written["similarity"]).astype(int)
    red = ((sim_img[..., 0] > 90) & (sim_img[..., 1] < 60) & (sim_img[..., 2] < 60)).sum()
    blue = ((sim_img[..., 2] > sim_img[..., 0] + 60) & (sim_img[..., 2] > sim_img[..., 1])).sum()
    assert 10 < red < blue
    sim = cosine_similarity_to(emb, query)
    assert sim[truth == car].mean() > 0.9 > np.abs(sim[truth != car]).mean()
    # PCA image uses many distinct colours (not a flat grey).
    pca_img = read_rgb(written["pca"]).reshape(-1, 3)
    assert len(np.unique(pca_img, axis=0)) > 50


def test_pure_colourings():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 4, 3000)
    emb = class_embeddings(classes, seed=1)
    ids = kmeans(emb, 4, seed=0)
    # k-means on well-separated class embeddings recovers the classes up to renaming.
    joint = np.zeros((4, 4), int)
    np.add.at(joint, (classes, ids), 1)
    assert joint.max(1).sum() / len(classes) > 0.95
    rgb = pca_rgb(emb)
    assert rgb.dtype == np.uint8 and rgb.shape == (3000, 3)
    # Points of one class get nearly the same PCA colour, different classes different ones.
    means = np.stack([rgb[classes == c].mean(0) for c in range(4)])
    spread = np.stack([rgb[classes == c].std(0).mean() for c in range(4)])
    assert np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(4, dtype=bool)].min() > 3 * spread.max()
    pts = rng.normal(size=(100, 3)).astype(np.float32)
    assert nearest_point(pts, pts[17] + 1e-3) == 17


def test_render_rejects_mismatched_colours(tmp_path):
    with pytest.raises(ValueError, match="colors must be"):
        render_views(np.zeros((10, 3)), np.zeros((9, 3), np.uint8), tmp_path / "x.png")


def test_cli_pictures_of_a_checkpoint_on_a_simulated_scan(tmp_path):
    """ssl3d-viz end to end: the node's pipeline on a simulated scan, all five pictures, exact size;
    the predicted-class picture uses the checkpoint's class colours."""
    pytest.importorskip("open3d")
    import torch

    from ssl3d_ros.checkpoint import ClassInfo, save_checkpoint
    from ssl3d_ros.evaluation.viz import main
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.models.heads import LinearSegHead
    from ssl3d_ros.preprocessing import PreprocessConfig, feature_channels

    pre = PreprocessConfig(voxel_size=0.15, max_range=40.0, features=("xyz", "height", "intensity"), coord_scale=20.0)
    torch.manual_seed(0)
    encoder = SparseEncoder(EncoderConfig.preset("nano", in_channels=feature_channels(pre)))
    head = LinearSegHead(encoder.hypercolumn_channels, 2)
    colors = [(250, 20, 20), (20, 20, 250)]
    ckpt = save_checkpoint(tmp_path / "c.safetensors", encoder, preprocessing=pre, seg_head=head,
                           classes=ClassInfo(names=["red", "blue"], colors=colors))
    out = tmp_path / "pics"
    assert main(["--checkpoint", str(ckpt), "--sim", "outdoor", "--out", str(out), "--size", "640", "320",
                 "--query-xyz", "5", "0", "0", "--kmeans-k", "6"]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(f"sim_outdoor_0_{c}.png" for c in ("pca", "kmeans", "classes", "gt", "similarity"))
    for p in out.glob("*.png"):
        assert read_rgb(p).shape == (320, 640, 3)
    img = read_rgb(out / "sim_outdoor_0_classes.png").astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    reddish = ((r > g + 60) & (r > b + 60)).sum()
    bluish = ((b > r + 60) & (b > g + 60)).sum()
    greenish = ((g > r + 40) & (g > b + 40)).sum()
    # Predicted classes are drawn in the checkpoint's two colours (anti-aliased), nothing else coloured.
    assert reddish + bluish > 1000 and greenish == 0
    gt = read_rgb(out / "sim_outdoor_0_gt.png").astype(int)
    assert ((gt[..., 1] > gt[..., 0] + 40) & (gt[..., 1] > gt[..., 2] + 40)).sum() > 50  # vegetation is green
