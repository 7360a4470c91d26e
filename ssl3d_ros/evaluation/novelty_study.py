"""The novelty study: does a checkpoint's novelty score tell held-back frames of its reference data from
other sensors and places, and does it rise on a replayed bag that switches scene midway?

    python -m ssl3d_ros.evaluation.novelty_study --checkpoint CKPT --reference PATH [PATH ...] \\
        [--exclude GLOB ...] --familiar NAME=SOURCE --other NAME=SOURCE [...] [--control NAME=SOURCE ...] \\
        [--switch-checkpoint CKPT --switch-reference SOURCE] --out DIR

1. The reference is fitted by ``ssl3d-novelty-ref`` (a subprocess: this module never imports the
   training package) with CKPT's encoder on ``--reference`` minus ``--exclude``, into a copy of CKPT in
   the work folder.
2. Every frame of every set is scored as the node scores it: sent through
   :meth:`PerceptionPipeline.process_cloud` as a PointCloud2 (x, y, z and its intensity, if any) with the
   node's default parameters (a missing intensity fed as zeros, the voxel budget). SOURCE is a scan folder, file or
   bag (``ssl3d_ros.io.open_source``), or the simulator: ``sim:outdoor`` (a street), ``sim:indoor`` (a
   room), ``sim-depth:outdoor`` / ``sim-depth:indoor`` (its depth camera), with ``:N`` frames, seed
   :data:`SIM_SEED` (the pretraining and reference defaults use seed 0: other streets and rooms).
3. AUROC of the frame score for each ``--other`` and ``--control`` set against ``--familiar`` (the
   probability that a frame of the set scores above a familiar frame, ties counting half), and the
   same for the share of a frame's voxels over 1.0, the per-voxel alternative.
4. A bag of ``--switch-frames`` street scans then as many room scans (one topic, 10 Hz) is written and
   replayed message by message through the same pipeline (``process_cloud``: the node's decode),
   with CKPT's reference and, when given, ``--switch-checkpoint`` with a reference of
   ``--switch-reference`` (the simulator's own streets: the street is familiar there).

Writes DIR/results.json, DIR/results.md and DIR/novelty.png. docs/novelty-study holds this
repository's run (scripts/novelty-study).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..cli import EXIT_CODES_EPILOG, console_script
from ..config import ConfigError
from .report import fmt, markdown_table, write_json, write_markdown

log = logging.getLogger(__name__)

PROG = "novelty-study"  # python -m ssl3d_ros.evaluation.novelty_study (scripts/novelty-study runs it)
SIM_SEED = 1000  # other streets and rooms than the simulator's default seed 0
SIM_PREFIXES = ("sim:outdoor", "sim:indoor", "sim-depth:outdoor", "sim-depth:indoor")
DEFAULT_SIM_FRAMES = 6
TARGET_AUROC = 0.9  # the target for other sensors
GROUPS = {"familiar": "held back, reference data", "other": "other sensor", "control": "same sensor, other place"}


@dataclass(frozen=True)
class FrameSet:
    name: str
    source: str
    group: str  # "familiar", "other" or "control"


def parse_set(text: str, group: str) -> FrameSet:
    name, sep, source = text.partition("=")
    if not sep or not name or not source or "/" in name:
        raise ConfigError(f"--{group} {text!r}: expected NAME=SOURCE (a scan folder, file, bag, or sim:outdoor[:N], "
                          "sim:indoor[:N], sim-depth:outdoor[:N], sim-depth:indoor[:N])")
    return FrameSet(name, source, group)


def sim_frames(spec: str, default_count: int = DEFAULT_SIM_FRAMES, seed: int = SIM_SEED) -> list:
    """The scans of a ``sim:`` / ``sim-depth:`` spec (``:N`` frames), seed ``seed``."""
    from ..sim import SimConfig, simulate_depth_sequence, simulate_sequence

    kind, scene, *count = spec.split(":")
    if scene not in ("outdoor", "indoor") or len(count) > 1 or not (not count or count[0].isdigit()):
        raise ConfigError(f"{spec}: expected {kind}:outdoor[:N] or {kind}:indoor[:N]")
    n = int(count[0]) if count else default_count
    cfg = SimConfig(scene=scene)
    if kind == "sim-depth":
        return [frame.to_scan() for frame in simulate_depth_sequence(cfg, n, seed)]
    return list(simulate_sequence(cfg, n, seed))


def load_frames(frame_set: FrameSet, max_frames: int) -> tuple[list, list[str]]:
    """(scans, their descriptions): at most ``max_frames`` of the set, evenly spaced."""
    if frame_set.source.startswith(SIM_PREFIXES):
        scans = sim_frames(frame_set.source)
        return scans, [scan.source for scan in scans]
    from ..io import open_source

    source = open_source(frame_set.source)
    n = len(source)
    indices = sorted({int(i * n / max_frames) for i in range(max_frames)}) if n > max_frames else range(n)
    return [source[i] for i in indices], [source.describe(i) for i in indices]


def auroc(familiar: Sequence[float], other: Sequence[float]) -> float:
    """P(a frame of ``other`` scores above a ``familiar`` frame), ties counting half (Mann-Whitney U)."""
    a, b = np.asarray(familiar, float)[None, :], np.asarray(other, float)[:, None]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float((b > a).mean() + 0.5 * (b == a).mean())


def fit_reference(checkpoint: Path, sources: Sequence[str], exclude: Sequence[str], out: Path, scans: int) -> Path:
    """``ssl3d-novelty-ref`` in a subprocess; returns the checkpoint it wrote."""
    command = [sys.executable, "-m", "ssl3d_ros.training.novelty", "--checkpoint", str(checkpoint), "--data",
               *sources, "--scans", str(scans), "--out", str(out)]
    if exclude:
        command += ["--exclude", *exclude]
    log.info("fitting the reference: %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ConfigError(f"ssl3d-novelty-ref failed (exit {result.returncode}): {lines[-1] if lines else ''}")
    return out


def as_message(scan):
    """The PointCloud2 a driver would send for ``scan``: x, y, z and its intensity when it has one."""
    from types import SimpleNamespace

    from ..codec import FieldSpec, encode_cloud, fill_cloud_message

    fields = {"intensity": scan.fields["intensity"].astype(np.float32)} if "intensity" in scan.fields else {}
    return fill_cloud_message(SimpleNamespace(), encode_cloud(scan.points, fields), lambda **kw: FieldSpec(**kw))


def score_frames(pipe, scans: Sequence) -> list[dict[str, float]]:
    """Score and voxel share of each scan, as the node computes them from its message (decode, a missing
    intensity fed as zeros, the voxel budget; no segmentation, no embeddings)."""
    rows = []
    for scan in scans:
        result = pipe.process_cloud(as_message(scan), segmentation=False, embeddings=False).result
        rows.append({"score": result.novelty, "voxel_share": result.novelty_voxel_share,
                     "voxels": int(result.point_voxel.max()) + 1 if result.point_voxel.size else 0,
                     "novelty_ms": result.timings_ms.get("novelty", float("nan"))})
    return rows


def switch_bag(path: Path, frames: int) -> Path:
    """A rosbag2 of ``frames`` street scans then ``frames`` room scans on /points, 10 Hz throughout."""
    from ..io import BagWriter

    street, room = sim_frames(f"sim:outdoor:{frames}"), sim_frames(f"sim:indoor:{frames}")
    start = street[0].stamp_ns
    with BagWriter(path) as writer:
        for k, scan in enumerate([*street, *room]):
            writer.write_scan("/points", dataclasses.replace(scan, stamp_ns=start + k * 100_000_000), label_field=None)
    return path


def replay_scores(pipe, bag: Path) -> list[float]:
    """The novelty of every message of ``bag``, decoded as the node decodes it."""
    from ..io import BagSource

    with BagSource(bag) as source:
        return [pipe.process_cloud(source.message(i), segmentation=False, embeddings=False).result.novelty
                for i in range(len(source))]


def pipeline(checkpoint: Path):
    from ..perception import NodeConfig, PerceptionPipeline

    pipe = PerceptionPipeline.from_checkpoint(checkpoint, device="cpu", overrides=NodeConfig(device="cpu"))
    pipe.warm_up()
    return pipe


def summarise(rows: list[dict[str, float]], threshold: float) -> dict[str, float]:
    scores = np.array([r["score"] for r in rows], float)
    return {"frames": len(rows), "median": float(np.median(scores)), "min": float(scores.min()),
            "max": float(scores.max()), "over_threshold": float((scores > threshold).mean()),
            "voxel_share_median": float(np.median([r["voxel_share"] for r in rows]))}


def report_markdown(data: dict[str, Any]) -> str:
    ref, threshold = data["reference"], data["threshold"]
    familiar = data["familiar"]
    lines = [
        "# Novelty study",
        "",
        f"Checkpoint `{data['checkpoint']}`; reference fitted by `ssl3d-novelty-ref` on {ref['frames']} frames of "
        f"{', '.join(f'`{s}`' for s in ref['sources'])}" + (f" without {', '.join(f'`{e}`' for e in ref['exclude'])}"
                                                             if ref['exclude'] else "")
        + f" ({ref['prototypes']} prototypes in {ref['dims']} dims). Every frame scored as the node scores it "
        f"(default parameters; {data['hardware']}; {data['date']}). Score 1.0 = the reference frames' 95th percentile; "
        f"`novelty.threshold` {threshold:g}.",
        "",
        f"AUROC: the probability that a frame of the set scores above a frame of `{familiar}` (held back), ties "
        f"counting half; target ≥ {TARGET_AUROC} for other sensors. *Voxel share*: the same for the share of a "
        "frame's voxels whose distance to the nearest prototype is over the reference's 95th percentile (the "
        "per-voxel alternative the frame score is compared with).",
        "",
    ]
    rows = []
    for name, s in data["sets"].items():
        pair = data["pairs"].get(name, {})
        rows.append([name, GROUPS[s["group"]], str(s["summary"]["frames"]), fmt(s["summary"]["median"], 2),
                     f"{fmt(s['summary']['min'], 2)}–{fmt(s['summary']['max'], 2)}",
                     fmt(s["summary"]["over_threshold"], percent=True),
                     fmt(pair.get("auroc"), 2) if pair else "–", fmt(pair.get("auroc_voxel_share"), 2) if pair else "–"])
    lines.append(markdown_table(["set", "kind", "frames", "median score", "range", f"% over {threshold:g}",
                                 "AUROC", "AUROC (voxel share)"], rows))
    others = [p["auroc"] for n, p in data["pairs"].items() if data["sets"][n]["group"] == "other"]
    if others:
        lines += ["", f"Other sensors: AUROC {min(others):.2f} at worst ({sum(a >= TARGET_AUROC for a in others)} of "
                      f"{len(others)} sets at or above {TARGET_AUROC})."]
    for run in data["switch"]:
        scores = np.array(run["scores"], float)
        half = len(scores) // 2
        lines += ["", f"## Replayed bag, street → room ({run['label']})", "",
                  f"{half} street scans then {half} room scans (simulator seed {SIM_SEED}, 10 Hz, one topic), "
                  f"replayed through `PerceptionPipeline.process_cloud`. Checkpoint `{run['checkpoint']}`, reference "
                  f"of {run['reference']}.", "",
                  markdown_table(["part", "median score", "range", f"% over {threshold:g}"],
                                 [[part, fmt(float(np.median(v)), 2), f"{fmt(float(v.min()), 2)}–{fmt(float(v.max()), 2)}",
                                   fmt(float((v > threshold).mean()), percent=True)]
                                  for part, v in (("street", scores[:half]), ("room", scores[half:]))]),
                  "", "Per frame: " + " ".join(f"{v:.2f}" for v in scores)]
    lines += ["", "![novelty per frame](novelty.png)", "", "Command:", "", "```bash", data["command"], "```"]
    return "\n".join(lines)


def plot(path: Path, data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    names = list(data["sets"])
    for i, name in enumerate(names):
        s = data["sets"][name]
        scores = [r["score"] for r in s["frames"]]
        colour = {"familiar": "tab:green", "other": "tab:red", "control": "tab:blue"}[s["group"]]
        left.scatter(np.full(len(scores), i) + np.linspace(-0.15, 0.15, len(scores)), scores, s=14, color=colour)
    left.axhline(data["threshold"], color="k", lw=0.8, ls="--")
    left.set_yscale("log")
    left.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    left.set_ylabel("frame novelty (1 = reference's 95th percentile)")
    left.set_title("frames per set (green: held back, blue: same sensor, red: other sensors)", fontsize=9)
    for run in data["switch"]:
        right.plot(run["scores"], marker=".", label=run["label"])
    right.axhline(data["threshold"], color="k", lw=0.8, ls="--", label="novelty.threshold")
    if data["switch"]:
        right.axvline(len(data["switch"][0]["scores"]) / 2 - 0.5, color="grey", lw=0.8)
    right.set_yscale("log")
    right.set_xlabel("bag frame (street, then room)")
    right.set_title("replayed bag: street → room", fontsize=9)
    right.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1].rstrip() + "\n\n" + EXIT_CODES_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="the model (any node checkpoint; its reference is replaced)")
    p.add_argument("--reference", nargs="+", required=True, metavar="SOURCE", help="the reference's scans (ssl3d-novelty-ref --data)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="GLOB", help="scan paths left out of the reference")
    p.add_argument("--reference-scans", type=int, default=0, help="reference scans used (0: all; default)")
    p.add_argument("--familiar", required=True, metavar="NAME=SOURCE", help="held-back frames of the reference data")
    p.add_argument("--other", nargs="+", default=[], metavar="NAME=SOURCE", help="other sensors (target AUROC 0.9)")
    p.add_argument("--control", nargs="+", default=[], metavar="NAME=SOURCE", help="the same sensor in other places")
    p.add_argument("--max-frames", type=int, default=10, help="frames per set, evenly spaced (default 10)")
    p.add_argument("--switch-frames", type=int, default=16, help="street and room scans of the replayed bag (default 16 each; 0: none)")
    p.add_argument("--switch-checkpoint", type=Path, help="also replay the bag with this checkpoint ...")
    p.add_argument("--switch-reference", nargs="+", default=[], metavar="SOURCE", help="... and a reference of these scans")
    p.add_argument("--switch-reference-scans", type=int, default=32,
                   help="scans of --switch-reference used, evenly spaced (default 32; 0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--work", type=Path, help="folder for the fitted checkpoints and the bag (default: a temporary one)")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    return p


@console_script(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sets = [parse_set(args.familiar, "familiar"), *(parse_set(t, "other") for t in args.other),
            *(parse_set(t, "control") for t in args.control)]
    if len({s.name for s in sets}) != len(sets):
        raise ConfigError("set names must be unique")
    if args.switch_checkpoint is not None and not args.switch_reference:
        raise ConfigError("--switch-checkpoint needs --switch-reference (the scans its reference describes)")
    import torch

    from ..checkpoint import read_meta
    from ..perception import NodeConfig

    torch.set_num_threads(max(1, args.threads))
    read_meta(args.checkpoint)
    threshold = NodeConfig().novelty.threshold
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="novelty-study-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        fitted = fit_reference(args.checkpoint, args.reference, args.exclude, work / "with_reference.safetensors",
                               args.reference_scans)
        pipe = pipeline(fitted)
        ref = pipe.checkpoint.novelty
        data: dict[str, Any] = {
            "command": " ".join(["python -m ssl3d_ros.evaluation.novelty_study", *(argv if argv is not None else sys.argv[1:])]),
            "checkpoint": str(args.checkpoint), "threshold": threshold,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                        f"{args.threads} thread(s)",
            "reference": {"sources": list(args.reference), "exclude": list(args.exclude), "frames": ref.frames,
                          "voxels": ref.voxels, "dims": ref.dims, "prototypes": ref.num_prototypes,
                          "quantile_levels": list(ref.quantile_levels),
                          "frame_quantiles": ref.frame_quantiles.tolist(), "voxel_quantiles": ref.voxel_quantiles.tolist()},
            "familiar": sets[0].name, "sets": {}, "pairs": {}, "switch": [],
        }
        for frame_set in sets:
            scans, names = load_frames(frame_set, args.max_frames)
            rows = score_frames(pipe, scans)
            for row, name in zip(rows, names):
                row["scan"] = name
            data["sets"][frame_set.name] = {"group": frame_set.group, "source": frame_set.source, "frames": rows,
                                            "summary": summarise(rows, threshold)}
            log.info("%s: median novelty %.2f over %d frames", frame_set.name, data["sets"][frame_set.name]["summary"]["median"],
                     len(rows))
        familiar = data["sets"][sets[0].name]["frames"]
        for frame_set in sets[1:]:
            rows = data["sets"][frame_set.name]["frames"]
            data["pairs"][frame_set.name] = {
                "auroc": auroc([r["score"] for r in familiar], [r["score"] for r in rows]),
                "auroc_voxel_share": auroc([r["voxel_share"] for r in familiar], [r["voxel_share"] for r in rows])}
        if args.switch_frames > 0:
            bag = switch_bag(work / "street_to_room", args.switch_frames)
            data["switch"].append({"label": f"{args.checkpoint.name}, the reference above",
                                   "checkpoint": str(args.checkpoint),
                                   "reference": f"{ref.frames} scans of {', '.join(args.reference)}",
                                   "scores": replay_scores(pipe, bag)})
            if args.switch_checkpoint is not None:
                other = fit_reference(args.switch_checkpoint, args.switch_reference, [],
                                      work / "switch_with_reference.safetensors", args.switch_reference_scans)
                frames = pipeline(other)
                data["switch"].append({"label": f"{args.switch_checkpoint.name}, reference of {', '.join(args.switch_reference)}",
                                       "checkpoint": str(args.switch_checkpoint),
                                       "reference": f"{frames.checkpoint.novelty.frames} scans of "
                                                    f"{', '.join(args.switch_reference)}",
                                       "scores": replay_scores(frames, bag)})
        data["seconds"] = round(time.time() - started)
    write_json(args.out / "results.json", data)
    write_markdown(args.out / "results.md", report_markdown(data))
    plot(args.out / "novelty.png", data)
    print(f"{PROG}: report in {args.out}/results.md")
    return 0


__all__ = ["PROG", "SIM_SEED", "SIM_PREFIXES", "DEFAULT_SIM_FRAMES", "TARGET_AUROC", "GROUPS", "FrameSet",
           "parse_set", "sim_frames", "load_frames", "auroc", "fit_reference", "as_message", "score_frames", "switch_bag",
           "replay_scores", "pipeline", "summarise", "report_markdown", "plot", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
