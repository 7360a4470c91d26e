"""The labelled scans of the real-data study: what each one is (a typed spec), and loading it.

A spec is given on the command line as a preset name (``semantickitti``, ``scannet``,
``semantickitti-seq01``; paths under the shared data folder) or as::

    NAME=PATH[:labels=PATH][:class-map=NAME][:frame=sensor|world][:sensor=lidar|rgbd]
        [:origin=X,Y,Z|estimate][:beams=N][:block-size=M][:title=TEXT]

``frame`` says where the sensor is, which the robustness perturbations need: ``sensor`` (the sensor
at the origin, e.g. a raw KITTI/SemanticKITTI sweep) or ``world`` (a pose applied; a LiDAR scan then
needs ``origin=X,Y,Z`` in metres, or ``origin=estimate`` for the ego vehicle's empty disc, see
:func:`~ssl3d_ros.evaluation.perturbations.estimate_sensor_origin`). ``sensor=rgbd`` marks a fused
RGB-D mesh (no beams, no ray origin). ``block-size`` is the spatial split's square in metres.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from ..config import ConfigError, from_dict
from ..labels import ClassMap, SplitConfig, load_class_map, point_test_masks
from ..scan import Scan
from .perturbations import PERTURBATIONS, SensorModel, estimate_sensor_origin, perturb

TEST_FRACTION = 0.3
SPLIT_SEED = 0  # one fixed split: every row and seed of the study is scored on the same test points
PERTURBATION_SEED = 0  # one perturbed copy of each scan for every row and seed


class StudyInputError(ValueError):
    """A labelled-scan spec or its files are unusable; the message is one line naming the scan and field."""


@dataclass(frozen=True)
class LabelledScanSpec:
    name: str
    path: str
    class_map: str
    frame: Literal["sensor", "world"] = "sensor"
    sensor: Literal["lidar", "rgbd"] = "lidar"
    labels: str | None = None  # label file; default: the one beside the scan in its dataset's layout
    origin: str | None = None  # "X,Y,Z" or "estimate": the sensor position of a world-frame LiDAR scan
    beams: int = 64  # elevation bins of the full sensor (half-beam perturbation)
    block_size: float = 10.0  # metres, spatial split
    title: str = ""

    def __post_init__(self) -> None:
        where = f"--labelled {self.name}"
        if not self.name or "/" in self.name:
            raise StudyInputError(f"{where}: the name must be non-empty and contain no '/' (it names a folder)")
        if self.sensor == "lidar" and self.frame == "world" and self.origin is None:
            raise StudyInputError(f"{where}: a world-frame LiDAR scan needs origin=X,Y,Z or origin=estimate "
                                  "(the sensor position the perturbations work about)")
        if self.origin is not None and (self.frame == "sensor" or self.sensor == "rgbd"):
            raise StudyInputError(f"{where}: origin= is only for world-frame LiDAR scans (frame=sensor puts the "
                                  "sensor at 0,0,0; an RGB-D mesh has no single origin)")
        if self.origin not in (None, "estimate"):
            parse_origin(self.origin, where)
        if self.beams < 2:
            raise StudyInputError(f"{where}: beams must be at least 2, got {self.beams}")
        if not self.block_size > 0:
            raise StudyInputError(f"{where}: block-size must be positive, got {self.block_size}")

    @property
    def heading(self) -> str:
        return self.title or self.name

    def split(self) -> SplitConfig:
        return SplitConfig(kind="block", block_size=self.block_size, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)


def parse_origin(text: str, where: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise StudyInputError(f"{where}: origin must be X,Y,Z in metres or 'estimate', got {text!r}")
    return values  # type: ignore[return-value]


#: The main table's labelled scans (docs/results.md), paths relative to the shared data folder.
PRESETS = {
    "semantickitti": dict(path="lidar/semantickitti/000700.points.npy", class_map="semantickitti-learning",
                          frame="world", origin="estimate", block_size=10.0,
                          title="SemanticKITTI 000700 (LiDAR, outdoor)"),
    "scannet": dict(path="indoor/scannet/scene0000_00_vert_all.npy", class_map="scannet20", frame="world",
                    sensor="rgbd", block_size=1.5, title="ScanNet scene0000_00 (RGB-D mesh, indoor)"),
    "semantickitti-seq01": dict(path="lidar/semantickitti/seq01_000000.points.npy",
                                class_map="semantickitti-learning", frame="sensor", block_size=10.0,
                                title="SemanticKITTI seq 01 frame 0 (LiDAR, sensor frame)"),
}
DEFAULT_LABELLED = ("semantickitti", "scannet")  # the main table's two scans


def parse_labelled(text: str, data_root: Path) -> LabelledScanSpec:
    """A spec from a preset name or ``NAME=PATH[:KEY=VALUE...]`` (keys spelt with '-' or '_')."""
    if "=" not in text.split(":", 1)[0]:
        if text not in PRESETS:
            raise StudyInputError(f"--labelled {text!r}: not a preset ({', '.join(PRESETS)}) nor NAME=PATH[:KEY=VALUE...]")
        preset = PRESETS[text]
        return build_spec({**preset, "name": text, "path": str(data_root / preset["path"])}, f"--labelled {text}")
    head, *options = text.split(":")
    name, _, path = head.partition("=")
    data: dict = {"name": name.strip(), "path": str(Path(path).expanduser().resolve()) if path else ""}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise StudyInputError(f"--labelled {name}: {option!r} is not KEY=VALUE")
        key = key.strip().replace("-", "_")
        if key in ("name", "path"):
            raise StudyInputError(f"--labelled {name}: {key} is given by NAME=PATH")
        data[key] = value if key in ("labels", "origin", "title", "class_map") else yaml.safe_load(value)
    if not data["path"]:
        raise StudyInputError(f"--labelled {text!r}: expected NAME=PATH[:KEY=VALUE...]")
    if data.get("labels"):
        data["labels"] = str(Path(data["labels"]).expanduser().resolve())
    return build_spec(data, f"--labelled {name}")


def build_spec(data: dict, where: str) -> LabelledScanSpec:
    try:
        return from_dict(LabelledScanSpec, data)
    except ConfigError as exc:
        message = str(exc).replace("LabelledScanSpec", "spec")
        for key in ("class_map", "block_size"):  # spelt as on the command line
            message = message.replace(key, key.replace("_", "-"))
        if "missing 1 required" in message and "class-map" in message:
            message = "class-map=NAME is required (e.g. semantickitti-learning, scannet20, or a YAML path)"
        raise StudyInputError(f"{where}: {message}") from None


# --------------------------------------------------------------------------- loading


@dataclass
class StudyScan:
    """One labelled scan loaded for the study: classes, fixed split, sensor model, perturbed copies."""

    spec: LabelledScanSpec
    scan: Scan
    class_map: ClassMap
    classes: np.ndarray  # (N,) class index, IGNORE where unlabelled
    test: np.ndarray  # (N,) bool, the fixed split's test points
    sensor: SensorModel
    perturbed: dict[str, tuple[Scan, np.ndarray]]  # kind -> (scan, index into the clean scan)

    @property
    def name(self) -> str:
        return self.spec.name

    def labelled(self, seed: int, max_points: int):
        """The scan as :class:`~ssl3d_ros.evaluation.probe_data.LabelledScans` with the labelled points used
        with ``seed`` (the probe's seeded subset of at most ``max_points``) and the fixed split."""
        from .probe import label_scans

        return label_scans([self.scan], self.class_map, self.spec.split(), max_points, seed)

    def record(self) -> dict:
        """What the folder stores about this scan: its spec and the resolved sensor origin."""
        return {"spec": dataclasses.asdict(self.spec), "sensor": dataclasses.asdict(self.sensor),
                "split": self.spec.split().describe(), "points": len(self.scan), "test_points": int(self.test.sum()),
                "perturbations": self.sensor.describe()}


def read_labelled_scan(spec: LabelledScanSpec) -> Scan:
    from ..io.errors import ScanReadError
    from ..io.readers import FileSource, file_entry

    where = f"--labelled {spec.name}"
    path = Path(spec.path)
    if not path.is_file():
        raise StudyInputError(f"{where}: no such scan file: {path}")
    if spec.labels is not None and not Path(spec.labels).is_file():
        raise StudyInputError(f"{where}: no such label file: {spec.labels}")
    try:
        entry = file_entry(path)
        if spec.labels is not None:
            entry = dataclasses.replace(entry, label_path=spec.labels)
        scan = FileSource([entry])[0]
    except (ScanReadError, ValueError) as exc:
        raise StudyInputError(f"{where}: {exc}") from None
    if scan.labels is None:
        raise StudyInputError(f"{where}: {path} has no label file beside it; give labels=PATH")
    return scan


def sensor_model(spec: LabelledScanSpec, scan: Scan) -> SensorModel:
    if spec.sensor == "rgbd":
        return SensorModel(kind="rgbd")
    if spec.frame == "sensor":
        origin = (0.0, 0.0, 0.0)
    elif spec.origin == "estimate":
        origin = tuple(float(v) for v in estimate_sensor_origin(scan.points))
    else:
        origin = parse_origin(spec.origin, f"--labelled {spec.name}")
    return SensorModel(kind="lidar", origin=origin, beams=spec.beams)


def load_study_scan(spec: LabelledScanSpec, robustness: tuple[str, ...] = PERTURBATIONS) -> StudyScan:
    """Read, label, split and perturb one scan; any unusable input raises StudyInputError."""
    where = f"--labelled {spec.name}"
    scan = read_labelled_scan(spec)
    try:
        class_map = load_class_map(spec.class_map)
    except ConfigError as exc:
        raise StudyInputError(f"{where}: class-map: {exc}") from None
    classes = class_map.apply(scan.labels)
    if not (classes >= 0).any():
        raise StudyInputError(f"{where}: no point's label is in class map {class_map.name!r} "
                              f"(label space {class_map.label_space!r}): wrong class-map?")
    try:
        test = point_test_masks([scan.points], spec.split())[0]
    except ValueError as exc:
        raise StudyInputError(f"{where}: block-size {spec.block_size:g}: {exc}") from None
    sensor = sensor_model(spec, scan)
    perturbed = {kind: perturb(scan, kind, sensor, PERTURBATION_SEED) for kind in robustness}
    return StudyScan(spec, scan, class_map, classes, test, sensor, perturbed)


__all__ = ["DEFAULT_LABELLED", "LabelledScanSpec", "PRESETS", "SPLIT_SEED", "StudyInputError", "StudyScan",
           "TEST_FRACTION", "build_spec", "load_study_scan", "parse_labelled", "read_labelled_scan", "sensor_model"]
