"""What ``ssl3d-select`` writes: the ranked list as CSV and markdown, a JSON record of the run, and a
picture per chosen scan (embedding PCA colours and, with a head, the predicted classes; ``viz``)."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...atomic import atomic_write, atomic_write_json
from ..report import markdown_table

CSV_COLUMNS = ("rank", "source", "topic", "index", "stamp_ns", "score", "uncertainty", "voxels", "picture")


@dataclass
class RankedScan:
    """One row of the ranked list."""

    rank: int
    source: str  # the scan file, or the bag
    topic: str  # bag topic ('' for files)
    index: int  # message number on the topic, or file number in its folder
    stamp_ns: int  # 0: the source gives none (most scan files)
    score: float  # the strategy's score when it was chosen (NaN: none)
    uncertainty: float  # the head's uncertainty of the scan (NaN: no head)
    voxels: int
    picture: str = ""  # relative to the output folder


def _number(value: float, digits: int = 4) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ranked_csv(rows: Sequence[RankedScan]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.rank, r.source, r.topic, r.index, r.stamp_ns or "", _number(r.score), _number(r.uncertainty),
                         r.voxels, r.picture])
    return buffer.getvalue()


def ranked_markdown(rows: Sequence[RankedScan], summary: dict[str, Any]) -> str:
    """The ranked list for people: what ran, then one row per chosen scan, then the pictures."""
    lines = ["# Scans to label next", ""]
    lines += [f"- strategy: `{summary['strategy']}`" + (f" ({summary['uncertainty']} entropy)"
                                                        if summary["strategy"] in ("uncertainty", "mix") else "")
              + f", seed {summary['seed']}, budget {summary['budget']} scans",
              f"- checkpoint: `{summary['checkpoint']}` (sha256 {summary['checkpoint_sha256'][:12]}…)",
              f"- pool: {summary['pool']} scans from {len(summary['inputs'])} input(s); "
              f"{summary['encoded']} encoded now, {summary['cached']} from the cache, {len(summary['skipped'])} left out",
              f"- near-duplicates: cosine distance below {summary['duplicate_distance']:g} to a chosen scan"
              + (" is never chosen" if summary["strategy"] in ("diversity", "uncertainty", "mix")
                 else " (not applied by this baseline)"),
              ""]
    if summary.get("note"):
        lines += [f"**Fewer scans than the budget:** {summary['note']}.", ""]
    score = {"diversity": "distance", "mix": "distance × uncertainty", "uncertainty": "uncertainty"}.get(
        summary["strategy"], "score")
    table = [[str(r.rank), f"`{r.source}`", r.topic or "–", str(r.index), str(r.stamp_ns) if r.stamp_ns else "–",
              _number(r.score, 3) or "–", _number(r.uncertainty, 3) or "–", str(r.voxels)] for r in rows]
    lines += [markdown_table(["rank", "source", "topic", "index", "stamp (ns)", score, "uncertainty", "voxels"], table), ""]
    pictures = [r for r in rows if r.picture]
    if pictures:
        lines += ["## Pictures", ""]
        for r in pictures:
            lines += [f"{r.rank}. `{r.source}`" + (f" {r.topic} #{r.index}" if r.topic else ""), "",
                      f"   ![rank {r.rank}]({r.picture})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_reports(out: Path, rows: Sequence[RankedScan], summary: dict[str, Any]) -> dict[str, Path]:
    """OUT/ranked.csv, OUT/ranked.md and OUT/selection.json (the summary with every row), each atomic."""
    paths = {"csv": out / "ranked.csv", "markdown": out / "ranked.md", "json": out / "selection.json"}
    text = {"csv": ranked_csv(rows), "markdown": ranked_markdown(rows, summary)}
    for kind in ("csv", "markdown"):
        atomic_write(paths[kind], lambda tmp, body=text[kind]: tmp.write_text(body, encoding="utf-8"))
    atomic_write_json(paths["json"], {**summary, "ranked": [vars(r) for r in rows]})
    return paths


def picture_name(row: RankedScan) -> str:
    stem = Path(row.source).name.split(".")[0] or "scan"
    return f"rank{row.rank:02d}_{stem}" + (f"_{row.index}" if row.topic else "")


def draw_pictures(pipeline: Any, pool: Any, positions: Sequence[int], rows: Sequence[RankedScan], out: Path) -> None:
    """One PNG per chosen scan under OUT/pictures/ (pictures of an earlier selection there are removed);
    each row's ``picture`` is set to its path relative to ``out``."""
    from ..viz import RenderConfig, picture_set, scene_outputs

    folder = out / "pictures"
    if folder.is_dir():
        for old in folder.glob("rank*_*.png"):
            old.unlink()
    colorings = ["pca", "classes"] if getattr(pipeline, "seg_head", None) is not None else ["pca"]
    cfg = RenderConfig(width_px=1200, height_px=600)
    for row, position in zip(rows, positions):
        scene = scene_outputs(pipeline, pool[position])
        written = picture_set(scene, folder, colorings=colorings, prefix=picture_name(row), cfg=cfg)
        if written:
            row.picture = str(written["pca"].relative_to(out))


__all__ = ["CSV_COLUMNS", "RankedScan", "ranked_csv", "ranked_markdown", "write_reports", "picture_name", "draw_pictures"]
