"""Class maps over labels read from PointCloud2: raw SemanticKITTI labels keep their classes when the
label field carries instance ids in the upper 16 bits, as a real `.label` word does."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from ssl3d_ros.config import ConfigError
from ssl3d_ros.evaluation.replay import load_bag_frames
from ssl3d_ros.io import open_source
from ssl3d_ros.io.readers import semantickitti_semantic_ids
from ssl3d_ros.io.rosbag import BagWriter
from ssl3d_ros.labels import IGNORE, load_class_map


def test_semantic_ids_drop_instance_bits_of_unsigned_and_signed_words():
    semantic = np.array([0, 10, 252, 0xFFFF, 44], dtype=np.int64)
    instance = np.array([0, 1, 0x7FFF, 0x8000, 0xFFFF], dtype=np.int64)
    words = (semantic | instance << 16).astype(np.uint32)
    np.testing.assert_array_equal(semantickitti_semantic_ids(words), semantic)
    np.testing.assert_array_equal(semantickitti_semantic_ids(words.view(np.int32)), semantic)  # an INT32 field


def test_only_raw_semantickitti_maps_mask_instance_bits():
    raw, learning = load_class_map("semantickitti"), load_class_map("semantickitti-learning")
    assert raw.label_space == "semantickitti-raw"
    car_with_instance = 10 | 3 << 16
    assert raw.apply(np.array([car_with_instance]))[0] == raw.class_names.index("car")
    assert learning.apply(np.array([1 | 3 << 16]))[0] == IGNORE  # not a learning id: ignored, not folded


def test_raw_labels_with_instance_ids_in_a_bag_keep_every_class(shared_data, tmp_path):
    """A real SemanticKITTI scan, its labels back in raw ids (learning_map_inv) with instance ids set,
    written to a bag as UINT32 and INT32 label fields: replay's reader scores every point as its class."""
    folder = shared_data / "lidar" / "semantickitti"
    scan = open_source(folder / "000700.points.npy")[0]
    inverse = yaml.safe_load((folder / "semantic-kitti.yaml").read_text())["learning_map_inv"]
    to_raw = np.zeros(max(inverse) + 1, dtype=np.int64)
    for learning_id, raw_id in inverse.items():
        to_raw[learning_id] = raw_id
    learning_ids = scan.labels.astype(np.int64)
    expected = load_class_map("semantickitti-learning").apply(learning_ids)
    # cars, bicycles, other vehicles, people: the instance classes the issue lost
    assert [(expected == k).sum() for k in (0, 1, 4, 5)] == [1654, 26, 43, 53]
    index = np.arange(len(scan), dtype=np.int64)
    raw_ids = to_raw[learning_ids]
    bag = tmp_path / "raw_labels"
    with BagWriter(bag) as writer:
        small = raw_ids | ((index % 500) + 1) << 16  # instance ids as SemanticKITTI has them
        scan.labels = small.astype(np.int32)
        writer.write_scan("/u32/points", scan, label_dtype=np.uint32)
        large = raw_ids | ((index % 0xFFFF) + 1) << 16  # up to 0xFFFF: negative as INT32
        scan.labels = large.astype(np.uint32).view(np.int32)
        assert scan.labels.min() < 0
        writer.write_scan("/i32/points", scan, label_dtype=np.int32)
    raw_map = load_class_map("semantickitti")
    assert raw_map.class_names == load_class_map("semantickitti-learning").class_names
    for topic in ("/u32/points", "/i32/points"):
        frames, _, _ = load_bag_frames(bag, topic, "label", raw_map)
        np.testing.assert_array_equal(frames[0].truth, expected, err_msg=topic)


def test_unknown_class_map_names_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))  # an index without ssl3d_ros
    with pytest.raises(ConfigError) as info:
        load_class_map("no-such-map")
    message = str(info.value)
    assert message.startswith("unknown class map 'no-such-map'; named maps: [")
    assert "config/classes" in message and "share/ssl3d_ros/config/classes" in message
    assert "ament index:" in message and "ssl3d_ros" in message
