"""Class maps: dataset label ids -> contiguous class indices ``0..K-1`` (``IGNORE`` = -1 otherwise).

A class map is a small YAML file (``config/classes/*.yaml``)::

    name: scannet20
    label_space: nyu40          # what the source ids are, for humans and reports
    classes:
      - {name: wall, color: [174, 199, 232], ids: [1]}

Class ``k`` is the k-th list entry; every id not listed under a class is ignored. Readers never map
labels (docs/design.md), so the consumer picks the map that matches the source's label space:
``semantickitti`` (raw ``.label`` ids), ``semantickitti-learning`` (the pre-mapped 0..19 ``.npy``
ids), ``scannet20`` (NYU40 ids), or a simulator map built from its class list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..config import ConfigError, from_dict
from ..io.readers import semantickitti_semantic_ids
from ..locations import data_dirs, searched
from .metrics import IGNORE

# The label space of maps over raw SemanticKITTI ids: their labels may carry instance ids in the upper
# 16 bits (a .label file's words, or a PointCloud2 label field written from them), which apply() masks.
SEMANTICKITTI_RAW = "semantickitti-raw"


@dataclass
class ClassSpec:
    name: str
    ids: list[int]
    color: tuple[int, int, int] = (128, 128, 128)


@dataclass
class ClassMapConfig:
    name: str
    classes: list[ClassSpec]
    label_space: str = ""


@dataclass
class ClassMap:
    """Maps source label ids to class indices; names and RGB colours per class."""

    name: str
    class_names: list[str]
    colors: np.ndarray  # (K, 3) uint8 RGB
    table: np.ndarray  # (max_id + 1,) int64: class index per source id, IGNORE elsewhere
    label_space: str = ""
    source_ids: list[list[int]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """(N,) int64 class indices; ids outside the map (negative, too large, unlisted) -> IGNORE. Maps
        over raw SemanticKITTI ids first drop the instance bits, wherever the labels were read from."""
        labels = np.asarray(labels).reshape(-1)
        if self.label_space == SEMANTICKITTI_RAW:
            labels = semantickitti_semantic_ids(labels)
        labels = labels.astype(np.int64)
        inside = (labels >= 0) & (labels < len(self.table))
        out = np.full(labels.shape, IGNORE, dtype=np.int64)
        out[inside] = self.table[labels[inside]]
        return out

    def color_of(self, classes: np.ndarray, ignore_color: tuple[int, int, int] = (160, 160, 160)) -> np.ndarray:
        """(N, 3) uint8 colours of class indices; ignored/invalid indices get ``ignore_color``."""
        classes = np.asarray(classes).reshape(-1).astype(np.int64)
        valid = (classes >= 0) & (classes < self.num_classes)
        out = np.empty((len(classes), 3), dtype=np.uint8)
        out[:] = np.asarray(ignore_color, dtype=np.uint8)
        out[valid] = self.colors[classes[valid]]
        return out

    def to_config(self) -> dict:
        return {
            "name": self.name,
            "label_space": self.label_space,
            "classes": [
                {"name": n, "ids": list(ids), "color": [int(c) for c in col]}
                for n, ids, col in zip(self.class_names, self.source_ids, self.colors)
            ],
        }


def class_map_from_config(cfg: ClassMapConfig) -> ClassMap:
    if not cfg.classes:
        raise ConfigError(f"class map {cfg.name!r} lists no classes")
    max_id = 0
    seen: dict[int, str] = {}
    for spec in cfg.classes:
        for i in spec.ids:
            if i < 0:
                raise ConfigError(f"class map {cfg.name!r}: class {spec.name!r} has negative id {i}")
            if i in seen:
                raise ConfigError(f"class map {cfg.name!r}: id {i} is listed under {seen[i]!r} and {spec.name!r}")
            seen[i] = spec.name
            max_id = max(max_id, i)
    table = np.full(max_id + 1, IGNORE, dtype=np.int64)
    for k, spec in enumerate(cfg.classes):
        table[np.asarray(spec.ids, dtype=np.int64)] = k
    return ClassMap(
        name=cfg.name,
        class_names=[c.name for c in cfg.classes],
        colors=np.asarray([c.color for c in cfg.classes], dtype=np.uint8).reshape(-1, 3),
        table=table,
        label_space=cfg.label_space,
        source_ids=[list(c.ids) for c in cfg.classes],
    )


def class_map_from_names(name: str, class_names: list[str], *, ignore: tuple[str, ...] = (),
                         colors: np.ndarray | None = None, label_space: str = "") -> ClassMap:
    """A map for sources whose label id is the index into ``class_names`` (e.g. the simulator);
    names in ``ignore`` (e.g. ``"unlabeled"``) are dropped and the rest renumbered in order."""
    kept = [(i, n) for i, n in enumerate(class_names) if n not in ignore]
    palette = default_palette(len(kept)) if colors is None else np.asarray(colors, dtype=np.uint8)
    if colors is not None and len(palette) == len(class_names):
        palette = palette[[i for i, _ in kept]]
    specs = [ClassSpec(name=n, ids=[i], color=tuple(int(c) for c in palette[k])) for k, (i, n) in enumerate(kept)]
    return class_map_from_config(ClassMapConfig(name=name, classes=specs, label_space=label_space))


def default_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours (matplotlib tab20, then hue-spaced) for classes without colours."""
    from matplotlib import colormaps

    base = (np.asarray(colormaps["tab20"].colors) * 255).round().astype(np.uint8)
    if n <= len(base):
        return base[:n]
    hsv = colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))[:, :3]
    return (hsv * 255).round().astype(np.uint8)


CLASS_MAP_SUBDIR = "config/classes"


def class_map_dirs() -> list[Path]:
    """Where named maps live: ``config/classes`` of the source checkout, the ament share dir (colcon)
    and the data files of a pip install (see ssl3d_ros.locations)."""
    return data_dirs(CLASS_MAP_SUBDIR)


def available_class_maps() -> list[str]:
    return sorted({p.stem for d in class_map_dirs() if d.is_dir() for p in d.glob("*.yaml")} | set(SIM_MAPS))


SIM_MAPS = {"sim-outdoor": "outdoor", "sim-indoor": "indoor"}


def sim_class_map(scene: str) -> ClassMap:
    """The simulator's classes (label id = position in its class tuple; 0 "unlabeled" ignored), built
    from ``ssl3d_ros.sim`` itself so the map can never drift from the scenes."""
    from ..sim.scenes import class_colors, class_names

    return class_map_from_names(f"sim-{scene}", list(class_names(scene)), ignore=("unlabeled",),
                                colors=class_colors(scene), label_space=f"ssl3d_ros.sim {scene} class ids")


def load_class_map(name_or_path: str | Path) -> ClassMap:
    """A class map by name (``semantickitti``, ``semantickitti-learning``, ``scannet20``) or from a
    YAML path; an official SemanticKITTI ``semantic-kitti.yaml`` (with ``learning_map``) is also
    accepted and read as a raw-id map."""
    if str(name_or_path) in SIM_MAPS:
        return sim_class_map(SIM_MAPS[str(name_or_path)])
    path = Path(name_or_path)
    if not path.suffix:
        for folder in class_map_dirs():
            if (folder / f"{name_or_path}.yaml").is_file():
                path = folder / f"{name_or_path}.yaml"
                break
        else:
            raise ConfigError(f"unknown class map {str(name_or_path)!r}; named maps: {available_class_maps()}; "
                              f"searched: {searched(CLASS_MAP_SUBDIR)}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"class map file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and "learning_map" in data:
        return class_map_from_semantickitti_yaml(data, name=path.stem)
    try:
        return class_map_from_config(from_dict(ClassMapConfig, data))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def class_map_from_semantickitti_yaml(data: dict, name: str = "semantickitti") -> ClassMap:
    """The official SemanticKITTI yaml (labels, color_map, learning_map, learning_map_inv) as a
    raw-id map: learning id 0 is ignored, learning ids 1..19 become classes 0..18."""
    learning_map = {int(k): int(v) for k, v in data["learning_map"].items()}
    inverse = {int(k): int(v) for k, v in data["learning_map_inv"].items()}
    specs = []
    for lid in sorted(i for i in inverse if i != 0):
        raw = inverse[lid]
        specs.append(ClassSpec(
            name=str(data["labels"][raw]),
            ids=sorted(r for r, v in learning_map.items() if v == lid),
            color=tuple(int(c) for c in data["color_map"][raw]),
        ))
    return class_map_from_config(ClassMapConfig(name=name, classes=specs, label_space=SEMANTICKITTI_RAW))


__all__ = [
    "SEMANTICKITTI_RAW", "CLASS_MAP_SUBDIR", "SIM_MAPS", "ClassSpec", "ClassMapConfig", "ClassMap",
    "class_map_from_config", "class_map_from_names", "default_palette", "load_class_map", "sim_class_map",
    "class_map_dirs", "available_class_maps", "class_map_from_semantickitti_yaml",
]
