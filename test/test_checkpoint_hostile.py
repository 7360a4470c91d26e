"""Hostile checkpoints: files written to make the loader recurse, crash or allocate gigabytes. Each is
refused with a CheckpointError naming the file and the problem, before anything large is allocated;
the node refuses them with exit 2 and one line. (Pickles: test_checkpoint.py and
test_reliability_faults.py.)"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssl3d_ros.checkpoint import METADATA_KEY, CheckpointError, load_checkpoint, read_meta, read_metadata, save_checkpoint
from ssl3d_ros.checkpoint import MAX_ENCODER_PARAMETERS, check_encoder_shapes, expected_encoder_shapes
from ssl3d_ros.config import to_dict
from ssl3d_ros.models.encoder import EncoderConfig

from builders import PRE, tiny_encoder

REPO = Path(__file__).resolve().parents[1]
IN_NETNS = os.environ.get("SSL3D_IN_NETNS") == "1"
DEEP = 200_000


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("hostile") / "good.safetensors", tiny_encoder(), preprocessing=PRE)


def with_document_text(src: Path, dst: Path, text: str, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """``src``'s tensors (plus ``extra``) under a raw ``ssl3d`` document text."""
    save_file({**load_file(src), **(extra or {})}, dst, metadata={METADATA_KEY: text})
    return dst


def with_encoder(src: Path, dst: Path, extra: dict[str, torch.Tensor] | None = None, **encoder) -> Path:
    """``src`` with fields of the document's ``encoder`` section replaced."""
    document = read_metadata(src)
    document["encoder"].update(encoder)
    if extra:
        document["extra_tensors"] = sorted(extra)
    return with_document_text(src, dst, json.dumps(document), extra)


def raw_file(dst: Path, header: dict, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    dst.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return dst


def refused(path: Path, pattern: str) -> None:
    """Both the loader and the metadata readers refuse ``path`` naming it and the problem."""
    for read in (load_checkpoint, read_meta):
        with pytest.raises(CheckpointError, match=rf"{path.name}: .*{pattern}"):
            read(path)


def test_deeply_nested_json_is_refused_without_recursing(good, tmp_path):
    document = read_metadata(good)
    deep_value = "[" * DEEP + "]" * DEEP
    nested = with_document_text(good, tmp_path / "nested.safetensors",
                                json.dumps(document)[:-1] + f', "deep": {deep_value}}}')
    refused(nested, rf"'ssl3d' metadata is not valid JSON \(nested {DEEP + 1} levels deep")
    with pytest.raises(CheckpointError, match="nested"):
        read_metadata(nested)
    # brackets inside strings do not nest: a long string of them is fine for the scan
    quoted = with_document_text(good, tmp_path / "quoted.safetensors",
                                json.dumps({**document, "created": deep_value}))
    assert load_checkpoint(quoted).meta.created == deep_value
    # the same in the safetensors header itself, outside the document
    outer = raw_file(tmp_path / "outer.safetensors",
                     {"__metadata__": {METADATA_KEY: "{}"}, "x": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}})
    text = outer.read_bytes()[8:].decode()[:-1] + f', "deep": {deep_value}}}'
    outer.write_bytes(len(text).to_bytes(8, "little") + text.encode() + bytes(4))
    refused(outer, rf"corrupt safetensors header \(not JSON: nested {DEEP + 1} levels deep")


def test_impossible_numbers_in_the_architecture_are_refused_by_name(good, tmp_path):
    cases = {
        "negative": ({"stem_channels": -16}, r"stem_channels \(-16,\): every entry must be in 1\.\."),
        "zero_heads": ({"num_heads": [0, 0]}, r"num_heads \(0, 0\): every entry must be in 1\.\."),
        "no_stages": ({"stage_channels": [], "stage_depths": [], "num_heads": [], "decoder_channels": []},
                      r"0 stages"),
        "kernel": ({"stem_kernel": -1}, r"stem_kernel must be 1, 3 or 5"),
        "depth": ({"stage_depths": [1, -3]}, r"stage_depths \(1, -3\): every entry must be in 0\.\."),
        "millions": ({"stage_channels": [4_194_304, 4_194_304]}, r"stage_channels .* every entry must be in 1\.\."),
    }
    for name, (fields, pattern) in cases.items():
        refused(with_encoder(good, tmp_path / f"{name}.safetensors", **fields), rf"invalid checkpoint metadata: .*{pattern}")
    text = json.dumps(read_metadata(good)).replace('"mlp_ratio": 2.0', '"mlp_ratio": NaN')
    refused(with_document_text(good, tmp_path / "nan.safetensors", text), r"not valid JSON \(non-finite number NaN")
    text = json.dumps(read_metadata(good)).replace('"patch_size": 32', '"patch_size": ' + "9" * 5000)
    refused(with_document_text(good, tmp_path / "digits.safetensors", text), r"not valid JSON \(.*digits")


def test_more_blocks_than_stored_tensors_are_refused_before_building(good, tmp_path):
    deep = with_encoder(good, tmp_path / "deep.safetensors", stage_depths=[64, 64])
    refused(deep, r"declares 131 layers and blocks, the file holds \d+ encoder tensors")


def test_header_shapes_must_be_backed_by_their_bytes(good, tmp_path):
    """A header may claim any shape; the claim must match its byte span, which must lie in the file."""
    wide = EncoderConfig.preset("nano", in_channels=4, stage_channels=(8192, 8192), stage_depths=(1, 1),
                                attention_stages=(1,), decoder_channels=(8, 16), patch_size=32)
    document = {**read_metadata(good), "encoder": to_dict(wide)}
    entries = {f"encoder.{name}": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 4]}
               for name, shape in expected_encoder_shapes(wide).items()}
    claimed = raw_file(tmp_path / "claimed.safetensors", {"__metadata__": {METADATA_KEY: json.dumps(document)}, **entries},
                       bytes(4))
    refused(claimed, r"corrupt safetensors header entry for tensor 'encoder\..*needs \d+ bytes, its data span has 4")
    for name, entry in (("dtype", {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}),
                        ("negative", {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}),
                        ("offsets", {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]})):
        bad = raw_file(tmp_path / f"{name}.safetensors", {"__metadata__": {METADATA_KEY: "{}"}, "x": entry}, bytes(4))
        refused(bad, r"corrupt safetensors header entry for tensor 'x'")


def test_an_architecture_over_the_parameter_limit_is_refused_from_shapes_alone(tmp_path):
    """Stored shapes equal to the declared ones still do not get a 35-billion-parameter encoder built."""
    huge = EncoderConfig.preset("base", stage_channels=(8192,) * 4, use_decoder=True)
    shapes = expected_encoder_shapes(huge)  # meta device: no storage behind these
    assert sum(torch.Size(s).numel() for s in shapes.values()) > MAX_ENCODER_PARAMETERS
    with pytest.raises(CheckpointError, match=r"huge.safetensors: the metadata declares an encoder of [\d,]+ parameters, more"):
        check_encoder_shapes(tmp_path / "huge.safetensors", huge, shapes)


MEASURE = textwrap.dedent("""
    import json, resource, sys
    from ssl3d_ros.checkpoint import CheckpointError, load_checkpoint

    good, *hostile = sys.argv[1:]
    load_checkpoint(good)  # torch, the encoder classes and the allocator warmed up
    result = {}
    for path in hostile:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_checkpoint(path)
            outcome = "loaded"
        except CheckpointError as exc:
            outcome = str(exc)
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        result[path] = {"outcome": outcome, "grew_kb": grew_kb}
    print(json.dumps(result))
""")


def test_wide_declarations_are_refused_without_allocating_them(good, tmp_path):
    """The issue's files: 1 MB declaring 8192-channel stages (built first: 4.4 GB) and 4 M channels
    (6.1 GB). Refused in a fresh process whose peak RSS grows by less than 64 MB."""
    padding = {"padding": torch.zeros(256 * 1024)}  # 1 MB of tensor data
    cases = {
        with_encoder(good, tmp_path / "wide.safetensors", padding, stage_channels=[8192, 8192]):
            "encoder weights do not match the architecture in the metadata: .*shape mismatch",
        with_encoder(good, tmp_path / "wider.safetensors", padding, stage_channels=[4_194_304, 4_194_304]):
            "invalid checkpoint metadata: .*stage_channels",
    }
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(good), *map(str, cases)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "test")])))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    for path, pattern in cases.items():
        outcome, grew_kb = result[str(path)]["outcome"], result[str(path)]["grew_kb"]
        assert re.search(rf"{path.name}: {pattern}", outcome), outcome
        assert grew_kb < 64 * 1024, (path.name, grew_kb)


@pytest.mark.skipif(not IN_NETNS, reason="starts ROS 2 participants: run through scripts/netns-run")
def test_the_node_refuses_hostile_checkpoints_with_one_line(good, tmp_path):
    from builders import PARAMS, node_command, ros_env

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    deep_value = "[" * DEEP + "]" * DEEP
    cases = {
        with_document_text(good, tmp_path / "nested.safetensors", json.dumps(read_metadata(good))[:-1] + f', "d": {deep_value}}}'):
            f"nested {DEEP + 1} levels deep",
        with_encoder(good, tmp_path / "negative.safetensors", stem_channels=-16): "stem_channels (-16,)",
    }
    procs = {path: subprocess.Popen(node_command(params, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=ros_env()) for path in cases}
    for path, problem in cases.items():
        _, stderr = procs[path].communicate(timeout=240)
        assert procs[path].returncode == 2, (path.name, stderr[-2000:])
        assert "invalid configuration, not starting" in stderr and f"{path}: " in stderr and problem in stderr, stderr[-2000:]
        assert "Traceback" not in stderr and "RecursionError" not in stderr
