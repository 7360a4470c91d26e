#!/usr/bin/env python3
"""The data-efficiency study (issue 16): scratch vs pretrained fine-tuning under label budgets on the
labelled real scans of ``../shared/data``; a thin CLI over ``ssl3d_ros.training.finetune.study``.

Every cell (protocol x row x mode x budget x seed) is cached in OUT/cells/, so a stopped study
continues and a re-run with more seeds or budgets computes only what is missing; OUT/study.md holds
the tables (mIoU %, mean ± std over seeds).

    python scripts/finetune_study.py --pretrained runs/sonata/encoder.safetensors --out runs/ft_study
    python scripts/finetune_study.py --pretrained A.safetensors --other msm=B.safetensors \\
        --protocols seq01-to-000700 000700-to-seq01 --fractions 0.001 --seeds 0 --steps 100 --out runs/ft_small
    python scripts/finetune_study.py --protocols seq01-to-000700 --scans 1 3 ...   # 1 vs 3 labelled scans
    python scripts/finetune_study.py ... --variant 'warm=pretrained:optim.freeze_encoder_steps=50'  # another setting
    python scripts/finetune_study.py --out runs/ft_study --report-only   # study.md from every cached cell

study.md has the mIoU tables and, for cells that recorded per-class IoU, how many classes each model
reaches (test IoU >= 1 %).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ssl3d_ros.config import ConfigError, parse_variant  # noqa: E402
from ssl3d_ros.training.finetune.study import PROTOCOLS, Cell, cached_records, report, run_cell  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--pretrained", help="the pretrained encoder (row 'pretrained'; 'scratch' is its architecture, "
                                        "fresh weights); required unless --report-only")
    p.add_argument("--other", action="append", default=[], metavar="NAME=CKPT", help="another recipe's checkpoint as a row")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ROW:KEY=VALUE[;KEY=VALUE]",
                   help="a row with another fine-tuning setting, starting from ROW's weights, e.g. "
                        "'pretrained-warm=pretrained:optim.freeze_encoder_steps=50;optim.layer_decay=0.5' (YAML values)")
    p.add_argument("--protocols", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    p.add_argument("--fractions", nargs="+", type=float, default=[0.001, 0.01, 0.1, 1.0], help="label budgets (fraction of points)")
    p.add_argument("--scans", nargs="+", type=int, default=[0], help="labelled train scans K (0: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", choices=["finetune", "probe"], default=["finetune", "probe"])
    p.add_argument("--rows", nargs="+", default=None, help="subset of rows (scratch, pretrained, the --other names)")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps of every cell")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report-only", action="store_true",
                   help="only write OUT/study.md and study.json from every cell cached in OUT/cells (no training)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report_only:
        records = cached_records(args.out)
        if not records:
            print(f"finetune_study: {args.out / 'cells'} holds no finished cell", file=sys.stderr)
            return 2
        return write_report(args.out, records)
    if not args.pretrained:
        print("finetune_study: --pretrained is required (unless --report-only)", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"finetune_study: data folder {args.data} is absent", file=sys.stderr)
        return 2
    inits = {"scratch": args.pretrained, "pretrained": args.pretrained}
    for spec in args.other:
        name, _, path = spec.partition("=")
        if not path:
            print(f"finetune_study: --other {spec!r}: expected NAME=CKPT", file=sys.stderr)
            return 2
        inits[name] = path
    variants = {}
    for spec in args.variant:
        try:
            name, base, items = parse_variant(spec, list(inits))
        except ConfigError as exc:
            print(f"finetune_study: --{exc}", file=sys.stderr)
            return 2
        variants[name] = (base, tuple(items))
    rows = args.rows or [*inits, *variants]
    unknown = [row for row in rows if row not in inits and row not in variants]
    if unknown:
        print(f"finetune_study: --rows {' '.join(unknown)}: not a row (rows: {', '.join([*inits, *variants])})", file=sys.stderr)
        return 2
    records = []
    for protocol, row, mode, fraction, scans, seed in itertools.product(args.protocols, rows, args.modes, args.fractions,
                                                                       args.scans, args.seeds):
        base, overrides = variants.get(row, ("", ()))
        cell = Cell(protocol, row, str(inits[base or row]), mode, fraction, scans, seed, base, overrides)
        try:
            record = run_cell(cell, args.data, args.out, args.steps)
        except ConfigError as exc:
            print(f"finetune_study: {cell.key}: {exc}", file=sys.stderr)
            return 2
        records.append(record)
        print(f"{cell.key}: mIoU {100 * (record['miou'] or float('nan')):.1f} ({record['seconds']} s)", flush=True)
    return write_report(args.out, records)


def write_report(out: Path, records: list[dict]) -> int:
    md = report(records)
    (out / "study.md").write_text(md + "\n")
    (out / "study.json").write_text(json.dumps(records, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
