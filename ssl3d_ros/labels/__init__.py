"""Labels and classes, shared by the node, the heads, evaluation and fine-tuning (no torch).

- :mod:`.class_ids`: ``NO_CLASS``, the uint8 class id of points without a prediction;
- :mod:`.class_maps`: dataset label ids -> class indices ``0..K-1``, names and colours;
- :mod:`.metrics`: segmentation scores on class indices (``IGNORE`` marks unlabelled ground truth);
- :mod:`.splits`: train/test splits of labelled scans.
"""
from .class_ids import NO_CLASS
from .class_maps import (
    CLASS_MAP_SUBDIR, SEMANTICKITTI_RAW, SIM_MAPS, ClassMap, ClassMapConfig, ClassSpec, available_class_maps,
    class_map_dirs, class_map_from_config, class_map_from_names, class_map_from_semantickitti_yaml, default_palette,
    load_class_map, sim_class_map,
)
from .metrics import (
    IGNORE, ScoreAccumulator, SegmentationScores, confusion_matrix, labelled_counts, r2_score, scores_from_confusion,
    segmentation_scores,
)
from .splits import SplitConfig, block_split, point_test_masks, scan_split, x_half_split

__all__ = [
    # class_ids
    "NO_CLASS",
    # class_maps
    "SEMANTICKITTI_RAW", "CLASS_MAP_SUBDIR", "SIM_MAPS", "ClassSpec", "ClassMapConfig", "ClassMap",
    "class_map_from_config", "class_map_from_names", "default_palette", "load_class_map", "sim_class_map",
    "class_map_dirs", "available_class_maps", "class_map_from_semantickitti_yaml",
    # metrics
    "IGNORE", "confusion_matrix", "labelled_counts", "SegmentationScores", "scores_from_confusion",
    "segmentation_scores", "ScoreAccumulator", "r2_score",
    # splits
    "SplitConfig", "block_split", "x_half_split", "scan_split", "point_test_masks",
]
