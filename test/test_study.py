"""The real-data study's library parts: perturbations on synthetic scans with a known sensor,
labelled-scan specs, the tables from cached pieces, the folder's budget guard, the CLI's input
errors, and a small run on the real scans of ../shared/data (skipped when absent)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl3d_ros.evaluation.perturbations import (SensorModel, elevation_bins, estimate_sensor_origin, half_beams,
                                                perturb, range_noise)
from ssl3d_ros.evaluation.study import Study, StudyBudget, cached, check_budget
from ssl3d_ros.evaluation.study_data import (DEFAULT_LABELLED, PRESETS, StudyInputError, load_study_scan,
                                             parse_labelled)
from ssl3d_ros.evaluation.study_report import collect, mean_std, pm, write_report
from ssl3d_ros.scan import Scan

REPO = Path(__file__).resolve().parents[1]
BEAMS = 64


def ring_scan(origin=(0.0, 0.0, 0.0), beams: int = BEAMS, columns: int = 200, seed: int = 0) -> tuple[Scan, np.ndarray]:
    """A spinning LiDAR with ``beams`` rings evenly spaced in elevation (-24..+2 degrees, like an
    HDL-64E), ranges 5..60 m, seen from ``origin``; returns the scan and each point's ring."""
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(np.linspace(-24.0, 2.0, beams))
    azimuth = np.linspace(0, 2 * np.pi, columns, endpoint=False)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    r = rng.uniform(5.0, 60.0, el.shape)
    pts = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], -1).reshape(-1, 3)
    ring = np.repeat(np.arange(beams), columns)
    return Scan(points=pts + np.asarray(origin), labels=ring.astype(np.int32)), ring


# --------------------------------------------------------------------------- perturbations


def test_half_beams_keeps_every_other_ring_about_the_sensor_origin():
    scan, ring = ring_scan()
    assert (elevation_bins(scan.points, np.zeros(3), BEAMS) == ring).all()
    kept, index = half_beams(scan, SensorModel(origin=(0.0, 0.0, 0.0)), np.random.default_rng(0))
    assert set(np.unique(ring[index])) == set(range(0, BEAMS, 2))  # whole even rings, no odd one
    np.testing.assert_array_equal(kept.points, scan.points[index])
    np.testing.assert_array_equal(kept.labels, scan.labels[index])


def test_half_beams_of_a_world_frame_scan_needs_its_sensor_origin():
    origin = (412.0, -87.5, 31.2)
    world, ring = ring_scan(origin=origin)
    _, index = half_beams(world, SensorModel(origin=origin), np.random.default_rng(0))
    assert set(np.unique(ring[index])) == set(range(0, BEAMS, 2))
    # About the frame's origin instead, the bins no longer follow the rings.
    _, wrong = half_beams(world, SensorModel(origin=(0.0, 0.0, 0.0)), np.random.default_rng(0))
    assert not set(np.unique(ring[wrong])) <= set(range(0, BEAMS, 2))


def test_estimated_origin_of_a_world_frame_ground_scan():
    """Rings hitting flat ground around a sensor 1.73 m up leave an empty disc: the estimate finds its
    centre and the sensor height."""
    rng = np.random.default_rng(1)
    sensor = np.array([130.0, -42.0, 7.0 + 1.73])  # ground at z = 7
    elevation = np.deg2rad(np.linspace(-24.0, -2.0, 40))
    ranges = 1.73 / np.tan(-elevation)  # 3.9 .. 49.5 m
    azimuth = rng.uniform(0, 2 * np.pi, (len(ranges), 600))
    r = np.broadcast_to(ranges[:, None], azimuth.shape)
    pts = np.stack([sensor[0] + r * np.cos(azimuth), sensor[1] + r * np.sin(azimuth), np.full(r.shape, 7.0)], -1)
    estimate = estimate_sensor_origin(pts.reshape(-1, 3))
    assert np.hypot(*(estimate[:2] - sensor[:2])) < 0.5
    assert estimate[2] == pytest.approx(sensor[2], abs=0.05)


def test_range_noise_moves_lidar_points_along_their_ray_and_mesh_points_per_axis():
    origin = (10.0, 5.0, 2.0)
    scan, _ = ring_scan(origin=origin)
    noisy, index = range_noise(scan, SensorModel(origin=origin, range_noise=0.1), np.random.default_rng(0))
    np.testing.assert_array_equal(index, np.arange(len(scan)))
    before = scan.points.astype(np.float64) - origin
    after = noisy.points.astype(np.float64) - origin
    across = np.linalg.norm(np.cross(before / np.linalg.norm(before, axis=1, keepdims=True), after), axis=1)
    assert across.max() < 1e-3  # no displacement across the ray (float32 rounding only)
    radial = np.linalg.norm(after, axis=1) - np.linalg.norm(before, axis=1)
    assert radial.std() == pytest.approx(0.1, rel=0.05)
    mesh, _ = range_noise(scan, SensorModel(kind="rgbd", axis_noise=0.05), np.random.default_rng(0))
    step = mesh.points.astype(np.float64) - scan.points
    np.testing.assert_allclose(step.std(0), 0.05, rtol=0.05)


def test_mesh_half_is_a_seeded_random_half_and_unknown_kinds_are_refused():
    scan, _ = ring_scan(columns=31)
    mesh = SensorModel(kind="rgbd")
    a, ia = perturb(scan, "half_beams", mesh, seed=0)
    _, ib = perturb(scan, "half_beams", mesh, seed=0)
    _, ic = perturb(scan, "half_beams", mesh, seed=1)
    assert len(ia) == len(scan) // 2 and (np.diff(ia) > 0).all() and len(a) == len(ia)
    np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(ia, ic)
    with pytest.raises(ValueError, match="unknown perturbation 'dropout'"):
        perturb(scan, "dropout", mesh, seed=0)


# --------------------------------------------------------------------------- labelled-scan specs


def test_presets_are_the_main_tables_scans(tmp_path):
    assert DEFAULT_LABELLED == ("semantickitti", "scannet")
    kitti = parse_labelled("semantickitti", tmp_path)
    assert kitti.path == str(tmp_path / "lidar/semantickitti/000700.points.npy")
    assert (kitti.frame, kitti.origin, kitti.block_size, kitti.class_map) == ("world", "estimate", 10.0,
                                                                              "semantickitti-learning")
    scannet = parse_labelled("scannet", tmp_path)
    assert (scannet.sensor, scannet.block_size, scannet.class_map) == ("rgbd", 1.5, "scannet20")
    assert parse_labelled("semantickitti-seq01", tmp_path).frame == "sensor"
    assert set(PRESETS) == {"semantickitti", "scannet", "semantickitti-seq01"}


def test_a_labelled_scan_from_the_command_line(tmp_path):
    spec = parse_labelled(f"mine={tmp_path}/a.points.npy:labels={tmp_path}/a.labels.npy:class-map=scannet20"
                          ":frame=world:origin=1.5,-2,0.25:beams=32:block-size=4:title=My scan", tmp_path)
    assert spec.name == "mine" and spec.path == str(tmp_path / "a.points.npy")
    assert spec.labels == str(tmp_path / "a.labels.npy")
    assert (spec.frame, spec.origin, spec.beams, spec.block_size, spec.heading) == ("world", "1.5,-2,0.25", 32, 4.0,
                                                                                    "My scan")


@pytest.mark.parametrize("text, message", [
    ("nope", "not a preset"),
    ("x=a.npy", "class-map=NAME is required"),
    ("x=a.npy:class-map=scannet20:colour=red", "unknown key(s) ['colour']"),
    ("x=a.npy:class-map=scannet20:frame=map", "frame: 'map' is not one of"),
    ("x=a.npy:class-map=scannet20:frame=world", "needs origin=X,Y,Z or origin=estimate"),
    ("x=a.npy:class-map=scannet20:frame=world:origin=1,2", "origin must be X,Y,Z"),
    ("x=a.npy:class-map=scannet20:origin=1,2,3", "origin= is only for world-frame LiDAR"),
    ("x=a.npy:class-map=scannet20:beams=many", "beams: expected an integer"),
    ("x=a.npy:class-map=scannet20:block-size=0", "block-size must be positive"),
    ("x=a.npy:class-map", "'class-map' is not KEY=VALUE"),
])
def test_bad_specs_are_one_line_naming_the_field(text, message, tmp_path):
    with pytest.raises(StudyInputError) as info:
        parse_labelled(text, tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unusable_scan_files_are_one_line(tmp_path):
    missing = parse_labelled(f"x={tmp_path}/none.points.npy:class-map=scannet20", tmp_path)
    with pytest.raises(StudyInputError, match="no such scan file"):
        load_study_scan(missing)
    np.save(tmp_path / "a.points.npy", np.zeros((10, 3), np.float32))
    unlabelled = parse_labelled(f"x={tmp_path}/a.points.npy:class-map=scannet20", tmp_path)
    with pytest.raises(StudyInputError, match="no label file beside it; give labels=PATH"):
        load_study_scan(unlabelled)
    np.save(tmp_path / "wrong.npy", np.zeros(4, np.int32))
    bad_labels = parse_labelled(f"x={tmp_path}/a.points.npy:labels={tmp_path}/wrong.npy:class-map=scannet20", tmp_path)
    with pytest.raises(StudyInputError, match="labels have shape"):
        load_study_scan(bad_labels)


def test_a_synthetic_labelled_scan_loads_splits_and_perturbs(tmp_path):
    scan, ring = ring_scan(origin=(50.0, 20.0, 1.0))
    np.save(tmp_path / "s.points.npy", scan.points)
    np.save(tmp_path / "s.labels.npy", (ring % 19 + 1).astype(np.int32))  # SemanticKITTI learning ids 1..19
    spec = parse_labelled(f"s={tmp_path}/s.points.npy:class-map=semantickitti-learning:frame=world:origin=50,20,1",
                          tmp_path)
    ds = load_study_scan(spec, ("half_beams",))
    assert set(ds.perturbed) == {"half_beams"} and ds.sensor.origin == (50.0, 20.0, 1.0)
    assert set(np.unique(ring[ds.perturbed["half_beams"][1]])) == set(range(0, BEAMS, 2))
    assert 0 < ds.test.mean() < 1 and (ds.classes >= 0).all()
    keep = ds.labelled(seed=3, max_points=1000).keep[0]
    assert keep.sum() == 1000
    np.testing.assert_array_equal(keep, ds.labelled(seed=3, max_points=1000).keep[0])
    assert tuple(ds.record()["sensor"]["origin"]) == (50.0, 20.0, 1.0)


# --------------------------------------------------------------------------- tables and the folder


def write_piece(out: Path, scan: str, row: str, seed: int, linear: float, knn: float | None = None,
                half: float | None = None) -> None:
    doc = {"linear": [linear, 0.9]}
    if knn is not None:
        doc["knn"] = [knn, 0.9]
    if half is not None:
        doc["half_beams"] = {"miou": half, "drop": linear - half, "clean_same_points": linear, "test_points": 10}
    path = out / "probe" / scan / f"{row}-s{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_tables_pair_each_encoder_with_random_init_per_seed(tmp_path):
    study = Study(out=tmp_path, data_root=tmp_path, config_dir=REPO / "config", variants={"sonata": "sonata"},
                  seeds=[0, 1, 2], robustness=("half_beams",))
    spec = parse_labelled("semantickitti", tmp_path)
    for seed, (lin, rnd) in enumerate([(0.20, 0.15), (0.22, 0.16), (0.18, 0.17)]):
        write_piece(tmp_path, spec.name, "sonata", seed, lin, knn=lin, half=lin - 0.01)
        write_piece(tmp_path, spec.name, "random", seed, rnd, knn=rnd, half=rnd - 0.02)
    doc, md = collect(study, [spec])
    sonata = doc["datasets"]["semantickitti"]["sonata"]
    assert sonata["linear"] == pytest.approx(mean_std([0.20, 0.22, 0.18]))
    assert sonata["linear_vs_random"][0] == pytest.approx(np.mean([0.05, 0.06, 0.01]))
    assert sonata["half_beams_drop"][0] == pytest.approx(0.01)
    assert "| `sonata` pretrained | 3 | 20.0 ± 2.0 | 4.0 ± 2.6 |" in md
    assert "linear, half beams" in md and "range noise" not in md
    assert "### SemanticKITTI 000700 (LiDAR, outdoor)" in md
    # Without robustness passes the table has no perturbation columns.
    study.robustness = ()
    doc, md = collect(study, [spec])
    assert "half beams" not in md and "| encoder | seeds | linear mIoU | Δ vs random | kNN mIoU | Δ vs random |\n" in md
    write_report(study, doc, md)
    assert json.loads((tmp_path / "study.json").read_text())["datasets"]["semantickitti"]["random"]["seeds"] == 3
    assert "- perturbations: none" in (tmp_path / "study.md").read_text()
    assert pm(0.5, 0.1, 2) == "50.0 ± 10.0 (n=2)" and pm(None, None, 0) == "–"


def test_a_piece_is_recomputed_when_it_lacks_a_robustness_pass(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"linear": [0.1, 0.2], "half_beams": {"miou": 0.1}}

    path = tmp_path / "piece.json"
    path.write_text(json.dumps({"linear": [0.1, 0.2]}))  # made with --robustness none
    assert cached(path, compute) == {"linear": [0.1, 0.2]}
    assert not calls
    assert "half_beams" in cached(path, compute, required=("half_beams",))
    assert len(calls) == 1 and "half_beams" in json.loads(path.read_text())


def test_one_folder_holds_one_budget(tmp_path):
    study = Study(out=tmp_path, data_root=tmp_path, config_dir=REPO / "config")
    check_budget(study)
    assert json.loads((tmp_path / "budget.json").read_text())["features"] == ["constant", "height"]
    check_budget(study)  # the same budget again is fine
    study.budget = StudyBudget(steps=300)
    with pytest.raises(StudyInputError, match="another budget"):
        check_budget(study)
    # A folder written before --features existed used xyz + height.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    old = StudyBudget(steps=300, supervised_steps=200).as_json()
    del old["features"]
    (legacy / "budget.json").write_text(json.dumps(old))
    check_budget(Study(out=legacy, data_root=tmp_path, config_dir=REPO / "config",
                       budget=StudyBudget(steps=300, supervised_steps=200, features=["xyz", "height"])))


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    script = REPO / "scripts" / "real_data_study.py"
    for extra, message in [(["--labelled", "x=a.npy:class-map=scannet20:frame=world"], "needs origin="),
                           (["--robustness", "none", "half_beams"], "cannot be combined"),
                           (["--labelled", f"x={tmp_path}/none.npy:class-map=scannet20"], "no such scan file")]:
        proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "out"), *extra],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- real data


def test_real_scans_half_beams_about_the_sensor_in_either_frame(shared_data):
    """seq01 is in its sensor frame (origin 0), 000700 in a world frame (estimated origin): in both,
    half the elevation bins keep about half of the points; 000700 about the frame's origin does not
    follow its beams (the bins keep a very different share)."""
    seq01 = load_study_scan(parse_labelled("semantickitti-seq01", shared_data), ("half_beams",))
    assert seq01.sensor.origin == (0.0, 0.0, 0.0)
    assert 0.4 < len(seq01.perturbed["half_beams"][1]) / len(seq01.scan) < 0.6
    world = load_study_scan(parse_labelled("semantickitti", shared_data), ("half_beams",))
    assert np.hypot(*world.sensor.origin[:2]) > 5.0  # the pose moved the sensor away from the frame origin
    assert 0.4 < len(world.perturbed["half_beams"][1]) / len(world.scan) < 0.6
    assert world.test.sum() == 24_292  # the fixed split of docs/results.md


def test_real_frozen_probe_with_robustness(shared_data, tmp_path):
    """The raw-input probe of the study on the real ScanNet scan, with both robustness passes."""
    from ssl3d_ros.evaluation.study import probe_frozen
    from ssl3d_ros.preprocessing import PreprocessConfig

    ds = load_study_scan(parse_labelled("scannet", shared_data))
    assert ds.test.sum() == 19_692  # docs/results.md
    study = Study(out=tmp_path, data_root=shared_data, config_dir=REPO / "config",
                  budget=StudyBudget(max_points=5000, linear_iters=30))
    pre = PreprocessConfig(voxel_size=0.1, features=("constant", "height"), coord_scale=20.0, xyz_center="mean")
    torch.manual_seed(0)
    out = probe_frozen(ds, None, pre, "raw", seed=0, study=study)
    assert out["train_points"] + out["test_points"] <= 5000 and out["test_points"] > 500
    assert 0 < out["linear"][0] < 1 and 0 < out["knn"][0] < 1
    for kind in ("half_beams", "range_noise"):
        assert out[kind]["test_points"] > 200
        assert out[kind]["drop"] == pytest.approx(out[kind]["clean_same_points"] - out[kind]["miou"])


def test_a_scan_name_keeps_its_spec_in_one_folder(tmp_path):
    from ssl3d_ros.evaluation.study import check_scan_record

    scan, ring = ring_scan(columns=50)
    np.save(tmp_path / "s.points.npy", scan.points)
    np.save(tmp_path / "s.labels.npy", (ring % 19 + 1).astype(np.int32))
    study = Study(out=tmp_path / "out", data_root=tmp_path, config_dir=REPO / "config")
    base = f"s={tmp_path}/s.points.npy:class-map=semantickitti-learning"
    check_scan_record(study, load_study_scan(parse_labelled(base, tmp_path), ()))
    record = json.loads((tmp_path / "out" / "labelled" / "s.json").read_text())
    assert record["spec"]["frame"] == "sensor" and record["sensor"]["origin"] == [0.0, 0.0, 0.0]
    check_scan_record(study, load_study_scan(parse_labelled(base, tmp_path), ()))  # the same spec again
    with pytest.raises(StudyInputError, match="another spec under this name"):
        check_scan_record(study, load_study_scan(parse_labelled(base + ":block-size=5", tmp_path), ()))
