"""``ssl3d-select``: which scans of your bags and folders to label next, ranked, with a picture of each.

    ssl3d-select /bags/drive_01 /bags/drive_02 --topics /velodyne_points --checkpoint runs/sonata/encoder.safetensors \\
        --budget 10 --strategy diversity --seed 0 --out selection --cache selection_cache
    ssl3d-select SEQ/00 SEQ/01 --checkpoint runs/ft/model.safetensors --budget 5 --strategy mix --out sel_mix

Every scan of the inputs (rosbag2 folders or .mcap/.db3 files, folders and files of any reader's format)
goes through the checkpoint's encoder once, with the node's preprocessing, and is kept only as its mean
pooled hypercolumn (and, with a segmentation head, its entropy): memory stays bounded on long bags.
Those vectors are cached per scan in --cache (default OUT/cache), keyed by the scan (path, size and time of
a file; bag, topic, message number and stamp) and the checkpoint's bytes, so a rerun, another strategy or
another budget on the same data encodes only scans it has not seen.

Strategies (all seeded: the same seed gives the same ranking):
  diversity     greedy k-center on the pooled embeddings (each channel standardised over the pool, unit
                length; cosine distance): the seed draws the first scan, each next one is the scan
                farthest from all chosen so far
  uncertainty   the scans the segmentation head is least sure of (--uncertainty mean: mean normalised
                entropy over the scan's voxels; top: over its most uncertain tenth); needs a head
  mix           uncertainty-weighted k-center: the most uncertain first, then the largest distance to the
                chosen x uncertainty; needs a head
  random        K scans drawn by the seed (baseline)
  uniform-time  K scans evenly spaced over each folder's file order / each bag topic's time order, the
                budget shared by stream length; the seed sets where the spacing starts (baseline)

Near-duplicates: diversity, uncertainty and mix never choose a scan within cosine distance
--duplicate-distance of one already chosen (default 0.05, measured on SemanticKITTI: copies of a scan lie
at 0, 4 of 28 pairs of frames 0.2 s apart at 0.007-0.05 and the others at 0.08-1.1, different drives at
0.17 or more); when every scan left is that close to a chosen one they stop short of the budget and say
so. The baselines do not apply it.

Output: OUT/ranked.csv (rank, source, topic, index, stamp_ns, score, uncertainty, voxels, picture),
OUT/ranked.md, OUT/selection.json (the run and every row) and OUT/pictures/ (per chosen scan: embedding PCA
colours and, with a head, the predicted classes). Unreadable scans are logged, counted and left out.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from ...cli import EXIT_CODES_EPILOG, console_script
from ...config import ConfigError
from .strategies import DEFAULT_DUPLICATE_DISTANCE, STRATEGIES, UNCERTAINTY_STRATEGIES

PROG = "ssl3d-select"
_log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", ""),
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + EXIT_CODES_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="PATH",
                   help="rosbag2 folders or .mcap/.db3 files, scan files or folders of them (any reader's format)")
    p.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="PointCloud2 topics of the bags (default: all)")
    p.add_argument("--checkpoint", default="", help="encoder or node checkpoint (default: the packaged model)")
    p.add_argument("--budget", type=int, required=True, metavar="K", help="how many scans to choose")
    p.add_argument("--strategy", choices=STRATEGIES, default="diversity", help="how to choose (default: diversity)")
    p.add_argument("--uncertainty", choices=["mean", "top"], default="mean",
                   help="per-scan uncertainty of uncertainty/mix: mean entropy of every voxel, or of the top tenth")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--duplicate-distance", type=float, default=DEFAULT_DUPLICATE_DISTANCE, metavar="D",
                   help=f"cosine distance below which two scans are near-duplicates (default {DEFAULT_DUPLICATE_DISTANCE:g})")
    p.add_argument("--out", type=Path, required=True, help="output folder (ranked.csv, ranked.md, selection.json, pictures/)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder of per-scan pooled embeddings (default OUT/cache)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="inference device (default cpu)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="torch CPU threads (0: torch's default, one per core)")
    p.add_argument("--no-pictures", action="store_true", help="write the lists only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before any file is opened or model loaded."""
    if args.budget < 1:
        raise ConfigError(f"--budget: must be at least 1 scan, got {args.budget}")
    if not args.duplicate_distance >= 0:
        raise ConfigError(f"--duplicate-distance: must be >= 0, got {args.duplicate_distance}")
    if args.threads < 0:
        raise ConfigError(f"--threads: must be >= 0, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(20, "not a folder (--out)", str(args.out))


def load_pipeline(checkpoint: str, device: str, strategy: str):
    """The node's pipeline with the full hypercolumn as embedding; a head is required by the uncertainty
    strategies (ConfigError naming the checkpoint otherwise)."""
    import dataclasses

    from ...checkpoint import packaged_checkpoint
    from ...perception import NodeConfig, PerceptionPipeline

    cfg = NodeConfig()
    cfg = dataclasses.replace(cfg, embeddings=dataclasses.replace(cfg.embeddings, dims=0))
    path = Path(checkpoint) if checkpoint else packaged_checkpoint()
    pipeline = PerceptionPipeline.from_checkpoint(path, device=device, overrides=cfg)
    for warning in pipeline.warnings:
        _log.warning("%s", warning)
    if strategy in UNCERTAINTY_STRATEGIES and pipeline.seg_head is None:
        raise ConfigError(f"{path}: has no segmentation head, and --strategy {strategy} ranks scans by the head's "
                          "entropy (give a node checkpoint from ssl3d-finetune or ssl3d-probe --write-head, "
                          "or use --strategy diversity)")
    return pipeline, path


@console_script(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check_arguments(args)

    import numpy as np

    from ...io import NoScansError, open_sources
    from .cache import EmbeddingCache, file_digest, model_key
    from .pooling import embed_pool
    from .report import RankedScan, draw_pictures, write_reports
    from .scan_refs import scan_refs, streams_of
    from .strategies import normalised_embeddings, select

    pool = open_sources(args.inputs, topics=args.topics)  # missing paths, unopenable bags: one line, exit 2
    refs = scan_refs(pool, args.inputs)
    if not refs:
        raise NoScansError(f"{' '.join(args.inputs)}: no scans in the inputs")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pipeline, checkpoint = load_pipeline(args.checkpoint, args.device, args.strategy)
    digest = file_digest(checkpoint)
    cache = EmbeddingCache(args.cache if args.cache is not None else args.out / "cache",
                           model_key(digest, str(pipeline.dtype).removeprefix("torch.")))
    has_head = pipeline.seg_head is not None
    embedded = embed_pool(pipeline, pool, refs, cache, segmentation=has_head, progress=not args.no_progress)
    kept = embedded.kept
    if not kept:
        where, why = embedded.skipped[0]
        raise NoScansError(f"{' '.join(args.inputs)}: none of the {len(refs)} scans could be used "
                           f"(first: {where}: {why})")
    if len(kept) < args.budget:
        _log.warning("the budget of %d scans is more than the %d usable scans: choosing among all of them",
                    args.budget, len(kept))

    pooled = [embedded.pooled[i] for i in kept]
    vectors = normalised_embeddings(np.stack([p.mean for p in pooled]))
    uncertainty = np.array([p.uncertainty(args.uncertainty) for p in pooled], dtype=np.float64)
    local = {position: k for k, position in enumerate(kept)}
    streams = [[local[p] for p in stream if p in local] for stream in streams_of(refs)]
    selection = select(args.strategy, args.budget, args.seed, [s for s in streams if s], vectors=vectors,
                       uncertainty=uncertainty if has_head else None, duplicate_distance=args.duplicate_distance)
    if selection.note:
        _log.warning("%s", selection.note)

    rows, positions = [], []
    for rank, (k, score) in enumerate(zip(selection.indices, selection.scores), start=1):
        ref, scan = refs[kept[k]], pooled[k]
        rows.append(RankedScan(rank=rank, source=ref.location, topic=ref.topic, index=ref.index,
                               stamp_ns=scan.stamp_ns, score=score, uncertainty=float(uncertainty[k]),
                               voxels=scan.voxels))
        positions.append(ref.position)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_pictures:
        draw_pictures(pipeline, pool, positions, rows, args.out)
    summary = {
        "command": [PROG, *(sys.argv[1:] if argv is None else list(argv))],
        "strategy": args.strategy, "uncertainty": args.uncertainty, "seed": args.seed, "budget": args.budget,
        "duplicate_distance": args.duplicate_distance, "checkpoint": str(checkpoint), "checkpoint_sha256": digest,
        "inputs": list(args.inputs), "topics": args.topics, "pool": len(refs), "usable": len(kept),
        "encoded": embedded.encoded, "cached": embedded.cached,
        "skipped": [{"scan": where, "why": why} for where, why in embedded.skipped],
        "chosen": len(rows), "note": selection.note,
    }
    paths = write_reports(args.out, rows, summary)
    print(f"pool: {len(refs)} scans ({embedded.encoded} encoded, {embedded.cached} from the cache, "
          f"{len(embedded.skipped)} left out)")
    print(f"chosen: {len(rows)} of {args.budget} ({args.strategy}, seed {args.seed})")
    for row in rows:
        print(f"  {row.rank:3d}  {row.source}" + (f"  {row.topic} #{row.index}" if row.topic else ""))
    print(f"ranked list: {paths['markdown']} and {paths['csv']}")
    return 0



__all__ = ["PROG", "build_parser", "check_arguments", "load_pipeline", "main"]
