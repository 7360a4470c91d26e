"""Self-describing checkpoints: one ``.safetensors`` file with the weights and a JSON document.

- :mod:`.format`: the file, written atomically and read without unpickling (``save_checkpoint``,
  ``load_checkpoint``, ``add_heads``, ``read_meta``, ``read_metadata``; :class:`Checkpoint`);
- :mod:`.meta`: the typed JSON document (:class:`CheckpointMeta`) and the safetensors header, read
  without trusting either; :class:`CheckpointError`, the one error of the package;
- :mod:`.validation`: the one consistency check of document against tensor shapes, run by save and load;
- :mod:`.packaged`: the default checkpoint shipped in ``ssl3d_ros/data``.

Importers outside the package use ``from ssl3d_ros.checkpoint import …``.
"""
from .format import Checkpoint, add_heads, load_checkpoint, read_meta, read_metadata, save_checkpoint
from .meta import (
    DTYPE_BYTES, FORMAT_VERSION, MAX_HEADER_BYTES, MAX_JSON_DEPTH, METADATA_KEY, TRAINING_STATE_KEY, CheckpointError,
    CheckpointMeta, ClassInfo, Header, HeadsInfo, KMeansInfo, NoveltyInfo, PCAInfo, RecipeInfo, SegHeadInfo, TensorSpec, document,
    json_depth, parse_json, parse_meta, read_header,
)
from .packaged import PACKAGED_CHECKPOINT, packaged_checkpoint
from .validation import (
    ENCODER_PREFIX, KMEANS_CENTROIDS, MAX_ENCODER_PARAMETERS, NOVELTY_PREFIX, NOVELTY_TENSORS, PCA_PREFIX,
    PCA_TENSORS, RESERVED_PREFIXES, SEG_HEAD_PREFIX, SEG_HEAD_TENSORS, Dtypes, Shapes, check_contents,
    check_encoder_shapes, check_finite, check_novelty_values, expected_encoder_shapes, hypercolumn_channels,
)

__all__ = [
    # format
    "Checkpoint", "add_heads", "load_checkpoint", "read_meta", "read_metadata", "save_checkpoint",
    # meta
    "FORMAT_VERSION", "METADATA_KEY", "TRAINING_STATE_KEY", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "DTYPE_BYTES",
    "CheckpointError",
    "CheckpointMeta", "ClassInfo", "HeadsInfo", "KMeansInfo", "NoveltyInfo", "PCAInfo", "RecipeInfo", "SegHeadInfo",
    "Header",
    "TensorSpec", "document", "json_depth", "parse_json", "parse_meta", "read_header",
    # validation
    "ENCODER_PREFIX", "KMEANS_CENTROIDS", "MAX_ENCODER_PARAMETERS", "NOVELTY_PREFIX", "NOVELTY_TENSORS", "PCA_PREFIX",
    "PCA_TENSORS", "RESERVED_PREFIXES", "SEG_HEAD_PREFIX", "SEG_HEAD_TENSORS", "Dtypes", "Shapes", "check_contents",
    "check_encoder_shapes", "check_finite", "check_novelty_values", "expected_encoder_shapes", "hypercolumn_channels",
    # packaged
    "PACKAGED_CHECKPOINT", "packaged_checkpoint",
]
