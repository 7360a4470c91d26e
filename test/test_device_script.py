"""The GPU device script rehearsed on the CPU: benchmarks/device/run.py --device cpu --small end to end
(every section, real scans, the node over DDS in its own process, torchrun), so that the first run on
a GPU machine does not fail on a typo; install.sh's unpack-and-run on a made-up carry folder; and how
the carry's wheels become one tree (ssl3d_ros.evaluation.device_carry, what scripts/prepare-device-carry
packs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ssl3d_ros.evaluation.device_carry import requirements, unpack

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "benchmarks" / "device"
SECTIONS = ["environment", "correctness", "cuda_tests", "encoder", "node", "training", "finetune"]


def _numbers(value) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return 1
    if isinstance(value, dict):
        return sum(_numbers(v) for v in value.values())
    if isinstance(value, list):
        return sum(_numbers(v) for v in value)
    return 0


@pytest.mark.ros
@pytest.mark.slow
def test_device_script_rehearsal_on_cpu(tmp_path, shared_data):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", SSL3D_SHARED_DATA=str(shared_data))
    cmd = [str(REPO / "scripts" / "netns-run"), sys.executable, str(DEVICE / "run.py"), "--device", "cpu", "--small",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # ~65 s on a quiet machine
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert sorted(p.name for p in out.iterdir()) == ["device.json", "device.log"]  # all that comes back
    report = json.loads((out / "device.json").read_text())
    assert list(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert "error" not in section, (name, section.get("error"), section.get("traceback"))
        assert section["status"] == "ok", name
        assert _numbers({k: v for k, v in section.items() if k not in ("seconds", "budget_s")}) > 0, name
    s = report["sections"]
    assert s["correctness"]["all_within_tolerance"]
    assert s["cuda_tests"]["failures"] == 0 and s["cuda_tests"]["errors"] == 0 and s["cuda_tests"]["passed"] >= 1
    assert {r["size"] for r in s["encoder"]["rows"]} == {"ref16", "nano"}
    for model in ("packaged", "small"):
        node = s["node"]["models"][model]
        assert [r["input_rate_hz"] > 0 for r in node["runs"]] == [True, True]
        assert node["runs"][0]["latency_ms"]["p99"] is not None and node["offline_equal"]
    assert s["training"]["torchrun"]["resumed_to_step"] == 4
    assert [r["recipe"] for r in s["training"]["rows"]] == ["sonata", "msm", "jepa", "mae", "acl"]
    finetune = s["finetune"]
    assert finetune["device"] == "cpu" and finetune["step_ms_median"] > finetune["forward_ms_median"] > 0
    log = (out / "device.log").read_text()
    assert "latency p50" in log and "torchrun --nproc-per-node 1" in log


def test_install_script_unpacks_the_carry_and_runs_the_command_with_it(tmp_path):
    carry, tree = tmp_path / "carry", tmp_path / "tree" / "site"
    (tree / "lib").mkdir(parents=True)
    (tree / "ros_probe.libs").mkdir()
    (tree / "probe_module.py").write_text("VALUE = 42\n")
    carry.mkdir()
    with tarfile.open(carry / "site-cp312.tar.xz", "w:xz") as tar:
        tar.add(tree, arcname="site")
    (carry / "data").mkdir()
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SSL3D_SHARED_DATA")}
    env.update(SSL3D_DEVCARRY=str(carry), SSL3D_DEVICE_SITE=str(site))
    probe = ("import os, probe_module; print(probe_module.VALUE, os.environ['LD_LIBRARY_PATH'].split(':')[:2], "
             "os.environ['AMENT_PREFIX_PATH'])")
    proc = subprocess.run(["bash", str(DEVICE / "install.sh"), sys.executable, "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"42 {[str(site / 'lib'), str(site / 'ros_probe.libs')]} {site}"

    missing = subprocess.run(["bash", str(DEVICE / "install.sh"), "true"], cwd=tmp_path, capture_output=True, text=True,
                             env=dict(env, SSL3D_DEVCARRY=str(tmp_path / "nowhere")), timeout=60)
    assert missing.returncode == 2 and "make device-carry" in missing.stderr


def test_carry_unpacks_wheels_as_an_installed_prefix_and_follows_only_requirements_that_apply(tmp_path):
    import zipfile

    wheel = tmp_path / "ros_probe-1.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    library = b"\x7fELF" + bytes(range(256)) * 64
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ros_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: ros-probe\nVersion: 1.0\n"
                   "Requires-Dist: ros-rcl\nRequires-Dist: dataclasses; python_version == \"3.6\"\n"
                   "Requires-Dist: pytest; extra == \"test\"\nRequires-Dist: pywin32; sys_platform == \"win32\"\n"
                   "Requires-Dist: lark>=1.0 ; python_version >= \"3.8\"\n")
        z.writestr("ros_probe/__init__.py", "")
        z.writestr("ros_probe-1.0.data/data/lib/python3.12/site-packages/probe_msgs/__init__.py", "")
        z.writestr("ros_probe-1.0.data/data/lib/libprobe.so", library)
        z.writestr("ros_probe-1.0.data/data/lib/libprobe.so.1", library)  # wheels hold copies, not links
        z.writestr("ros_probe-1.0.data/data/share/probe/package.xml", "<package/>")
        z.writestr("ros_probe-1.0.data/data/include/probe.h", "")
        z.writestr("ros_probe-1.0.data/data/lib/libstatic.a", "")
        z.writestr("ros_probe-1.0.data/scripts/probe-tool", "")
    assert requirements(wheel) == ["ros-rcl", "lark"]

    site = tmp_path / "site"
    unpack([wheel], site)
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if not p.is_dir())
    assert files == ["lib/libprobe.so", "lib/libprobe.so.1", "probe_msgs/__init__.py", "ros_probe-1.0.dist-info/METADATA",
                     "ros_probe/__init__.py", "share/probe/package.xml"]
    assert (site / "lib" / "libprobe.so.1").is_symlink() and (site / "lib" / "libprobe.so.1").read_bytes() == library
