"""Pictures of scans (matplotlib, Agg): top-down and oblique views coloured by embeddings or classes.

Pure functions first: colourings take arrays and return (N, 3) uint8 RGB; ``render_views`` takes
points and colours and writes one PNG of an exact pixel size. The CLI (``ssl3d-viz``) only wires a
checkpoint and a scan to them. The cosine-similarity picture follows Sonata's geometric-shortcut
figure: one query point, every other point coloured by how similar its embedding is; an encoder that
learned geometry only lights up every point of the same local shape (all flat ground, all vertical
walls), one that learned semantics lights up the query's object and its class.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: robots and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..cli import EXIT_CODES_EPILOG, console_script  # noqa: E402
from ..labels import ClassMap, default_palette  # noqa: E402
from ..perception import class_color_table  # noqa: E402

log = logging.getLogger(__name__)

VIEWS = ("top", "oblique")
COLORINGS = ("pca", "kmeans", "classes", "gt", "similarity")


# --------------------------------------------------------------------------- colourings


def pca_rgb(embeddings: np.ndarray | torch.Tensor, valid: np.ndarray | None = None) -> np.ndarray:
    """First three principal components of the embeddings as RGB, each stretched between its 1st and
    99th percentile (robust to a few extreme points); invalid points grey."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    valid = np.ones(len(x), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    out = np.full((len(x), 3), 128, dtype=np.uint8)
    xv = x[torch.as_tensor(valid)]
    if len(xv) < 3:
        return out
    mean = xv.mean(0)
    q = min(3, xv.shape[1])
    _, _, v = torch.pca_lowrank(xv - mean, q=q, center=False, niter=4)
    proj = ((xv - mean) @ v[:, :q]).numpy()
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    unit = np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
    if q < 3:
        unit = np.concatenate([unit, np.full((len(unit), 3 - q), 0.5)], axis=1)
    out[valid] = (unit * 255).round().astype(np.uint8)
    return out


def kmeans(embeddings: np.ndarray | torch.Tensor, k: int, *, iters: int = 30, seed: int = 0,
           max_fit_points: int = 50_000) -> np.ndarray:
    """(N,) cluster ids of spherical k-means (cosine) fitted on a subsample, assigned to all points."""
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float32), dim=1)
    gen = torch.Generator().manual_seed(seed)
    fit = x[torch.randperm(len(x), generator=gen)[:max_fit_points]]
    k = min(k, len(fit))
    centers = fit[torch.randperm(len(fit), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = (fit @ centers.T).argmax(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, fit)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0  # re-seed empty clusters on random points instead of leaving them dead
        sums[empty] = fit[torch.randint(len(fit), (int(empty.sum()),), generator=gen)]
        centers = torch.nn.functional.normalize(sums, dim=1)
    return torch.cat([(x[i:i + 65536] @ centers.T).argmax(1) for i in range(0, len(x), 65536)]).numpy()


def cluster_rgb(cluster_ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    ids = np.asarray(cluster_ids).astype(np.int64)
    palette = default_palette(int(ids.max()) + 1 if len(ids) else 1)
    out = palette[np.clip(ids, 0, None)]
    if valid is not None:
        out[~np.asarray(valid, dtype=bool)] = 128
    return out


def class_rgb(classes: np.ndarray, class_map: ClassMap) -> np.ndarray:
    """Class colours of the map; ignored / invalid points grey."""
    return class_map.color_of(classes)


def cosine_similarity_to(embeddings: np.ndarray | torch.Tensor, query_index: int, *, center: bool = True,
                         valid: np.ndarray | None = None) -> np.ndarray:
    """(N,) cosine similarity of every embedding to the embedding of point ``query_index``.

    ``center``: subtract the mean embedding (of the ``valid`` points) first. Hypercolumns after ReLUs
    are all-positive, so raw cosines crowd into a narrow high band; centred, they spread over [-1, 1]
    and the picture shows what is *more* similar than average."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    if center:
        sel = x if valid is None else x[torch.as_tensor(np.asarray(valid, dtype=bool))]
        x = x - sel.mean(0)
    x = torch.nn.functional.normalize(x, dim=1)
    return (x @ x[query_index]).numpy()


def similarity_rgb(similarity: np.ndarray, cmap: str = "turbo", valid: np.ndarray | None = None,
                   percentiles: tuple[float, float] = (2.0, 99.5)) -> np.ndarray:
    """Similarity -> colour map RGB, stretched between two percentiles of the scan's similarities
    (blue: least similar, dark red: the most similar half percent): what matters is which points are
    most like the query, and an absolute [-1, 1] scale paints a weakly discriminative embedding flat."""
    from matplotlib import colormaps

    sim = np.asarray(similarity, dtype=np.float64)
    ref = sim if valid is None else sim[np.asarray(valid, dtype=bool)]
    low, high = (np.percentile(ref, percentiles) if len(ref) else (-1.0, 1.0))
    unit = np.clip((sim - low) / max(high - low, 1e-9), 0, 1)
    out = (colormaps[cmap](unit)[:, :3] * 255).round().astype(np.uint8)
    if valid is not None:
        out[~np.asarray(valid, dtype=bool)] = 128
    return out


def nearest_point(points: np.ndarray, query_xyz: Sequence[float]) -> int:
    return int(np.argmin(((np.asarray(points) - np.asarray(query_xyz, dtype=np.float32)) ** 2).sum(1)))


# --------------------------------------------------------------------------- rendering


@dataclass
class RenderConfig:
    width_px: int = 1600  # whole image; views side by side
    height_px: int = 800
    dpi: int = 100
    point_size: float | None = None  # marker area in points^2; None: from the point count
    max_points: int = 200_000  # random subsample beyond this (drawing time)
    oblique_azimuth_deg: float = -60.0
    oblique_elevation_deg: float = 30.0
    background: str = "white"
    # Axis limits cover this central share of the points per axis: a few returns 80 m away would
    # otherwise shrink the scene around the sensor to a dot.
    zoom_quantile: float = 0.96
    seed: int = 0


def project(points: np.ndarray, view: str, cfg: RenderConfig,
            center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Screen coordinates (N, 2) and depth (N,) (larger = nearer the viewer) of a view.

    ``top``: looking down -z; ``oblique``: a camera at the given azimuth/elevation looking at the
    scan, orthographic (distances in the picture stay comparable across the scan)."""
    p = np.asarray(points, dtype=np.float64)
    if view == "top":
        return p[:, :2], p[:, 2]
    if view != "oblique":
        raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")
    az, el = np.deg2rad(cfg.oblique_azimuth_deg), np.deg2rad(cfg.oblique_elevation_deg)
    forward = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])  # towards camera
    right = np.array([-np.sin(az), np.cos(az), 0.0])
    up = np.cross(forward, right)
    centred = p - (p.mean(0) if center is None else center)
    return np.stack([centred @ right, centred @ up], axis=1), centred @ forward


def render_views(points: np.ndarray, colors: np.ndarray, path: str | Path, *,
                 views: Sequence[str] = VIEWS, title: str = "", cfg: RenderConfig = RenderConfig(),
                 highlight: int | None = None, mask: np.ndarray | None = None) -> Path:
    """Write a PNG of ``cfg.width_px`` x ``cfg.height_px`` with one panel per view.

    colors: (N, 3) uint8 RGB. highlight: index of a point drawn as a large marker (the query point).
    mask: optional (N,) bool of points to draw (e.g. points the preprocessing kept).
    """
    points = np.asarray(points, dtype=np.float32)
    colors = np.asarray(colors)
    if colors.shape != (len(points), 3):
        raise ValueError(f"colors must be (N, 3) for {len(points)} points, got {colors.shape}")
    index = np.arange(len(points)) if mask is None else np.flatnonzero(mask)
    if len(index) > cfg.max_points:
        index = np.sort(np.random.default_rng(cfg.seed).choice(index, cfg.max_points, replace=False))
    # Sparse scans need bigger dots to read as surfaces, dense ones smaller to keep detail.
    size = cfg.point_size if cfg.point_size is not None else float(np.clip(3e4 / max(len(index), 1), 0.2, 6.0))
    fig = plt.figure(figsize=(cfg.width_px / cfg.dpi, cfg.height_px / cfg.dpi), dpi=cfg.dpi,
                     facecolor=cfg.background)
    for i, view in enumerate(views):
        ax = fig.add_axes([i / len(views), 0.0, 1.0 / len(views), 0.94 if title else 1.0])
        center = points[index].mean(0).astype(np.float64)
        xy, depth = project(points[index], view, cfg, center)
        order = np.argsort(depth, kind="stable")  # painter's order: far first, near on top
        ax.scatter(xy[order, 0], xy[order, 1], c=colors[index][order] / 255.0, s=size,
                   marker=".", linewidths=0, rasterized=True)
        lo_q = (1.0 - cfg.zoom_quantile) / 2
        lo, hi = np.quantile(xy, lo_q, axis=0), np.quantile(xy, 1.0 - lo_q, axis=0)
        if highlight is not None:
            hxy = project(points[[highlight]], view, cfg, center)[0][0]
            lo, hi = np.minimum(lo, hxy), np.maximum(hi, hxy)  # keep the query point in the picture
            ax.scatter([hxy[0]], [hxy[1]], s=220, facecolors="none", edgecolors="cyan", linewidths=2.0)
            ax.scatter([hxy[0]], [hxy[1]], s=30, c="cyan", marker="x")
        pad = 0.03 * (hi - lo).max() + 1e-3
        ax.set_xlim(lo[0] - pad, hi[0] + pad)
        ax.set_ylim(lo[1] - pad, hi[1] + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.set_axis_off()
        ax.text(0.01, 0.99, view, transform=ax.transAxes, va="top", fontsize=9, color="0.3")
    if title:
        fig.suptitle(title, fontsize=11, y=0.995)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=cfg.dpi, facecolor=fig.get_facecolor())  # no tight bbox: exact pixel size
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- a set of pictures


@dataclass
class SceneOutputs:
    """What the pictures of one scan are made from (all (N, ...) in the scan's point order)."""

    points: np.ndarray
    valid: np.ndarray  # points the model saw
    embedding: np.ndarray | None = None
    class_id: np.ndarray | None = None  # predicted, 255 invalid
    class_table: np.ndarray | None = None  # (256, 3) colour by class id
    truth: np.ndarray | None = None  # class indices of the ground truth (IGNORE where unlabelled)
    truth_map: ClassMap | None = None


def picture_set(scene: SceneOutputs, out_dir: str | Path, *, colorings: Sequence[str] = COLORINGS,
                prefix: str = "scan", kmeans_k: int = 10, query_index: int | None = None,
                cfg: RenderConfig = RenderConfig(), views: Sequence[str] = VIEWS) -> dict[str, Path]:
    """Write one PNG per requested colouring that the outputs allow; returns name -> path.

    Colourings needing something absent (``gt`` without labels, ``classes`` without predictions)
    are skipped with a log line, so one call serves labelled and unlabelled scans."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    pts, valid = scene.points, scene.valid
    for name in colorings:
        highlight = None
        if name in ("pca", "kmeans", "similarity") and scene.embedding is None:
            log.info("skipping %s: no embeddings", name)
            continue
        if name == "pca":
            colors, title = pca_rgb(scene.embedding[valid]), "embedding PCA -> RGB"
            colors = _expand(colors, valid)
        elif name == "kmeans":
            ids = kmeans(scene.embedding[valid], kmeans_k, seed=cfg.seed)
            colors, title = _expand(cluster_rgb(ids), valid), f"k-means of embeddings (k={kmeans_k})"
        elif name == "classes":
            if scene.class_id is None or scene.class_table is None:
                log.info("skipping classes: no predictions")
                continue
            colors, title = scene.class_table[scene.class_id], "predicted classes"
        elif name == "gt":
            if scene.truth is None or scene.truth_map is None:
                log.info("skipping gt: the scan has no labels or no class map was given")
                continue
            colors, title = class_rgb(scene.truth, scene.truth_map), f"ground truth ({scene.truth_map.name})"
        elif name == "similarity":
            q = query_index if query_index is not None else int(np.flatnonzero(valid)[0])
            if not valid[q]:
                raise ValueError(f"query point {q} was dropped by preprocessing; choose another")
            sim = cosine_similarity_to(scene.embedding, q, valid=valid)
            colors = similarity_rgb(sim, valid=valid)
            where = ", ".join(f"{v:.2f}" for v in pts[q])
            title, highlight = f"cosine similarity to point {q} at ({where}) m", q
        else:
            raise ValueError(f"unknown colouring {name!r}; choose from {COLORINGS}")
        written[name] = render_views(pts, colors, out_dir / f"{prefix}_{name}.png", views=views, title=title,
                                     cfg=cfg, highlight=highlight, mask=valid)
    return written


def _expand(colors_valid: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.full((len(valid), 3), 128, dtype=np.uint8)
    out[valid] = colors_valid
    return out


def scene_outputs(pipeline, scan, truth_map: ClassMap | None = None) -> SceneOutputs:
    """Run the node's pipeline on a scan (segmentation + full embeddings)."""
    result = pipeline.process(scan, segmentation=True, embeddings=True, update_clusters=True)
    truth = truth_map.apply(scan.labels) if (truth_map is not None and scan.labels is not None) else None
    return SceneOutputs(points=scan.points, valid=result.valid, embedding=result.embedding,
                        class_id=result.class_id, class_table=class_color_table(pipeline.class_colors, len(pipeline.class_names)), truth=truth, truth_map=truth_map)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl3d-viz", description="PNG pictures of a scan coloured by a "
                                     "checkpoint's embeddings (PCA, k-means, similarity to a query point), "
                                     "its predicted classes and the ground truth.",
                                     epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="a scan file, folder or bag (first scan unless --index)")
    parser.add_argument("--checkpoint", default="", help="checkpoint (default: the packaged one)")
    parser.add_argument("--index", type=int, default=0, help="which scan of the input")
    parser.add_argument("--sim", choices=["outdoor", "indoor"], help="picture a simulated scan instead")
    parser.add_argument("--sim-seed", type=int, default=0)
    parser.add_argument("--label-field")
    parser.add_argument("--class-map", help="class map of the labels, for the ground truth picture")
    parser.add_argument("--color", nargs="+", choices=COLORINGS, default=list(COLORINGS))
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
    parser.add_argument("--query-xyz", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="similarity query: the point nearest this position")
    parser.add_argument("--query-index", type=int, help="similarity query: this point index")
    parser.add_argument("--kmeans-k", type=int, default=10)
    parser.add_argument("--size", type=int, nargs=2, default=(1600, 800), metavar=("W", "H"))
    parser.add_argument("--out", default="viz")
    return parser


@console_script("ssl3d-viz")
def main(argv: Sequence[str] | None = None) -> int:
    from ..perception import PerceptionPipeline
    from ..labels import load_class_map

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.sim:
        from ..sim import SimConfig, simulate_sequence

        scan = list(simulate_sequence(SimConfig(scene=args.sim), args.index + 1, args.sim_seed))[args.index]
        prefix = f"sim_{args.sim}_{args.index}"
    elif args.input:
        from ..io import open_source

        scan = open_source(args.input, label_field=args.label_field)[args.index]
        prefix = f"{Path(args.input).name.split('.')[0]}_{args.index}"
    else:
        raise SystemExit("give an input scan or --sim")
    truth_map = load_class_map(args.class_map) if args.class_map else (load_class_map(f"sim-{args.sim}") if args.sim else None)
    pipeline = PerceptionPipeline.from_checkpoint(args.checkpoint or None, device="cpu")
    scene = scene_outputs(pipeline, scan, truth_map)
    query = args.query_index
    if args.query_xyz is not None:
        kept = np.flatnonzero(scene.valid)
        query = int(kept[nearest_point(scan.points[kept], args.query_xyz)])
    cfg = RenderConfig(width_px=args.size[0], height_px=args.size[1])
    written = picture_set(scene, args.out, colorings=args.color, prefix=prefix, kmeans_k=args.kmeans_k,
                          query_index=query, cfg=cfg, views=args.views)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
