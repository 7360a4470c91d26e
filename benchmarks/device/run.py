#!/usr/bin/env python3
"""The GPU device script (issue 18): every CUDA measurement in one command of at most 6.5 minutes.

    bash benchmarks/device/install.sh && python3 benchmarks/device/run.py --device cuda --out "$OUT"
    scripts/netns-run .venv/bin/python benchmarks/device/run.py --device cpu --small --out /tmp/dev   # rehearsal

Sections, in order, each with its own time budget (``--budget-scale`` stretches them) and each in
try/except, so one failure still leaves the others' figures and the error in the outputs:

- ``environment``: versions, the GPU, whether spconv and rclpy import, how DDS is kept local;
- ``correctness``: torch and spconv backends agree (fp32 as on CPU, fp16/bf16 within a stated tolerance);
- ``cuda_tests``: the tests that skip without CUDA, run with pytest;
- ``encoder``: forward latency per size, backend and precision on the benchmark scans, peak memory,
  against the in-run ``ref16`` yardstick;
- ``node``: the node over DDS in its own process, stamp -> segmentation received here, p50/p90/p99 at
  10 and 20 Hz, device memory over the frames, and its output against offline inference;
- ``training``: pretraining steps per recipe (bf16 on CUDA), whether the DataLoader keeps up, and a
  ``torchrun --nproc-per-node 1`` run (NCCL on CUDA, gloo on CPU) that stops and resumes;
- ``finetune``: fine-tuning throughput (benchmarks/bench_finetune.py on the device, bf16 on CUDA).

Writes OUT/device.json (every figure, per section ``status`` ok / error, its ``error``) and
OUT/device.log (everything printed). The JSON is rewritten after every section.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CARRIED_DATA = REPO / ".devcarry" / "data"
if "SSL3D_SHARED_DATA" not in os.environ and CARRIED_DATA.is_dir() and not (REPO.parent / "shared" / "data").is_dir():
    os.environ["SSL3D_SHARED_DATA"] = str(CARRIED_DATA)  # the scans travelled with the carry folder
for path in (str(REPO), str(Path(__file__).resolve().parent)):
    if path not in sys.path:
        sys.path.insert(0, path)

#: seconds per section on the GPU machine, 360 together: with the install (~10 s) within the 6.5 minutes.
#: What a section leaves unspent goes to the next one, and an overrun is taken from it.
BUDGET_S = {"environment": 15, "correctness": 25, "cuda_tests": 30, "encoder": 65, "node": 125, "training": 75,
            "finetune": 25}


@dataclass
class Context:
    device: str
    small: bool
    out: Path
    log_file: object
    scale: float
    work: Path
    deadline: float = 0.0
    notes: list[str] = field(default_factory=list)

    def log(self, line: str = "") -> None:
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        """Seconds left in the current section's budget."""
        return self.deadline - time.monotonic()

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def localhost_dds(ctx: Context) -> str:
    """Keep DDS on this machine: a private network namespace (scripts/netns-run) when this process is
    in one, else discovery limited to localhost (root in a container may not be allowed unshare)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_large_data.xml"))
    if os.environ.get("SSL3D_IN_NETNS") == "1":
        return "private network namespace (scripts/netns-run)"
    os.environ["ROS_LOCALHOST_ONLY"] = "1"
    return "no network namespace (unshare refused or unavailable): ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_LOCALHOST_ONLY=1"


def enter_netns(argv: list[str]) -> None:
    """Re-run this script under scripts/netns-run when a network namespace can be made here."""
    if os.environ.get("SSL3D_IN_NETNS") == "1" or not shutil.which("unshare"):
        return
    # the same command netns-run runs: unshare may be allowed and `ip` still missing
    probe_cmd = ["unshare", "--net", "sh", "-c", "ip link set lo up"]
    if os.geteuid() != 0:
        probe_cmd = ["sudo", "-n", *probe_cmd]
    try:
        probe = subprocess.run(probe_cmd, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return
    if probe.returncode == 0:
        os.execv(str(REPO / "scripts" / "netns-run"), [str(REPO / "scripts" / "netns-run"), sys.executable, *argv])


def section_environment(ctx: Context) -> dict:
    import torch

    info: dict = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
                  "load_average": list(os.getloadavg()), "dds": localhost_dds(ctx)}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    multiprocessors=props.multi_processor_count, capability=list(torch.cuda.get_device_capability(0)))
    from ssl3d_ros.models.sparse import spconv_available

    info["spconv_available"] = bool(spconv_available(ctx.device))
    try:
        import spconv

        info["spconv"] = getattr(spconv, "__version__", "?")
    except ImportError as exc:
        info["spconv"] = f"not importable: {exc}"
    try:
        import rclpy  # noqa: F401

        info["rclpy"] = "importable"
    except ImportError as exc:
        info["rclpy"] = f"not importable: {exc}"
    from seam import data_folder

    info["data_folder"] = str(data_folder())
    for key, value in info.items():
        ctx.log(f"  {key}: {value}")
    return info


def run_sections(ctx: Context, names: list[str]) -> dict:
    from sections import SECTIONS

    functions = {"environment": section_environment, **SECTIONS}
    report: dict = {"command": " ".join(sys.argv), "device": ctx.device, "small": ctx.small,
                    "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
    json_path = ctx.out / "device.json"
    unspent = 0.0
    for name in names:
        budget = BUDGET_S[name] * ctx.scale + unspent
        ctx.deadline = time.monotonic() + budget
        ctx.log(f"== {name} (budget {budget:.0f} s)")
        started = time.monotonic()
        try:
            result = functions[name](ctx)
            entry = {"status": result.pop("status", "ok"), **result}
        except Exception as exc:  # one section's failure must not cost the others' figures
            tail = traceback.format_exc().strip().splitlines()[-12:]
            entry = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": tail}
            ctx.log(f"  ERROR {entry['error']}")
            for line in tail:
                ctx.log(f"    {line}")
        entry["seconds"] = round(time.monotonic() - started, 1)
        unspent = budget - entry["seconds"]  # an overrun shortens the sections after it
        entry["budget_s"] = round(budget, 1)
        ctx.log(f"  -> {entry['status']} in {entry['seconds']} s")
        report["sections"][name] = entry
        json_path.write_text(json.dumps(report, indent=1, default=str))
    report["notes"] = ctx.notes
    report["total_s"] = round(sum(s["seconds"] for s in report["sections"].values()), 1)
    json_path.write_text(json.dumps(report, indent=1, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, required=True, help="folder for device.json and device.log")
    ap.add_argument("--small", action="store_true", help="small sizes and short runs (the CPU rehearsal)")
    ap.add_argument("--sections", nargs="+", choices=list(BUDGET_S), default=list(BUDGET_S))
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    args = ap.parse_args(argv)
    enter_netns([str(Path(__file__).resolve()), *argv])
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("run.py: --device cuda but torch sees no CUDA device (use --device cpu for the rehearsal)",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ssl3d_device_"))  # outside OUT: only the JSON and the log go back
    with open(args.out / "device.log", "w", encoding="utf-8") as log_file:
        ctx = Context(args.device, args.small, args.out, log_file, args.budget_scale, work)
        report = run_sections(ctx, ["environment", *[s for s in args.sections if s != "environment"]])
        failed = [n for n, s in report["sections"].items() if s["status"] == "error"]
        ctx.log(f"done in {report['total_s']} s; " + (f"errors in {', '.join(failed)}" if failed else "no errors"))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
