#!/usr/bin/env python3
"""The real-data study (docs/results.md): pretrain every recipe on the unlabelled real scans of
``../shared/data`` under one budget, probe the frozen encoders on labelled real scans against
random-init / raw-input / supervised references, test robustness (half the beams, range noise), run
the shortcut audit, and write ``study.json`` + ``study.md`` (mean ± std over seeds) into the folder.

The defaults are the main table's protocol: features ``constant height``, 900 steps x batch 2 x
6,000-point crops, 200 supervised steps, seeds 0 1 2, all five recipes, SemanticKITTI 000700 and
ScanNet scene0000_00. Every piece is cached in the folder, so a stopped run continues where it
stopped and a re-run with more seeds, recipes or scans only computes what is missing.

    python scripts/real_data_study.py --out runs/real_study_geo                 # the main table
    python scripts/real_data_study.py --out runs/real_study_geo --report-only   # tables from the cache
    python scripts/real_data_study.py --out runs/seq01 --labelled semantickitti-seq01 \\
        --labelled 'mine=scans/0001.points.npy:labels=scans/0001.labels.npy:class-map=semantickitti-learning:frame=sensor'
    python scripts/real_data_study.py --out runs/quick --robustness none --no-audit --steps 50

Budget flags (--steps, --batch-size, --crop-points, --features, --supervised-steps, --max-points,
--linear-iters, --knn-k) must be repeated on every call for one folder: the folder records its budget
and refuses another one. Labelled scans (--labelled, repeatable) are a preset name or
NAME=PATH[:labels=PATH][:class-map=NAME][:frame=sensor|world][:sensor=lidar|rgbd]
[:origin=X,Y,Z|estimate][:beams=N][:block-size=M][:title=TEXT]; see ssl3d_ros/evaluation/study_data.py.
Pretraining data: lidar/ouster (10 scans), lidar/kitti (2), lidar/nuscenes (1); never a probed scan.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ssl3d_ros.config import ConfigError, parse_variant
from ssl3d_ros.evaluation.perturbations import PERTURBATIONS
from ssl3d_ros.evaluation.study import MAIN_TABLE_FEATURES, RECIPES, Study, StudyBudget
from ssl3d_ros.evaluation.study_data import DEFAULT_LABELLED, PRESETS, StudyInputError, parse_labelled

REPO = Path(__file__).resolve().parent.parent

log = logging.getLogger("real_data_study")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The examples as written, and every option's default (the main table's protocol)."""


def build_parser() -> argparse.ArgumentParser:
    defaults = StudyBudget()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "real_study_geo")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="the shared data folder (pretraining scans, the presets' scans)")
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=RECIPES,
                   help="recipes at their shipped settings (default: all five; '--recipes' alone: only the --variant runs)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=RECIPE:KEY=VALUE[;KEY=VALUE]",
                   help="an extra pretraining variant, e.g. 'jepa-fine=jepa:recipe.patch_size=0.8;recipe.level=-2' (YAML values)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--labelled", action="append", default=argparse.SUPPRESS, metavar="PRESET|NAME=PATH[:KEY=VALUE...]",
                   help=f"a labelled scan to probe (repeatable); presets: {', '.join(PRESETS)}; "
                        f"default: {' '.join(DEFAULT_LABELLED)} (the main table)")
    p.add_argument("--robustness", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS) + ["none"],
                   help="robustness passes; 'none' switches them off")
    p.add_argument("--steps", type=int, default=defaults.steps, help="pretraining steps (every recipe)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pretraining scans per step")
    p.add_argument("--crop-points", type=int, default=defaults.crop_points, help="points per scene-level view")
    p.add_argument("--features", nargs="+", default=list(MAIN_TABLE_FEATURES),
                   help="encoder input features (geometry only: the probed scans have no intensity); the earlier "
                        "tables used 'xyz height'")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (pretraining and probes)")
    p.add_argument("--max-points", type=int, default=defaults.max_points, help="labelled points used per scan (seeded subset)")
    p.add_argument("--linear-iters", type=int, default=defaults.linear_iters)
    p.add_argument("--knn-k", type=int, default=defaults.knn_k)
    p.add_argument("--supervised-steps", type=int, default=defaults.supervised_steps, help="0: no supervised reference")
    p.add_argument("--no-baselines", action="store_true", help="no random-init / raw-input / supervised rows")
    p.add_argument("--no-audit", action="store_true")
    p.add_argument("--baselines-from", type=Path, metavar="DIR",
                   help="report the random/raw/supervised rows of another study folder (e.g. a longer-budget "
                        "run made with --no-baselines; the baselines do not depend on the pretraining budget)")
    p.add_argument("--report-only", action="store_true", help="only rebuild study.json / study.md from the cache")
    return p


def parse_args(argv=None) -> tuple[Study, list, argparse.Namespace]:
    """(the study, its labelled-scan specs, the arguments); bad input exits 2 with one line."""
    p = build_parser()
    args = p.parse_args(argv)
    variants = {r: r for r in args.recipes}
    overrides = {}
    for spec in args.variant:
        try:
            name, recipe, items = parse_variant(spec, RECIPES)
        except ConfigError as exc:
            p.error(f"--{exc}")
        variants[name], overrides[name] = recipe, items
    if "none" in args.robustness and len(args.robustness) > 1:
        p.error("--robustness none cannot be combined with other passes")
    try:
        scans = [parse_labelled(text, args.data.resolve()) for text in getattr(args, "labelled", DEFAULT_LABELLED)]
    except StudyInputError as exc:
        p.error(str(exc))
    if len({s.name for s in scans}) != len(scans):
        p.error("--labelled: two scans share a name")
    budget = StudyBudget(steps=args.steps, batch_size=args.batch_size, crop_points=args.crop_points,
                         max_points=args.max_points, linear_iters=args.linear_iters, knn_k=args.knn_k,
                         supervised_steps=args.supervised_steps, features=list(args.features))
    study = Study(out=args.out.resolve(), data_root=args.data.resolve(), config_dir=REPO / "config", budget=budget,
                  variants=variants, overrides=overrides, seeds=list(args.seeds),
                  robustness=() if args.robustness == ["none"] else tuple(args.robustness),
                  audit=not args.no_audit, baselines=not args.no_baselines,
                  baselines_from=args.baselines_from.resolve() if args.baselines_from else None,
                  threads=args.threads, workdir=REPO)
    return study, scans, args


def main(argv=None) -> int:
    study, specs, args = parse_args(argv)
    from ssl3d_ros.evaluation.study import check_budget, check_scan_record, run_seed
    from ssl3d_ros.evaluation.study_data import load_study_scan
    from ssl3d_ros.evaluation.study_report import collect, write_report

    study.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(study.out / "study.log")])
    import torch

    torch.set_num_threads(study.threads)
    try:
        check_budget(study)
        if not args.report_only:
            scans = {s.name: load_study_scan(s, study.robustness) for s in specs}
            for ds in scans.values():
                check_scan_record(study, ds)
                log.info("%s: %d points, %d test (split: %s)", ds.name, len(ds.scan), int(ds.test.sum()),
                         ds.spec.split().describe())
            for seed in study.seeds:
                run_seed(study, seed, scans)
                write_report(study, *collect(study, specs))
    except StudyInputError as exc:
        print(f"real_data_study: error: {exc}", file=sys.stderr)
        return 2
    doc, md = collect(study, specs)
    write_report(study, doc, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
