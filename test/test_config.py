from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from ssl3d_ros.config import ConfigError, from_dict, load_yaml, to_dict


@dataclass
class Inner:
    size: float = 0.1
    names: tuple[str, ...] = ("xyz",)


@dataclass
class Outer:
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    box: Optional[tuple[float, float]] = None
    steps: int = 10


def test_round_trip_and_types():
    cfg = from_dict(Outer, {"mode": "b", "inner": {"size": 1, "names": ["xyz", "intensity"]}, "box": [0, 2.5]})
    assert cfg.inner.size == 1.0 and isinstance(cfg.inner.size, float)
    assert cfg.inner.names == ("xyz", "intensity")
    assert cfg.box == (0.0, 2.5)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"stepz": 3}, "unknown key(s) ['stepz']"),
        ({"inner": {"sise": 1}}, "inner: unknown key(s) ['sise']"),
        ({"mode": "c"}, "mode"),
        ({"steps": 1.5}, "steps: expected an integer"),
        ({"steps": True}, "steps: expected an integer"),
        ({"box": [1, 2, 3]}, "box"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, data)
    assert fragment in str(exc.value)


def test_load_yaml_section_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("outer:\n  mode: b\n  inner: {size: 0.05}\n")
    assert load_yaml(Outer, path, section="outer").inner.size == 0.05
    with pytest.raises(ConfigError, match="missing top-level section"):
        load_yaml(Outer, path, section="nope")
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(Outer, tmp_path / "missing.yaml")
    path.write_text("outer: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(Outer, path, section="outer")


def test_parse_variant_checks_the_base_and_every_assignment():
    from ssl3d_ros.config import parse_variant

    assert parse_variant("warm=pretrained:optim.lr=0.001; run.steps=5", ["scratch", "pretrained"]) == (
        "warm", "pretrained", ["optim.lr=0.001", "run.steps=5"])
    assert parse_variant("same=scratch", ["scratch"]) == ("same", "scratch", [])
    with pytest.raises(ConfigError, match="BASE one of scratch, pretrained"):
        parse_variant("warm=pretrianed:optim.lr=1", ["scratch", "pretrained"])
    with pytest.raises(ConfigError, match="'optim.lr': expected SECTION.KEY=VALUE"):
        parse_variant("warm=scratch:optim.lr", ["scratch"])
