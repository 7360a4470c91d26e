"""Replay bookkeeping without ROS: per-frame records, latency statistics, the report and plots.

Shared by the DDS replay (through the real node) and the offline replay (the same pipeline called
directly), so both produce the same JSON, markdown and PNG files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..labels import ScoreAccumulator
from .report import fmt, markdown_table, write_json, write_markdown

STAGES = ("pre", "inference", "post", "total")  # the node's ~/debug/processing_time_ms layout


@dataclass
class FrameRecord:
    """What happened to one input frame."""

    index: int
    stamp_ns: int  # header stamp (the key outputs are matched by)
    points: int  # height * width of the input cloud
    sent_s: float | None = None  # monotonic send time (DDS) or start of processing (offline)
    received_s: float | None = None  # monotonic time the output arrived / processing returned
    # "ok", "dropped" (no output), "rejected" (the node refused the input as malformed), "error" (the
    # node failed while processing it), "unreadable" (not readable from the bag, never sent)
    status: str = "pending"
    stages_ms: dict[str, float] = field(default_factory=dict)  # pre, inference, post, total
    node_reported_latency_ms: float | None = None  # the node's ~/debug/pipeline_latency_ms (its clock - stamp)
    stamp_age_ms: float | None = None  # the node's clock - stamp as the frame was sent
    node_latency_ms: float | None = None  # reported - stamp age: send -> done on the node's clock
    valid_points: int | None = None
    miou: float | None = None
    accuracy: float | None = None

    @property
    def latency_ms(self) -> float | None:
        """End to end: from handing the cloud over to having its segmentation back."""
        if self.sent_s is None or self.received_s is None:
            return None
        return (self.received_s - self.sent_s) * 1e3


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {"count": int(v.size), "mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
            "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)), "max": float(v.max())}


@dataclass
class ReplaySummary:
    mode: str  # "dds/keep-up", "dds/recorded x1.0", "offline"
    source: str
    topic: str
    checkpoint: str
    frames_in_bag: int
    sent: int
    outputs: int
    dropped: int
    rejected: int
    unmatched_outputs: int  # outputs whose stamp matched no sent frame
    throughput_hz: float | None
    input_rate_hz: float | None
    latency_ms: dict
    stages_ms: dict
    node_latency_ms: dict
    node_counts: dict  # the node's own counters from its last /diagnostics (DDS mode)
    segmentation: dict | None  # overall scores when the bag carries labels
    frames: list[dict]
    unreadable: int = 0  # bag messages that could not be read or deserialized (never sent)
    errors: int = 0  # frames the node failed on (counted frames_errors), apart from rejected input
    node_reported_latency_ms: dict = field(default_factory=dict)  # raw ~/debug/pipeline_latency_ms
    node_files: dict = field(default_factory=dict)  # the launched node's log and parameter file


def summarise(records: Sequence[FrameRecord], *, mode: str, source: str, topic: str, checkpoint: str,
              frames_in_bag: int, unmatched_outputs: int = 0, node_counts: dict | None = None,
              scores: ScoreAccumulator | None = None, class_names: Sequence[str] | None = None,
              node_files: dict[str, str] | None = None) -> ReplaySummary:
    sent = [r for r in records if r.sent_s is not None]
    ok = [r for r in sent if r.status == "ok"]
    rejected = sum(r.status == "rejected" for r in sent)
    span = (max(r.received_s for r in ok) - min(r.sent_s for r in sent)) if ok else 0.0
    send_span = (max(r.sent_s for r in sent) - min(r.sent_s for r in sent)) if len(sent) > 1 else 0.0
    return ReplaySummary(
        mode=mode, source=source, topic=topic, checkpoint=checkpoint, frames_in_bag=frames_in_bag,
        sent=len(sent), outputs=len(ok), dropped=sum(r.status == "dropped" for r in sent), rejected=rejected,
        unmatched_outputs=unmatched_outputs,
        throughput_hz=len(ok) / span if span > 0 else None,
        input_rate_hz=(len(sent) - 1) / send_span if send_span > 0 else None,
        latency_ms=percentiles([r.latency_ms for r in ok]),
        stages_ms={s: percentiles([r.stages_ms.get(s) for r in ok]) for s in STAGES},
        node_latency_ms=percentiles([r.node_latency_ms for r in ok]),
        node_counts=dict(node_counts or {}),
        segmentation=None if scores is None else scores.scores().to_dict(list(class_names) if class_names else None),
        frames=[{**asdict(r), "latency_ms": r.latency_ms} for r in records],
        unreadable=sum(r.status == "unreadable" for r in records),
        errors=sum(r.status == "error" for r in sent),
        node_reported_latency_ms=percentiles([r.node_reported_latency_ms for r in ok]),
        node_files=dict(node_files or {}),
    )


def replay_markdown(s: ReplaySummary, plots: dict[str, str]) -> str:
    def row(name: str, p: dict) -> list[str]:
        return [name, str(p["count"]), fmt(p["mean"], 1), fmt(p["p50"], 1), fmt(p["p90"], 1), fmt(p["p99"], 1),
                fmt(p["max"], 1)]

    lines = [
        f"# Replay report ({s.mode})", "",
        f"- source: `{s.source}` topic `{s.topic}`; checkpoint `{s.checkpoint or 'packaged default'}`",
        "", "## Counts", "",
        markdown_table(["frames in bag", "sent", "outputs", "dropped", "rejected", "errors", "unreadable",
                        "unmatched outputs"],
                       [[str(s.frames_in_bag), str(s.sent), str(s.outputs), str(s.dropped), str(s.rejected),
                         str(s.errors), str(s.unreadable), str(s.unmatched_outputs)]]),
        "", "Rejected: the node refused the input as malformed. Errors: the node failed while processing "
        "the frame (see its log).",
    ]
    if s.node_counts:
        lines += ["", "Node's own counters (last /diagnostics): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(s.node_counts.items()))]
    lines += [
        "", f"Throughput {fmt(s.throughput_hz, 2)} frames/s; input rate {fmt(s.input_rate_hz, 2)} frames/s.",
        "", "## Latency (ms)", "",
        markdown_table(["", "n", "mean", "p50", "p90", "p99", "max"],
                       [row("end to end", s.latency_ms)] + [row(f"node: {k}", v) for k, v in s.stages_ms.items()]
                       + [row("node latency (send -> done, its clock)", s.node_latency_ms)]),
        "", "End to end: from publishing the input (or calling the pipeline, offline) to receiving its "
        "segmentation. Stages from `~/debug/processing_time_ms` (pre = decode + preprocessing, inference, "
        "post = heads, encoding and publishing). Node latency: the node's `~/debug/pipeline_latency_ms` "
        "(its clock at the end of the frame - the header stamp) less the stamp's age on the node's clock "
        "when the frame was sent, so it excludes the player's wait between frames (keep-up mode) and the "
        "bag's stamp age; with `/clock` the node's time moves in 10 ms steps. The raw figure is "
        "`node_reported_latency_ms` in replay.json.",
    ]
    if s.node_files:
        lines += ["", "## Node files", ""] + [f"- {k}: `{v}`" for k, v in s.node_files.items()]
    if s.segmentation is not None:
        seg = s.segmentation
        lines += ["", "## Segmentation (frames with labels)", "",
                  f"Overall mIoU {fmt(seg['miou'], percent=True)} %, accuracy {fmt(seg['accuracy'], percent=True)} %.", "",
                  markdown_table(["class", "IoU %", "labelled points"],
                                 [[n, fmt(v, percent=True), str(seg["support"][n])] for n, v in seg["iou"].items()]),
                  "", markdown_table(["frame", "stamp", "mIoU %", "acc %", "latency ms"],
                                     [[str(f["index"]), str(f["stamp_ns"]), fmt(f["miou"], percent=True),
                                       fmt(f["accuracy"], percent=True), fmt(f["latency_ms"], 1)]
                                      for f in s.frames if f["miou"] is not None])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{k}]({Path(v).name})" for k, v in plots.items()]
    return "\n".join(lines)


def plot_latency(records: Sequence[FrameRecord], out_dir: Path) -> dict[str, str]:
    """latency_histogram.png and latency_timeline.png (dropped, rejected and failed frames marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r.status == "ok"]
    e2e = np.array([r.latency_ms for r in ok], dtype=float)
    total = np.array([r.stages_ms.get("total", np.nan) for r in ok], dtype=float)
    paths = {}

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if len(e2e):
        bins = np.linspace(0, max(np.nanmax(e2e), np.nanmax(total) if np.isfinite(total).any() else 0) * 1.05 + 1e-3, 30)
        ax.hist(e2e, bins=bins, alpha=0.7, label="end to end")
        if np.isfinite(total).any():
            ax.hist(total[np.isfinite(total)], bins=bins, alpha=0.7, label="node processing (total)")
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            ax.axvline(np.percentile(e2e, q), color="k", linestyle=style, linewidth=1, label=f"p{q} end to end")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"latency of {len(ok)} frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["latency_histogram"] = str(out_dir / "latency_histogram.png")
    fig.savefig(paths["latency_histogram"])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    idx = np.array([r.index for r in ok])
    if len(ok):
        stacked_bottom = np.zeros(len(ok))
        for stage in ("pre", "inference", "post"):
            vals = np.array([r.stages_ms.get(stage, 0.0) for r in ok])
            ax.bar(idx, vals, bottom=stacked_bottom, width=0.8, label=f"node {stage}", alpha=0.8)
            stacked_bottom += vals
        ax.plot(idx, e2e, "k.-", linewidth=1, label="end to end")
    for status, color in (("dropped", "tab:red"), ("rejected", "tab:orange"), ("error", "tab:purple")):
        bad = [r.index for r in records if r.status == status]
        if bad:
            ax.scatter(bad, np.zeros(len(bad)), marker="x", color=color, s=60, zorder=5, label=status)
    ax.set_xlabel("frame")
    ax.set_ylabel("ms")
    ax.set_title("latency per frame")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    paths["latency_timeline"] = str(out_dir / "latency_timeline.png")
    fig.savefig(paths["latency_timeline"])
    plt.close(fig)
    return paths


def write_replay_report(summary: ReplaySummary, records: Sequence[FrameRecord], out_dir: str | Path) -> dict[str, str]:
    """Write replay.json, replay.md and the plots into ``out_dir``.

    Everything is written into a staging folder inside ``out_dir`` first and moved into place only
    when all of it was written, so a full disk or any other write error (OSError, raised) leaves the
    files of an earlier report there unchanged and no partial file behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".replay-report-", dir=out_dir))
    try:
        staged = plot_latency(records, staging)
        plots = {k: str(out_dir / Path(v).name) for k, v in staged.items()}
        write_json(staging / "replay.json", {**asdict(summary), "plots": plots})
        write_markdown(staging / "replay.md", replay_markdown(summary, plots))
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())  # a full disk can surface only here
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"json": str(out_dir / "replay.json"), "markdown": str(out_dir / "replay.md"), **plots}


__all__ = ["FrameRecord", "ReplaySummary", "percentiles", "summarise", "replay_markdown", "plot_latency",
           "write_replay_report", "STAGES"]
