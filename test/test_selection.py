"""``ssl3d-select`` (ssl3d_ros.evaluation.selection): which scans to label next.

The command runs in this process on a real rosbag2 bag of simulated scans in which every frame is
recorded three times (twice exactly, once with 2 mm of noise on every point), through real checkpoints
(a random-init nano encoder with and without a segmentation head); the strategies are also checked as
the pure functions they are. Bad input (one line, exit 2) is in test_cli_errors.py.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from builders import make_checkpoint

from ssl3d_ros.evaluation.selection import (
    DEFAULT_DUPLICATE_DISTANCE, k_center, main, normalised_embeddings, select, uncertainty_ranking, uniform_in_time,
)

FRAMES = 4  # distinct simulated frames
COPIES = 3  # each recorded this many times: two exact copies and one with noise
NOISE_M = 0.002


@pytest.fixture(scope="module")
def duplicated_bag(tmp_path_factory) -> Path:
    """A bag of FRAMES distinct street scans (1.3 s of driving apart), each written COPIES times in a row."""
    from ssl3d_ros.io import BagWriter
    from ssl3d_ros.sim import SimConfig, with_lidar
    from ssl3d_ros.sim.sequence import SimSource

    source = SimSource(with_lidar(SimConfig(), beams=16, columns=512), 40, 0)
    rng = np.random.default_rng(0)
    bag = tmp_path_factory.mktemp("select") / "duplicated"
    stamp = 1_000_000_000
    with BagWriter(bag) as writer:
        for k in range(FRAMES):
            scan = source[13 * k]
            for copy in range(COPIES):
                points = scan.points
                if copy == COPIES - 1:
                    points = points + rng.normal(0.0, NOISE_M, points.shape).astype(np.float32)
                stamp += 100_000_000
                writer.write_scan("/points", dataclasses.replace(scan, points=points, stamp_ns=stamp))
    return bag


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("select_ckpt")
    return {"head": make_checkpoint(folder / "head.safetensors", with_head=True, with_pca=False),
            "encoder": make_checkpoint(folder / "encoder.safetensors", with_head=False, with_pca=False)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One embedding cache for the module's runs (keyed by checkpoint: the two never mix)."""
    return tmp_path_factory.mktemp("select_cache")


def run_select(bag: Path, out: Path, checkpoint: Path, cache: Path | None, *args: str) -> dict:
    argv = [str(bag), "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress", "--threads", "1", *args]
    if cache is not None:
        argv += ["--cache", str(cache)]
    assert main(argv) == 0
    return json.loads((out / "selection.json").read_text())


def original_frame(index: int) -> int:
    """Which distinct frame message ``index`` of the bag records."""
    return index // COPIES


# ------------------------------------------------------------------------------------ the command


@pytest.mark.parametrize("budget", [FRAMES, FRAMES + 2])
def test_diversity_never_picks_two_near_duplicates(duplicated_bag, checkpoints, cache, tmp_path, budget):
    record = run_select(duplicated_bag, tmp_path / "out", checkpoints["encoder"], cache,
                        "--budget", str(budget), "--strategy", "diversity", "--no-pictures")
    frames = [original_frame(row["index"]) for row in record["ranked"]]
    assert sorted(frames) == list(range(FRAMES)), frames  # one recording of every frame, never two
    if budget > FRAMES:  # it stops short rather than take a copy, and says why
        assert record["chosen"] == FRAMES and "near-duplicates" in record["note"]
        assert "near-duplicates" in (tmp_path / "out" / "ranked.md").read_text()
    else:
        assert record["note"] == ""


def test_uncertainty_and_mix_rank_by_the_head_and_skip_near_duplicates(duplicated_bag, checkpoints, cache, tmp_path):
    for strategy in ("uncertainty", "mix"):
        record = run_select(duplicated_bag, tmp_path / strategy, checkpoints["head"], cache,
                            "--budget", str(FRAMES + 2), "--strategy", strategy, "--no-pictures")
        rows = record["ranked"]
        assert sorted(original_frame(r["index"]) for r in rows) == list(range(FRAMES)), (strategy, rows)
        assert all(0.0 <= r["uncertainty"] <= 1.0 for r in rows)
        if strategy == "uncertainty":  # most uncertain first: the score is the uncertainty
            scores = [r["score"] for r in rows]
            assert scores == sorted(scores, reverse=True) and scores == [r["uncertainty"] for r in rows]
        else:  # the first is the most uncertain scan of the bag
            assert rows[0]["score"] == pytest.approx(rows[0]["uncertainty"])


def test_same_seed_same_ranking_another_seed_another(duplicated_bag, checkpoints, cache, tmp_path):
    def ranking(strategy: str, seed: int, name: str) -> list[tuple[str, int]]:
        record = run_select(duplicated_bag, tmp_path / name, checkpoints["encoder"], cache, "--budget", "4",
                            "--strategy", strategy, "--seed", str(seed), "--no-pictures")
        return [(r["topic"], r["index"]) for r in record["ranked"]]

    for strategy in ("random", "diversity", "uniform-time"):
        first = ranking(strategy, 0, f"{strategy}-a")
        assert ranking(strategy, 0, f"{strategy}-b") == first, strategy
        assert (tmp_path / f"{strategy}-a" / "ranked.csv").read_text() == (tmp_path / f"{strategy}-b" / "ranked.csv").read_text()
    assert ranking("random", 0, "r0") != ranking("random", 1, "r1")
    assert len({ranking("diversity", seed, f"d{seed}")[0] for seed in range(4)}) > 1  # the seeded first pick


def test_the_cache_resumes_a_run_without_encoding_again(duplicated_bag, checkpoints, tmp_path):
    cache = tmp_path / "cache"
    first = run_select(duplicated_bag, tmp_path / "a", checkpoints["encoder"], cache, "--budget", "2", "--no-pictures")
    assert (first["encoded"], first["cached"]) == (FRAMES * COPIES, 0)
    # another strategy and budget on the same scans and checkpoint: nothing is read or encoded again
    second = run_select(duplicated_bag, tmp_path / "b", checkpoints["encoder"], cache, "--budget", "3",
                        "--strategy", "uniform-time", "--no-pictures")
    assert (second["encoded"], second["cached"]) == (0, FRAMES * COPIES)
    # a run stopped part-way: the entries it wrote are kept, the rest encoded
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == FRAMES * COPIES
    for entry in entries[:5]:
        entry.unlink()
    third = run_select(duplicated_bag, tmp_path / "c", checkpoints["encoder"], cache, "--budget", "2", "--no-pictures")
    assert (third["encoded"], third["cached"]) == (5, FRAMES * COPIES - 5)
    assert third["ranked"] == first["ranked"]  # the same vectors, the same ranking
    # another checkpoint is another model: its own entries
    other = run_select(duplicated_bag, tmp_path / "d", checkpoints["head"], cache, "--budget", "2", "--no-pictures")
    assert other["encoded"] == FRAMES * COPIES


def test_the_ranked_list_names_bag_topic_stamp_and_has_a_picture_per_scan(duplicated_bag, checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    record = run_select(duplicated_bag, out, checkpoints["head"], None, "--budget", "2", "--strategy", "mix")
    capsys.readouterr()
    with open(out / "ranked.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["rank"]) for r in rows] == [1, 2]
    for row, ranked in zip(rows, record["ranked"]):
        assert row["source"] == str(duplicated_bag) and row["topic"] == "/points"
        assert int(row["stamp_ns"]) == 1_000_000_000 + 100_000_000 * (int(row["index"]) + 1)
        picture = out / row["picture"]
        assert picture.is_file() and picture.stat().st_size > 1000 and row["picture"] == ranked["picture"]
        assert (picture.parent / picture.name.replace("_pca", "_classes")).is_file()  # the head's classes too
        assert row["picture"] in (out / "ranked.md").read_text()
    assert (out / "cache").is_dir()  # the default cache is OUT/cache


def test_unreadable_scans_are_left_out_and_counted(tmp_path, checkpoints):
    """A folder of KITTI .bin scans with one truncated file: the others are ranked, the bad one listed."""
    folder = tmp_path / "velodyne"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        points = np.c_[rng.uniform(-20, 20, (3000, 2)), rng.uniform(-2, 2, (3000, 1)), rng.uniform(0, 1, (3000, 1))]
        points.astype(np.float32).tofile(folder / f"{k:06d}.bin")
    (folder / "000003.bin").write_bytes(b"\x00" * 10)
    record = run_select(folder, tmp_path / "out", checkpoints["encoder"], None, "--budget", "5", "--no-pictures",
                        "--strategy", "random")
    assert record["pool"] == 4 and record["usable"] == 3 and record["chosen"] == 3
    assert [s["scan"] for s in record["skipped"]] == [str(folder / "000003.bin")]
    assert {r["source"] for r in record["ranked"]} == {str(folder / f"{k:06d}.bin") for k in range(3)}
    assert all(r["topic"] == "" for r in record["ranked"])


# ------------------------------------------------------------------------------------ the strategies


def test_k_center_takes_the_farthest_scan_and_stops_at_near_duplicates():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16))
    # 0, 1 and 2 are distinct; 3 is 0 again and 4 is 1 with a tiny change
    pool = np.stack([base[0], base[1], base[2], base[0], base[1] + 1e-4])
    vectors = normalised_embeddings(pool)
    chosen = k_center(vectors, 5, np.random.default_rng(0))
    assert sorted({i if i < 3 else {3: 0, 4: 1}[i] for i in chosen.indices}) == [0, 1, 2] and len(chosen.indices) == 3
    assert "near-duplicates" in chosen.note
    assert math.isnan(chosen.scores[0]) and all(s >= DEFAULT_DUPLICATE_DISTANCE for s in chosen.scores[1:])
    # each next pick is the farthest from those chosen before it
    second = chosen.indices[1]
    distances = 1 - vectors @ vectors[chosen.indices[0]]
    assert distances[second] == pytest.approx(distances.max())
    # threshold 0 turns the rule off: copies are then chosen once the distinct scans are
    assert len(k_center(vectors, 5, np.random.default_rng(0), duplicate_distance=0.0).indices) == 5


def test_uncertainty_ranking_skips_a_copy_of_a_chosen_scan():
    vectors = normalised_embeddings(np.eye(4)[[0, 0, 1, 2]])
    chosen = uncertainty_ranking(vectors, np.array([0.9, 0.8, 0.5, 0.7]), 3, np.random.default_rng(0))
    assert chosen.indices == [0, 3, 2]  # 1 is scan 0 again


def test_uniform_in_time_spaces_the_budget_over_each_stream_by_its_length():
    streams = [list(range(0, 10)), list(range(10, 30))]
    chosen = uniform_in_time(streams, 3, np.random.default_rng(0))
    first = [i for i in chosen.indices if i < 10]
    second = [i for i in chosen.indices if i >= 10]
    assert len(first) == 1 and len(second) == 2
    assert second[1] - second[0] == 10  # evenly spaced: a stream of 20 in two picks, 10 apart
    everything = uniform_in_time([list(range(7))], 7, np.random.default_rng(5))
    assert everything.indices == list(range(7))


def test_select_refuses_what_it_cannot_do():
    vectors = normalised_embeddings(np.eye(3))
    with pytest.raises(ValueError, match="at least one scan"):
        select("random", 0, 0, [[0, 1, 2]])
    with pytest.raises(ValueError, match="uncertainty"):
        select("mix", 2, 0, [[0, 1, 2]], vectors=vectors, uncertainty=None)
    with pytest.raises(ValueError, match="unknown strategy"):
        select("coreset", 2, 0, [[0, 1, 2]], vectors=vectors)


def test_topics_choose_the_bag_topic_and_an_unknown_one_is_one_line(duplicated_bag, checkpoints, cache, tmp_path, capsys):
    record = run_select(duplicated_bag, tmp_path / "ok", checkpoints["encoder"], cache, "--budget", "1",
                        "--topics", "/points", "--no-pictures")
    assert record["ranked"][0]["topic"] == "/points" and record["topics"] == ["/points"]
    capsys.readouterr()
    argv = [str(duplicated_bag), "--topics", "/no_such_topic", "--budget", "1", "--out", str(tmp_path / "bad"),
            "--checkpoint", str(checkpoints["encoder"]), "--no-progress"]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ssl3d-select: error: ") and "/no_such_topic" in errors[0], errors
