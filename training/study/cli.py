"""``ssl3d-study``: does pretraining pay on your data? Pretrain (if asked), fine-tune every encoder
under label budgets on your labelled training sequences, score each on your test sequences, and
write the tables and the plot.

    ssl3d-study --out runs/study \\
        --unlabelled ../shared/data/lidar --exclude '*/semantickitti/*' '*/semantickitti_sequences/08/*' \\
        --train SEQ/00 SEQ/01 SEQ/02 SEQ/03 SEQ/04 SEQ/05 SEQ/07 --test SEQ/08 --class-map semantickitti \\
        --rows scratch sonata=pretrain:config/pretrain/sonata-sequences.yaml sonata-old=runs/encoder.safetensors \\
        --fractions 0.001 0.01 0.1 1 --scans-per-sequence 1 --seeds 0 1 2 --steps 1000 --pretrain-steps 3000
    ssl3d-study --out runs/study --report-only      # study.md and study.png from every finished cell

Rows: 'scratch' (the first pretrained row's network with fresh weights), NAME=CHECKPOINT (an encoder
or node checkpoint), NAME=pretrain:CONFIG.yaml[;SECTION.KEY=VALUE...] (pretrained first by the study
on --unlabelled, into OUT/pretrain/NAME). Every row is fine-tuned end to end and, with --modes probe,
trained as a frozen linear probe: same labels, same steps. --modes lpft adds LP-FT (linear probe, then
fine-tune): each probe cell's model trained end to end for --lpft-steps more steps at --lpft-lr-scale
times the learning rates, a fine-tune that starts from a trained head; its gain is read against
scratch fine-tuned.

Budgets: --fractions keeps that share of every training scan's labelled points (--selection random:
uniform points; blocks: whole --block-size squares around random points, as an annotator clicks a few
regions); --scans-per-sequence K trains on K seeded scans of every --train folder, all their labels.

The test scans are scored once per cell, on the model the run ends with (with --val, the one that
scored best on those validation scans: use a training sequence, never the test set). The study
refuses test scans that are also training, validation or unlabelled scans.

Every cell is cached in OUT/cells/ and every run resumes, so the same command continues a stopped
study and computes only what is missing when seeds, budgets or rows are added. OUT/study.md holds the
tables (test mIoU mean ± std over seeds, the gain over scratch per seed, classes reached, per-class
IoU), OUT/study.png the plot (mIoU against label fraction, log x, one line per row with its spread),
OUT/study.json every cell.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ssl3d_ros.atomic import atomic_write, atomic_write_json
from ssl3d_ros.cli import EXIT_CODES_EPILOG, EXIT_INTERRUPTED, console_script
from ssl3d_ros.config import ConfigError

from .plan import LPFT_LR_SCALE, LPFT_STEPS_SHARE, MODES

PROG = "ssl3d-study"
STUDY_EPILOG = EXIT_CODES_EPILOG.replace(
    "  130  interrupted (Ctrl-C)",
    "  130  stopped by Ctrl-C or SIGTERM after saving the running cell's state (the same command continues)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1] + "\n" + STUDY_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="study folder (cells, runs, study.md, study.png)")
    p.add_argument("--train", nargs="+", metavar="PATH", default=[],
                   help="labelled training scans: sequence folders (KITTI velodyne/ + labels/), files, bags, sim:outdoor:N")
    p.add_argument("--test", nargs="+", metavar="PATH", default=[], help="labelled test scans, scored once per cell")
    p.add_argument("--val", nargs="+", metavar="PATH", default=[],
                   help="labelled validation scans that select each run's kept checkpoint (default: none, the last "
                        "model is kept); never the test scans")
    p.add_argument("--class-map", default="", help="class map name (semantickitti: raw .label ids, 19 classes; "
                                                   "semantickitti-learning; scannet20) or YAML path")
    p.add_argument("--rows", nargs="+", default=[], metavar="ROW",
                   help="encoders: scratch, NAME=CHECKPOINT, NAME=pretrain:CONFIG.yaml[;KEY=VALUE...]")
    p.add_argument("--unlabelled", nargs="+", metavar="PATH", default=[],
                   help="unlabelled scans the pretrain: rows pretrain on (folders, files, bags)")
    p.add_argument("--exclude", nargs="+", metavar="GLOB", default=[],
                   help="fnmatch globs of --unlabelled scan paths to leave out (data.exclude), e.g. the test sequence")
    p.add_argument("--pretrain-steps", type=int, default=0, help="steps of every pretrain: row (default: its config's)")
    p.add_argument("--fractions", nargs="+", type=float, default=[], help="label budgets: fractions of labelled points")
    p.add_argument("--scans-per-sequence", nargs="+", type=int, default=[], metavar="K",
                   help="label budgets: K scans of every --train folder with all their labels")
    p.add_argument("--selection", choices=["random", "blocks"], default="random",
                   help="which points a fraction keeps: random points, or blocks (clicked regions)")
    p.add_argument("--block-size", type=float, default=4.0, help="metres, --selection blocks")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (label selection, fresh weights, order)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["finetune", "probe"],
                   help="finetune (end to end), probe (frozen encoder, linear head), lpft (the probe cell's model, "
                        "then end to end at a lower rate; runs the probe cell first if missing)")
    p.add_argument("--lpft-steps", type=int, default=0,
                   help=f"steps of an lpft cell after its probe (default: {LPFT_STEPS_SHARE:g} x --steps)")
    p.add_argument("--lpft-lr-scale", type=float, default=LPFT_LR_SCALE,
                   help="an lpft cell's learning rates after its probe: the fine-tuning config's times this")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps of every cell")
    p.add_argument("--val-every", type=int, default=0, help="steps between validations (default: steps / 5)")
    p.add_argument("--finetune-config", default="", help="ssl3d-finetune YAML every cell starts from (default: built-in)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override any fine-tuning config entry of every cell, e.g. --set optim.layer_decay=0.8")
    p.add_argument("--report-only", action="store_true", help="only write study.md/.png/.json from the cached cells")
    p.add_argument("--progress", action="store_true", help="progress bars of the runs")
    return p


def plan_from_args(args: argparse.Namespace):
    from .plan import Budget, StudyPlan, check_plan, parse_row

    budgets = [Budget(fraction=f) for f in args.fractions] + [Budget(scans_per_source=k) for k in args.scans_per_sequence]
    if not budgets:
        raise ConfigError("give label budgets: --fractions and/or --scans-per-sequence")
    if not args.rows:
        raise ConfigError("give the rows to compare: --rows scratch NAME=CHECKPOINT ...")
    if not args.class_map and not all(s.startswith("sim:") for s in args.train):
        raise ConfigError("--class-map is required for recorded data (e.g. semantickitti)")
    plan = StudyPlan(train=list(args.train), test=list(args.test), validation=list(args.val), class_map=args.class_map,
                     rows=[parse_row(r) for r in args.rows], budgets=budgets, seeds=list(args.seeds), modes=list(args.modes),
                     unlabelled=list(args.unlabelled), unlabelled_exclude=list(args.exclude), steps=args.steps,
                     selection=args.selection, block_size=args.block_size,
                     pretrain_steps=args.pretrain_steps, finetune_config=args.finetune_config,
                     finetune_overrides=list(args.overrides), val_every=args.val_every,
                     lpft_steps=args.lpft_steps, lpft_lr_scale=args.lpft_lr_scale)
    check_plan(plan)
    return plan


def header(plan: dict | None, records: list[dict]) -> list[str]:
    """What ran, from the plan's summary (study.json keeps it, so --report-only writes the same)."""
    lines = ["# Label-efficiency study", ""]
    if plan is None:
        return lines
    rows = []
    for row in plan["rows"]:
        if row["checkpoint"]:
            what = row["checkpoint"]
        elif row["pretrain_config"]:
            what = f"pretrained by the study: {row['pretrain_config']}" + (
                f" ({'; '.join(row['pretrain_overrides'])})" if row["pretrain_overrides"] else "")
        else:
            what = "fresh weights of the first pretrained row's network"
        rows.append(f"- `{row['name']}`: {what}")
    labels = f"{plan['selection']} points" + (f" in {plan['block_size']:g} m blocks" if plan["selection"] == "blocks" else "")
    return lines + [
        f"- train: {', '.join(plan['train'])}", f"- test: {', '.join(plan['test'])} (scored once per cell)",
        f"- validation: {', '.join(plan['validation']) if plan['validation'] else 'none (the last model is kept)'}",
        f"- class map: {plan['class_map'] or 'the simulator’s'}; labels: {labels}",
        f"- fine-tuning: {plan['steps']} steps per cell" + (f"; overrides {plan['overrides']}" if plan["overrides"] else ""),
        *([f"- LP-FT: each probe cell's model, then {plan['lpft_steps']} steps end to end at "
           f"{plan['lpft_lr_scale']:g} x the learning rates"] if plan.get("lpft_steps") else []),
        *([f"- pretraining (pretrain: rows): {plan['unlabelled']} unlabelled sources"
           + (f" less {plan['exclude']}" if plan.get("exclude") else "")
           + (f", {plan['pretrain_steps']} steps" if plan["pretrain_steps"] else "")]
          if any(row["pretrain_config"] for row in plan["rows"]) else []),
        f"- seeds: {sorted({r['seed'] for r in records})}; cells: {len(records)}", "", *rows, ""]


def write_outputs(plan: dict | None, records: list[dict], out: Path) -> None:
    """study.md, study.json and study.png; ``plan``: the plan's summary (None: the one study.json holds)."""
    from .report import plot, report

    if plan is None and (out / "study.json").is_file():
        plan = json.loads((out / "study.json").read_text()).get("plan")
    total = max((r["labelled_points"] for r in records if not r.get("scans_per_source") and r["fraction"] == 1.0),
                default=None)
    text = report(records, header(plan, records))
    atomic_write(out / "study.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    atomic_write_json(out / "study.json", {"plan": plan, "cells": records})
    plot(records, out / "study.png", "test mIoU against label fraction" + (f" ({plan['steps']} fine-tuning steps)" if plan else ""),
         total_labelled=total)


def plan_summary(plan) -> dict:
    return {"train": plan.train, "test": plan.test, "validation": plan.validation, "class_map": plan.class_map,
            "rows": [vars(r) for r in plan.rows], "steps": plan.steps, "selection": plan.selection,
            "block_size": plan.block_size, "unlabelled": len(plan.unlabelled), "exclude": plan.unlabelled_exclude,
            "pretrain_steps": plan.pretrain_steps,
            "overrides": plan.finetune_overrides,
            **({"lpft_steps": plan.lpft_stage_steps, "lpft_lr_scale": plan.lpft_lr_scale} if "lpft" in plan.modes else {})}


@console_script(PROG)
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .report import cached_records

    if args.report_only:
        records = cached_records(args.out)
        if not records:
            raise ConfigError(f"{args.out / 'cells'}: no finished cell to report")
        write_outputs(None, records, args.out)
        print(f"{PROG}: {len(records)} cells -> {args.out / 'study.md'}, {args.out / 'study.png'}")
        return 0
    plan = plan_from_args(args)
    # training (torch) loads once the plan is known to be sound: a refused plan answers at once
    from .cells import StudyInterrupted, run_study

    args.out.mkdir(parents=True, exist_ok=True)
    total = len(plan.cells())

    def progress(cell, record):
        miou = "—" if record["miou"] is None else f"{100 * record['miou']:.1f}"
        print(f"{PROG}: {cell.key}: test mIoU {miou} ({record['seconds']:.0f} s; {done(args.out, plan)}/{total} cells)", flush=True)

    try:
        records = run_study(plan, args.out, progress=args.progress, on_cell=progress)
    except StudyInterrupted as stop:
        finished = cached_records(args.out)
        if finished:
            write_outputs(plan_summary(plan), finished, args.out)
        print(f"{PROG}: {stop}; state saved; the same command continues ({done(args.out, plan)}/{total} cells done)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    write_outputs(plan_summary(plan), records, args.out)
    print(f"{PROG}: {len(records)} cells -> {args.out / 'study.md'}, {args.out / 'study.png'}")
    return 0


def done(out: Path, plan) -> int:
    """Finished cells of this plan (the folder may hold other studies' cells too)."""
    return sum((out / "cells" / f"{cell.key}.json").is_file() for cell in plan.cells())


__all__ = ["main", "build_parser", "plan_from_args"]


if __name__ == "__main__":
    sys.exit(main())

