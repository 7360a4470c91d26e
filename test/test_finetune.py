"""ssl3d-finetune: real tiny runs on simulated scans (CPU, a few steps): initialisation from a
checkpoint, the frozen warm-up, resumption (in process and after SIGKILL), the node-ready output,
the seeded and recorded label selections, class maps and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ssl3d_ros.config import ConfigError
from ssl3d_ros.labels import IGNORE, load_class_map
from ssl3d_ros.scan import Scan
from ssl3d_ros.training import state as state_io
from ssl3d_ros.training.finetune.config import LabelConfig, config_from_dict, load_config
from ssl3d_ros.training.finetune.labels import class_indices, select_labels
from ssl3d_ros.training.finetune.loop import finetune

from builders import make_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIM = {"sources": ["sim:outdoor:2"], "sim_lidar": {"beams": 16, "columns": 256}}
# 0.5 m voxels keep a simulated scan to a few hundred voxels: a step takes about a second on a busy CPU
SCRATCH_PRE = {"voxel_size": 0.5, "features": ["xyz", "intensity"], "coord_scale": 20.0, "min_range": 0.5}


def tiny(out: Path, steps: int = 4, **sections) -> dict:
    data = {
        "data": dict(SIM),
        "validation": {"sources": ["sim:outdoor:1"], "every": 2},
        "augment": {"crop": "none", "crop_points": 20000},
        "optim": {"warmup_steps": 1},
        "run": {"steps": steps, "batch_size": 1, "workers": 0, "checkpoint_every": 2, "out_dir": str(out),
                "threads": 1, "tensorboard": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    if data.get("init", "none") == "none":
        data.setdefault("preprocessing", SCRATCH_PRE)
    return data


def read_metrics(out: Path) -> list[dict]:
    import csv

    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def init_checkpoint(tmp_path_factory) -> Path:
    return Path(make_checkpoint(tmp_path_factory.mktemp("init") / "pretrained.safetensors", with_head=False, with_pca=False))


@pytest.fixture(scope="module")
def warm_run(init_checkpoint, tmp_path_factory):
    """From a checkpoint, 2 frozen-encoder steps, stopped there, then resumed to 4 steps."""
    out = tmp_path_factory.mktemp("warm")
    cfg = tiny(out, init=str(init_checkpoint), optim={"freeze_encoder_steps": 2},
               labels={"fraction": 0.2, "selection": "blocks", "block_size": 6.0, "seed": 3},
               loss={"kind": "ce+lovasz", "class_weights": "balanced"})
    first = finetune(config_from_dict(cfg), progress=False, stop_at=2)
    frozen_state = state_io.load_latest(out / "checkpoints")
    second = finetune(config_from_dict(cfg), resume=True, progress=False)
    return out, first, frozen_state, second


def test_warm_start_frozen_warm_up_resume_and_node_ready_output(warm_run, init_checkpoint):
    from ssl3d_ros.checkpoint import load_checkpoint
    from ssl3d_ros.perception import PerceptionPipeline
    from ssl3d_ros.training.finetune.evaluate import predict_points
    from ssl3d_ros.training.finetune.model import SegmentationModel

    out, first, frozen_state, second = warm_run
    init = load_checkpoint(init_checkpoint)
    assert first.step == 2 and not first.completed and second.completed and second.step == 4
    # the frozen warm-up kept the pretrained encoder exactly; the head learned
    for key, value in init.encoder.state_dict().items():
        assert torch.equal(frozen_state.model[f"encoder.{key}"], value), key
    final = state_io.load_latest(out / "checkpoints")
    assert final.step == 4
    changed = [k for k, v in init.encoder.state_dict().items() if not torch.equal(final.model[f"encoder.{k}"], v)]
    assert changed, "the encoder did not train after the warm-up"
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # one history across the resume
    assert [float(r["encoder_frozen"]) for r in rows] == [1.0, 1.0, 0.0, 0.0]
    assert {"ce", "lovasz", "val_miou", "best_val_miou"} <= set(rows[0])

    # the output: the best validation checkpoint, with the head, classes and preprocessing of the run
    cmap = load_class_map("sim-outdoor")
    model_ckpt = load_checkpoint(out / "model.safetensors")
    assert second.best["step"] in (2, 4)
    # model.safetensors is best.safetensors (the best validation's weights) plus a novelty reference of
    # its own encoder, fitted on the training scans (novelty_scans, default 16: both of them here)
    best_ckpt = load_checkpoint(out / "best.safetensors")
    assert best_ckpt.novelty is None and model_ckpt.novelty is not None and model_ckpt.novelty.frames == 2
    for key, value in best_ckpt.encoder.state_dict().items():
        assert torch.equal(model_ckpt.encoder.state_dict()[key], value), key
    assert torch.equal(model_ckpt.seg_head.weight, best_ckpt.seg_head.weight)
    assert model_ckpt.class_names == cmap.class_names and model_ckpt.seg_head.num_classes == cmap.num_classes
    assert model_ckpt.preprocessing == init.preprocessing
    assert model_ckpt.recipe.name == "finetune" and model_ckpt.recipe.config["init"] == str(init_checkpoint)
    assert model_ckpt.training_data["labels"]["fraction"] == 0.2
    from ssl3d_ros.evaluation.probe import load_encoder  # ssl3d-probe reads it too

    assert load_encoder(out / "model.safetensors")[2] == init.preprocessing
    # OUT/validation.json: the kept model's validation, by the rule that chose it (keep: best by default)
    kept = json.loads((out / "validation.json").read_text())
    assert kept["keep"] == "best" and kept["step"] == second.best["step"] and kept["miou"] == second.best["miou"]
    assert kept["class_names"] == cmap.class_names and set(kept["iou"]) == set(kept["support"]) == set(cmap.class_names)

    # the node's pipeline predicts what the fine-tuned model predicts
    from ssl3d_ros.sim import SimConfig, simulate_sequence, with_lidar

    scan = next(iter(simulate_sequence(with_lidar(SimConfig(), beams=16, columns=256), 1, seed=5)))
    model = SegmentationModel(model_ckpt.encoder, cmap.num_classes)
    model.head.load_state_dict(model_ckpt.seg_head.state_dict())
    expected = predict_points(model.eval(), scan, model_ckpt.preprocessing, torch.device("cpu"))
    pipe = PerceptionPipeline.from_checkpoint(out / "model.safetensors", device="cpu")
    assert pipe.class_names == cmap.class_names
    result = pipe.process(scan, segmentation=True, embeddings=False)
    valid = expected >= 0
    assert (result.valid == valid).all()
    assert (result.class_id[valid].astype(np.int64) == expected[valid]).mean() > 0.99


def test_evaluate_scores_a_model_as_its_validation_did_and_init_head_continues_it(warm_run, init_checkpoint, tmp_path):
    from ssl3d_ros.checkpoint import load_checkpoint
    from ssl3d_ros.training.finetune.loop import evaluate

    out, _, _, second = warm_run
    model_path = out / "model.safetensors"
    # --evaluate: the output model scored on the run's validation scans gives the run's best mIoU
    report = evaluate(config_from_dict(tiny(tmp_path / "eval", init=str(model_path), init_head=True)))
    assert report["miou"] == pytest.approx(second.best["miou"], abs=1e-6) and report["scans"] == 1
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["iou"].keys() == set(
        load_class_map("sim-outdoor").class_names)
    # the run kept the best validation's per-class IoU too (the study's cells report it)
    assert second.best["iou"] == pytest.approx(report["iou"], abs=1e-6)
    # the same scans as an xyz-only sensor sends them: another score, said in the rule
    dark = evaluate(config_from_dict(tiny(tmp_path / "dark", init=str(model_path), init_head=True,
                                          validation={"zero_intensity": True})))
    assert "intensity zeroed" in dark["validation"] and dark["miou"] != report["miou"]
    # --init-head: training continues from the model's head instead of a fresh one; --pca-dims: the
    # output carries a PCA basis of its own hypercolumns, which the node's auto embedding size uses
    cont = finetune(config_from_dict(tiny(tmp_path / "cont", steps=2, init=str(model_path), init_head=True, pca_dims=4,
                                          optim={"freeze_encoder_steps": 2, "lr": 1e-9, "min_lr": 1e-9})), progress=False)
    start, continued = load_checkpoint(model_path), load_checkpoint(cont.model_path)
    assert torch.allclose(continued.seg_head.weight, start.seg_head.weight, atol=1e-6)
    assert continued.pca.basis.shape == (continued.encoder.hypercolumn_channels, 4)
    from ssl3d_ros.perception import PerceptionPipeline

    assert PerceptionPipeline.from_checkpoint(cont.model_path, device="cpu").embedding_dims == 4
    with pytest.raises(ConfigError, match="pca_dims=9999"):
        finetune(config_from_dict(tiny(tmp_path / "big", init=str(model_path), pca_dims=9999)), progress=False)
    # a head of other classes, or an encoder without a head, is refused before anything trains
    with pytest.raises(ConfigError, match="predicts"):
        evaluate(config_from_dict(tiny(tmp_path / "x", init=str(model_path), init_head=True,
                                       data={"sources": ["sim:indoor:1"]}, validation={"sources": ["sim:indoor:1"]})))
    with pytest.raises(ConfigError, match="has no segmentation head"):
        evaluate(config_from_dict(tiny(tmp_path / "y", init=str(init_checkpoint), init_head=True)))
    proc = subprocess.run([sys.executable, "-m", "ssl3d_ros.training.finetune", "--evaluate", "--init",
                           str(out.parent / "does-not-matter")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_keeps_the_last_weights_on_request_and_prints_per_class_iou(warm_run, tmp_path, capsys):
    """--val-keep last: model.safetensors is the last weights, OUT/validation.json their validation; the
    run and --evaluate print a per-class table (class, IoU %, support) a user can read."""
    from ssl3d_ros.training.finetune import main

    names = load_class_map("sim-outdoor").class_names
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(tiny(tmp_path / "run", steps=2, validation={"every": 1})))
    assert main(["--config", str(config), "--no-progress", "--val-keep", "last"]) == 0
    printed = capsys.readouterr().out
    kept = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert kept["keep"] == "last" and kept["step"] == 2 and kept["class_names"] == names
    assert sum(kept["support"].values()) > 0 and "validation scans" in kept["rule"]
    table = printed[printed.index("IoU %"):].splitlines()
    assert "support" in table[0] and [line.split()[0] for line in table[1:len(names) + 1]] == names
    model_path = warm_run[0] / "model.safetensors"
    config.write_text(yaml.safe_dump(tiny(tmp_path / "eval", init=str(model_path), init_head=True)))
    assert main(["--config", str(config), "--evaluate"]) == 0
    printed = capsys.readouterr().out
    assert "IoU %" in printed and all(name in printed for name in names)
    with pytest.raises(ConfigError, match="validation.keep"):
        config_from_dict({"validation": {"keep": "worst"}})


def test_threads_auto_leave_a_core_to_each_dataloader_worker():
    """run.threads 0: one torch thread per core the DataLoader workers leave (at least one), for
    fine-tuning and pretraining alike; fine-tuning defaults to one worker (a 2-core machine: 2 busy)."""
    from ssl3d_ros.training.config import RunConfig
    from ssl3d_ros.training.finetune.config import FinetuneRunConfig
    from ssl3d_ros.training.runtime.run import Run, torch_threads

    assert FinetuneRunConfig().workers == 1 and FinetuneRunConfig().threads == RunConfig().threads == 0
    assert [torch_threads(0, w, 2) for w in (0, 1, 2, 3)] == [2, 1, 1, 1]
    assert torch_threads(0, 2, 16) == 14 and torch_threads(3, 2, 2) == 3
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        for run_cfg in (FinetuneRunConfig(device="cpu"), RunConfig(device="cpu", workers=2)):
            torch.set_num_threads(before + 3)
            Run.start(run_cfg)
            assert torch.get_num_threads() == max(1, cores - run_cfg.workers), run_cfg
    finally:
        torch.set_num_threads(before)


def test_label_selection_is_seeded_recorded_and_clustered(warm_run):
    out, _, _, second = warm_run
    recorded = json.loads((out / "labels.json").read_text())
    assert recorded["per_scan"] == second.selection["per_scan"] and recorded["seed"] == 3
    assert recorded["selection"] == "blocks" and recorded["class_map"] == "sim-outdoor"
    for entry in recorded["per_scan"]:
        assert entry["selected_points"] == max(1, round(0.2 * entry["labelled_points"]))

    rng = np.random.default_rng(0)
    points = rng.uniform(-40, 40, (5000, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 5000).astype(np.int32)
    labels[:500] = IGNORE
    scans = [Scan(points, labels=labels, source=f"s{i}") for i in range(4)]

    def pick(**kw):
        return select_labels(scans, LabelConfig(**kw), 4)

    a, b = pick(fraction=0.05, seed=1), pick(fraction=0.05, seed=1)
    assert a.record == b.record and all(np.array_equal(x.labels, y.labels) for x, y in zip(a.scans, b.scans))
    c = pick(fraction=0.05, seed=2)
    assert a.record["per_scan"][0]["selection_sha256"] != c.record["per_scan"][0]["selection_sha256"]
    assert a.record["selected_points"] == 4 * round(0.05 * 4500)
    k = pick(scans=2, seed=1)
    assert k.record["scans_used"] == 2 and len({e["index"] for e in k.record["per_scan"]}) == 2
    # blocks: the kept labels lie in a few squares, random points are spread over the scan
    blocks = pick(fraction=0.05, selection="blocks", block_size=8.0, seed=1)
    for sel, max_cells in ((blocks, 40), (a, 10_000)):
        kept = points[sel.scans[0].labels >= 0]
        cells = len(np.unique(np.floor(kept[:, :2] / 4.0), axis=0))
        if sel is blocks:
            assert cells <= max_cells, cells
        else:
            assert cells > 100, cells
    with pytest.raises(ConfigError, match="no labelled training point"):
        select_labels([Scan(points, labels=np.full(5000, IGNORE, np.int32))], LabelConfig(), 4)


def test_raw_semantickitti_map_masks_instance_bits():
    cmap = load_class_map("semantickitti")
    raw = np.array([10 | (7 << 16), 40 | (123 << 16), 0, 252 | (1 << 16), 1 << 16], dtype=np.int64)
    classes = class_indices(raw, cmap)
    names = cmap.class_names
    assert [names[c] if c >= 0 else None for c in classes] == ["car", "road", None, "car", None]
    learning = load_class_map("semantickitti-learning")  # pre-mapped ids: no masking applies
    assert class_indices(np.array([1 << 16]), learning).tolist() == [IGNORE]


def test_layerwise_groups_lovasz_and_balanced_weights():
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.training.finetune.config import FinetuneOptimConfig, LossConfig
    from ssl3d_ros.training.finetune.model import SegmentationModel, class_weights, layerwise_groups, lovasz_softmax

    model = SegmentationModel(SparseEncoder(EncoderConfig(size="nano", in_channels=4, backend="torch")), 5)
    groups = layerwise_groups(model, FinetuneOptimConfig(layer_decay=0.5, weight_decay=0.1))
    stages = len(model.encoder.stages)
    scale = {g["depth"]: g["lr_scale"] for g in groups}
    assert scale[stages + 1] == 1.0 and scale[0] == 0.5 ** (stages + 1) and scale[1] == 0.5 ** stages
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    head = [g for g in groups if not g["encoder"]]
    assert {g["weight_decay"] for g in head} == {0.1, 0.0}  # head weight decays, its bias does not

    labels = torch.tensor([0, 1, 2, 1])
    perfect = torch.nn.functional.one_hot(labels, 3).float() * 50
    assert lovasz_softmax(perfect, labels).item() < 1e-6
    assert lovasz_softmax(perfect.roll(1, dims=1), labels).item() > 0.9
    w = class_weights(torch.tensor([100, 25, 0]), LossConfig(class_weights="balanced", balance_power=1.0))
    assert w.tolist() == pytest.approx([0.625, 2.5, 0.0])


def test_default_yaml_is_the_built_in_default_and_config_errors():
    assert load_config(REPO / "config" / "finetune" / "default.yaml") == load_config(None)
    with pytest.raises(ConfigError, match=r"labels: unknown key\(s\) \[.fractoin.\]"):
        config_from_dict({"labels": {"fractoin": 0.1}})
    with pytest.raises(ConfigError, match="brings its own"):
        config_from_dict({"init": "x.safetensors", "preprocessing": {"voxel_size": 0.1}})
    with pytest.raises(ConfigError, match="labels.fraction"):
        config_from_dict({"labels": {"fraction": 0}})


def test_resume_refuses_another_label_selection(warm_run, init_checkpoint):
    out = warm_run[0]
    other = tiny(out, init=str(init_checkpoint), optim={"freeze_encoder_steps": 2},
                 labels={"fraction": 0.5, "selection": "blocks", "block_size": 6.0, "seed": 3}, run={"steps": 5})
    with pytest.raises(ConfigError, match=r"labels.fraction: 0.2 -> 0.5"):
        finetune(config_from_dict(other), resume=True, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        finetune(config_from_dict(other), progress=False)


def run_cli(args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "ssl3d_ros.training.finetune", "--no-progress", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigkill_then_resume_loses_at_most_one_interval(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(tiny(out, steps=40, validation={"sources": [], "every": 100})))
    proc = run_cli(["--config", str(config), "--checkpoint-every", "2"])
    deadline = time.time() + 240
    while not state_io.list_states(out / "checkpoints") or state_io.load_latest(out / "checkpoints").step < 2:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no state in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    latest = state_io.load_latest(out / "checkpoints")
    logged = max(int(r["step"]) for r in read_metrics(out))
    assert logged - latest.step <= 2
    proc = run_cli(["--config", str(config), "--resume", "--steps", str(latest.step + 1)])
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resumed from" in stderr and (out / "model.safetensors").is_file()
    assert [int(r["step"]) for r in read_metrics(out)] == list(range(1, latest.step + 2))


BAD_INPUT = [
    (["--data", "sim:outdoor:1", "--init", "{rgb_ckpt}"], "needs field 'rgb'"),
    (["--data", "{npy}"], "--class-map"),
    (["--data", "{npy}", "--class-map", "nonsense"], "unknown class map 'nonsense'"),
    (["--data", "{npy}", "--class-map", "semantickitti"], "no labelled scan could be read"),
    (["--data", "sim:outdoor:1", "--init", "{missing}"], "missing.safetensors"),
    (["--data", "sim:outdoor:1", "--label-fraction", "1.5"], "labels.fraction"),
]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from ssl3d_ros.checkpoint import save_checkpoint
    from ssl3d_ros.models.encoder import EncoderConfig, SparseEncoder
    from ssl3d_ros.preprocessing import PreprocessConfig
    from ssl3d_ros.training.finetune import main

    rgb = tmp_path / "rgb.safetensors"
    save_checkpoint(rgb, SparseEncoder(EncoderConfig(size="nano", in_channels=6)),
                    preprocessing=PreprocessConfig(voxel_size=0.5, features=("xyz", "rgb")))
    npy = tmp_path / "000000.npy"
    np.save(npy, np.random.default_rng(0).uniform(-5, 5, (200, 4)).astype(np.float32))
    names = {"rgb_ckpt": rgb, "npy": npy, "missing": tmp_path / "missing.safetensors"}
    common = ["--no-progress", "--out", str(tmp_path / "out"), "--steps", "1",
              "--set", "data.sim_lidar={beams: 16, columns: 256}"]
    for k, (args, message) in enumerate(BAD_INPUT):
        args = [a.format(**names) for a in args] + common
        if k == 0:  # one case as a user meets it: a process, its stderr
            proc = run_cli(args)
            _, stderr = proc.communicate(timeout=120)
            code = proc.returncode
        else:
            code = main(args)
            stderr = capsys.readouterr().err
        assert code == 2, (args, stderr[-2000:])
        lines = [line for line in stderr.splitlines() if line.startswith("ssl3d-finetune:")]
        assert len(lines) == 1 and message in lines[0], (args, stderr[-2000:])
        assert "Traceback" not in stderr


def test_help_documents_the_options():
    proc = subprocess.run([sys.executable, "-m", "ssl3d_ros.training.finetune", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--init", "--class-map", "--scans", "--label-fraction", "--label-blocks", "--val-data",
                   "--resume", "--random-weights", "model.safetensors", "torchrun", "labels.json", "--init-head",
                   "--evaluate", "--pca-dims", "evaluation.json", "--val-keep", "validation.json",
                   "not the test scans"):
        assert option in proc.stdout, option


def test_study_cells_are_valid_configs_and_summaries_say_the_seeds(tmp_path, init_checkpoint):
    from ssl3d_ros.training.finetune.study import PROTOCOLS, Cell, cell_config, summarize

    for name in PROTOCOLS:
        for row, mode in (("scratch", "probe"), ("pretrained", "finetune")):
            cell = Cell(name, row, str(init_checkpoint), mode, 0.01, 0, 1)
            cfg = config_from_dict(cell_config(cell, tmp_path, tmp_path / cell.key, steps=50))
            assert cfg.random_weights == (row == "scratch") and cfg.labels.seed == cfg.run.seed == 1
            assert cfg.optim.freeze_encoder_steps == (50 if mode == "probe" else 0) and cfg.validation.every == 50
            assert (cfg.validation.split == "block") == (not PROTOCOLS[name].test)
    # a variant row: another row's weights (fresh ones for base scratch) with its own settings, which win
    warm = Cell("000700-blocks", "scratch-warm", str(init_checkpoint), "probe", 0.01, 0, 1, "scratch",
                ("optim.freeze_encoder_steps=10", "optim.layer_decay=0.5"))
    cfg = config_from_dict(cell_config(warm, tmp_path, tmp_path / warm.key, steps=50))
    assert cfg.random_weights and cfg.optim.freeze_encoder_steps == 10 and cfg.optim.layer_decay == 0.5
    assert warm.key.startswith("000700-blocks__scratch-warm__probe")
    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \[.nope.\]"):
        config_from_dict(cell_config(Cell("000700-blocks", "v", str(init_checkpoint), "finetune", 0.01, 0, 1,
                                          "pretrained", ("optim.nope=1",)), tmp_path, tmp_path / "v", steps=50))
    records = [{"protocol": "000700-blocks", "row": "pretrained", "mode": "finetune", "fraction": 0.001, "scans": 0,
                "miou": m} for m in (0.30, 0.40)] + [
               {"protocol": "000700-blocks", "row": "scratch", "mode": "finetune", "fraction": 0.001, "scans": 0, "miou": 0.2}]
    md = summarize(records)
    assert "| pretrained (fine-tuned) | 35.0 ± 7.1 (2 seeds) |" in md and "| scratch (fine-tuned) | 20.0 (1 seed) |" in md
    # study.md also says how many classes a cell reaches (IoU >= 1 %), for the cells that recorded them
    from ssl3d_ros.training.finetune.study import report
    from ssl3d_ros.training.study.report import classes_reached

    records[2]["iou"] = {"road": 0.5, "car": 0.009, "person": 0.0, "pole": None, "fence": 0.01}
    assert classes_reached(records[2]) == 2.0 and classes_reached(records[0]) is None
    full = report(records)
    assert full.startswith(md) and "classes with test IoU ≥ 1 %" in full
    assert "| scratch (fine-tuned) | 2.0 (1 seed) |" in full.split("classes with test IoU")[1]
    assert "| pretrained" not in full.split("classes with test IoU")[1]  # no per-class record: no row
    # --report-only rebuilds study.md from every cached cell, without --pretrained; an empty folder is exit 2
    study = tmp_path / "study"
    (study / "cells").mkdir(parents=True)
    for i, record in enumerate(records):
        (study / "cells" / f"{i}.json").write_text(json.dumps(record))
    script = [sys.executable, str(REPO / "scripts" / "finetune_study.py")]
    proc = subprocess.run([*script, "--out", str(study), "--report-only"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = (study / "study.md").read_text()
    assert written == full + "\n"  # the same tables as the run's, whatever order the cells are read in
    assert written.index("| scratch (fine-tuned)") < written.index("| pretrained (fine-tuned)")  # scratch first
    assert len(json.loads((study / "study.json").read_text())) == 3
    empty = subprocess.run([*script, "--out", str(tmp_path / "none"), "--report-only"], capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "holds no finished cell" in empty.stderr and "Traceback" not in empty.stderr


def test_a_view_is_centred_on_a_labelled_point_so_sparse_blocks_still_train():
    """Labels in one 4 m block of a 100 m scene (what labels.selection: blocks leaves at 1 %): every
    20,000-point-style ball crop is centred on a labelled point, so no view comes out without supervision
    (a crop around any point held none in most draws, and a real run stopped after 17 in a row)."""
    from ssl3d_ros.preprocessing import PreprocessConfig
    from ssl3d_ros.training.finetune.data import labelled_view
    from ssl3d_ros.training.views import ViewGroupConfig

    rng = np.random.default_rng(0)
    points = np.c_[rng.uniform(-50, 50, (40_000, 2)), rng.uniform(0, 2, 40_000)].astype(np.float32)
    labels = np.full(len(points), -1, dtype=np.int32)
    in_block = np.all(np.abs(points[:, :2] - [30.0, -20.0]) <= 2.0, axis=1)
    labels[in_block] = 3
    assert 0 < in_block.sum() < 0.01 * len(points)
    scan = Scan(points=points, labels=labels)
    cfg = ViewGroupConfig(count=1, crop="ball", crop_points=2_000)
    pre = PreprocessConfig(voxel_size=0.2, features=["xyz", "height"], max_range=None)
    views = [labelled_view(scan, cfg, pre, np.random.default_rng(seed)) for seed in range(20)]
    assert all(len(v.label_class) > 0 for v in views)
    assert all(torch.all(v.label_class == 3) for v in views)
