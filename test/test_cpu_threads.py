"""The node's torch thread count on a shared CPU (ssl3d_ros.perception.cpu_threads).

The governor's choices are driven here by frame costs from a fixed cost table (what a 2-core machine
measured: two threads cheaper when quiet, one thread cheaper beside a busy process), so the tests do
not depend on this machine's speed or load; the thread count it applies is checked on real torch.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from ssl3d_ros.perception import ThreadGovernor, cpu_quota_cores, thread_dependent_ms, usable_cores

# ms per voxel of an HDL-64 frame (in-process, 2-core VM): 83 / 105 ms quiet, 183 / 125 ms beside a spinner
QUIET = {2: 83.0, 1: 105.0}
BUSY = {2: 183.0, 1: 125.0}
VOXELS = 1000


def drive(governor: ThreadGovernor, costs: dict[int, float], frames: int) -> list[int]:
    """Run ``frames`` frames whose cost depends only on the thread count; the counts used, in order."""
    used = []
    for _ in range(frames):
        threads = governor.threads_for_next_frame()
        used.append(threads)
        governor.record(threads, costs[threads], VOXELS)
    return used


def test_fixed_count_is_applied_once_and_never_probed():
    applied = []
    governor = ThreadGovernor(fixed=1, max_threads=2, apply=applied.append)
    assert drive(governor, QUIET, 200) == [1] * 200
    assert applied == [1] and governor.probes == 0 and governor.values()["cpu_threads_mode"] == "fixed"


def test_quiet_cpu_keeps_every_core_and_probes_rarely():
    applied = []
    governor = ThreadGovernor(max_threads=2, apply=applied.append, first_probe_after=10, probe_every=50)
    used = drive(governor, QUIET, 210)
    assert governor.threads == 2 and governor.switches == 0
    # probes at frames 10, 60, 110, 160 (three frames at one thread each): 12 of 210 frames
    assert used.count(1) == 12 and governor.probes == 4
    assert used[:10] == [2] * 10 and used[10:13] == [1, 1, 1] and used[13] == 2
    values = governor.values()
    assert values["cpu_threads_in_use"] == "2" and values["cpu_threads_mode"] == "adaptive"
    assert float(values["cpu_threads_1_us_per_voxel"]) == pytest.approx(1e3 * QUIET[1] / VOXELS)


def test_a_busy_neighbour_moves_it_to_one_thread_and_its_departure_back():
    governor = ThreadGovernor(max_threads=2, apply=lambda n: None, first_probe_after=10, probe_every=50)
    drive(governor, QUIET, 20)
    assert governor.threads == 2
    # another process starts: the cost drifts up, a probe starts at once (not 50 frames later)
    used = drive(governor, BUSY, 12)
    assert governor.threads == 1 and governor.switches == 1
    assert used.index(1) <= 6
    drive(governor, BUSY, 30)
    assert governor.threads == 1
    # it stops: one thread gets 16 % cheaper (past the 15 % drift): two threads are tried at once and kept
    used = drive(governor, QUIET, 12)
    assert governor.threads == 2 and governor.switches == 2 and 2 in used[:8]


def test_a_load_change_below_the_drift_is_found_by_the_periodic_probe():
    slightly_busy = {2: 92.0, 1: 70.0}  # two threads 11 % dearer than quiet: no drift, but one thread now wins
    governor = ThreadGovernor(max_threads=2, apply=lambda n: None, first_probe_after=10, probe_every=50)
    drive(governor, QUIET, 20)
    used = drive(governor, slightly_busy, 50)
    assert governor.threads == 1 and used.index(1) >= 40  # the probe due at frame 60


def test_a_candidate_must_beat_the_current_count_by_the_margin():
    close = {2: 100.0, 1: 95.0}  # one thread 5 % cheaper: inside the 10 % margin, noise
    governor = ThreadGovernor(max_threads=2, apply=lambda n: None, first_probe_after=5, probe_every=20)
    drive(governor, close, 100)
    assert governor.threads == 2 and governor.switches == 0 and governor.probes >= 4


def test_more_cores_probe_both_neighbours():
    costs = {1: 300.0, 2: 160.0, 3: 120.0, 4: 150.0}  # four cores, one of them busy: three threads best
    governor = ThreadGovernor(max_threads=4, apply=lambda n: None, first_probe_after=5, probe_every=10)
    drive(governor, costs, 60)
    assert governor.threads == 3


def test_frames_of_another_count_and_empty_frames_are_not_counted():
    governor = ThreadGovernor(max_threads=2, apply=lambda n: None, first_probe_after=3, probe_every=100)
    governor.record(1, 1.0, VOXELS)  # began before a switch: not the current count, ignored
    governor.record(2, 50.0, 0)  # no voxel: no cost
    governor.record(2, float("nan"), VOXELS)
    assert governor.values().get("cpu_threads_2_us_per_voxel") is None and not governor.probing


def test_thread_dependent_stages():
    assert thread_dependent_ms({"preprocess": 10.0, "inference": 60.0, "postprocess": 2.0, "novelty": 1.5}) == 70.0


def test_the_count_reaches_torch_on_the_inference_thread():
    """The governor applies the count on the thread that calls it (the node's inference thread)."""
    import torch

    before = torch.get_num_threads()
    seen = {}

    def inference_thread():
        governor = ThreadGovernor(fixed=1)  # applies with torch.set_num_threads
        seen["returned"] = governor.threads_for_next_frame()
        seen["torch"] = torch.get_num_threads()

    try:
        worker = threading.Thread(target=inference_thread)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before)
    assert seen == {"returned": 1, "torch": 1}


def test_usable_cores_follow_the_affinity():
    code = "import os; os.sched_setaffinity(0, {0}); from ssl3d_ros.perception import usable_cores; print(usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env=dict(os.environ))
    assert out.stdout.strip() == "1"
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("text", "cores"), [("150000 100000\n", 1.5), ("max 100000\n", None), ("bad\n", None),
                                             ("100000 0\n", None)])
def test_cgroup_quota(tmp_path, text, cores):
    (tmp_path / "cpu.max").write_text(text)
    assert cpu_quota_cores(tmp_path) == cores
    assert cpu_quota_cores(tmp_path / "absent") is None
