"""``ssl3d-select``: which scans to label next, from bags and scan folders, by a checkpoint's embeddings.

- ``scan_refs``: where each scan comes from (file or bag, topic, index, stamp), without reading it;
- ``pooling``: the streaming pass, every scan through the node's pipeline once, kept as pooled vectors;
- ``cache``: those vectors on disk per scan, keyed by the scan and the checkpoint (reruns resume);
- ``strategies``: diversity (k-center), uncertainty, mix, and the random and uniform-in-time baselines;
- ``report``: ranked.csv, ranked.md, selection.json and a picture per chosen scan;
- ``cli``: the command line.

Imports stay light (numpy): torch loads with the pipeline, when the command runs.
"""
from .cache import POOLING_VERSION, EmbeddingCache, PooledScan, file_digest, model_key
from .cli import PROG, build_parser, check_arguments, load_pipeline, main
from .pooling import TOP_FRACTION, EmbeddingPass, embed_pool, pool_frame, voxel_entropy
from .report import CSV_COLUMNS, RankedScan, draw_pictures, picture_name, ranked_csv, ranked_markdown, write_reports
from .scan_refs import ScanRef, scan_refs, streams_of
from .strategies import (
    DEFAULT_DUPLICATE_DISTANCE, EMBEDDING_STRATEGIES, STRATEGIES, UNCERTAINTY_STRATEGIES, Selection, cosine_distance_to,
    k_center, normalised_embeddings, random_selection, select, uncertainty_ranking, uniform_in_time,
)

__all__ = [
    "POOLING_VERSION", "EmbeddingCache", "PooledScan", "file_digest", "model_key",
    "PROG", "build_parser", "check_arguments", "load_pipeline", "main",
    "TOP_FRACTION", "EmbeddingPass", "embed_pool", "pool_frame", "voxel_entropy",
    "CSV_COLUMNS", "RankedScan", "draw_pictures", "picture_name", "ranked_csv", "ranked_markdown", "write_reports",
    "ScanRef", "scan_refs", "streams_of",
    "DEFAULT_DUPLICATE_DISTANCE", "EMBEDDING_STRATEGIES", "STRATEGIES", "UNCERTAINTY_STRATEGIES", "Selection",
    "cosine_distance_to", "k_center", "normalised_embeddings", "random_selection", "select", "uncertainty_ranking",
    "uniform_in_time",
]
