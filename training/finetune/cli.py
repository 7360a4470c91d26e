"""``ssl3d-finetune``: train encoder + segmentation head end to end on labelled scans.

    ssl3d-finetune --init runs/pretrain/encoder.safetensors --data SCANS... --class-map semantickitti \\
                   [--config config/finetune/default.yaml] [--steps N] [--out DIR] [--resume]
                   [--scans K] [--label-fraction P] [--label-blocks] [--val-data PATH ...]
                   [--set SECTION.KEY=VALUE ...]
    ssl3d-finetune --init none --data sim:outdoor:8 --steps 200 --out runs/ft_sim
    torchrun --nproc-per-node 4 -m ssl3d_ros.training.finetune --init ... --data ...

Data: rosbag2 bags (with --label-field), KITTI/SemanticKITTI .bin + .label, .npy scans with their
.labels.npy, .pcd/.ply with a label attribute, and the simulator (sim:outdoor[:COUNT],
sim:indoor[:COUNT], labelled by construction). Labels go through --class-map (raw SemanticKITTI
ids with instance bits are masked to their lower 16 bits); ids outside the map are ignored.

--init: a checkpoint (ssl3d-pretrain's encoder.safetensors, student or teacher as exported, or any
node checkpoint): its architecture, weights and preprocessing, checked against the data; add
--random-weights for the same network from fresh weights. --init none: the config's encoder and
preprocessing sections, fresh weights.

Validation (--val-data, --val-holdout or validation.split: block) scores the model every --val-every
steps and at the end; with --val-keep best (the default) model.safetensors is the best validation's
weights: the validation scans choose it, so they must be held-out scans, not the test scans (score the
test scans afterwards with --evaluate). --val-keep last keeps the final weights.

--evaluate scores a finished model (--init CKPT with its head) on --val-data the way validation
does, without training: a packaged and a fine-tuned model compare like for like.

Writes DIR/model.safetensors (encoder + head + class names/colours + preprocessing + a novelty
reference of up to --novelty-scans training scans: loadable by ssl3d-perception, ssl3d-replay and
ssl3d-probe), DIR/validation.json (the kept model's validation:
step, mIoU, per-class IoU and support, the keep rule; its per-class table is printed too),
DIR/best.safetensors, DIR/labels.json (the seeded label selection: scans, points, per-scan digests),
DIR/checkpoints/state-*.safetensors (resumable), DIR/metrics.csv and TensorBoard events.
"""
from __future__ import annotations

import argparse
import sys

from ..runtime.command import TRAINING_EXIT_CODES, add_run_arguments, report_stopped, training_command

PROG = "ssl3d-finetune"
EPILOG = __doc__.split("\n\n", 1)[1].rstrip() + "\n\n" + TRAINING_EXIT_CODES  # the usage above, then the exit codes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: the built-in defaults, spelled out with comments in "
                                    "config/finetune/default.yaml)")
    p.add_argument("--init", help="'none' (scratch) or a checkpoint to start from (init)")
    p.add_argument("--random-weights", action="store_true", help="with --init CKPT: its architecture and preprocessing, fresh weights")
    p.add_argument("--init-head", action="store_true",
                   help="start the head from --init's segmentation head (a node checkpoint whose classes are the "
                        "class map's, in order): continue training a model instead of a fresh head (init_head)")
    p.add_argument("--pca-dims", type=int, metavar="K",
                   help="also store a K-component PCA basis of the trained hypercolumns in model.safetensors, for "
                        "the node's reduced embeddings (pca_dims; 0: none)")
    p.add_argument("--novelty-scans", type=int, metavar="K",
                   help="fit the novelty reference stored in model.safetensors on K training scans (novelty_scans, "
                        "default 16; 0: none): the node scores how unlike them each frame is")
    p.add_argument("--evaluate", action="store_true",
                   help="no training: score --init's encoder + head on the validation scans (--val-data, "
                        "--val-holdout or --set validation.split=block) and write OUT/evaluation.json")
    p.add_argument("--data", nargs="+", metavar="PATH", help="labelled training scans (data.sources): paths, bags, sim:outdoor[:N]")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="PointCloud2 topics to read from bags (data.topics)")
    p.add_argument("--label-field", help="PointCloud2 field holding labels (labels.label_field)")
    p.add_argument("--class-map", help="class map name or YAML (labels.class_map); default for sim data: sim-<scene>")
    p.add_argument("--scans", type=int, help="train on K seeded-random scans (labels.scans; 0: all)")
    p.add_argument("--label-fraction", type=float, help="fraction of each scan's labelled points kept (labels.fraction)")
    p.add_argument("--label-blocks", type=float, metavar="METRES",
                   help="keep labels in whole xy blocks of this size instead of random points (labels.selection: blocks)")
    p.add_argument("--label-seed", type=int, help="seed of the label selection (labels.seed)")
    p.add_argument("--val-data", nargs="+", metavar="PATH", help="held-out labelled scans (validation.sources)")
    p.add_argument("--val-holdout", type=int, help="hold out the last N scans of --data (validation.holdout_scans)")
    p.add_argument("--val-every", type=int, help="steps between validations (validation.every)")
    p.add_argument("--val-keep", choices=["best", "last"],
                   help="model.safetensors: the best validation's weights (default; chosen on the validation "
                        "scans) or the last ones (validation.keep)")
    add_run_arguments(p, "optim.layer_decay=0.8")
    return p


#: command-line option -> dotted config key
OPTION_KEYS = {
    "init": "init", "pca_dims": "pca_dims", "novelty_scans": "novelty_scans", "data": "data.sources", "topics": "data.topics", "label_field": "labels.label_field",
    "class_map": "labels.class_map", "scans": "labels.scans", "label_fraction": "labels.fraction",
    "label_seed": "labels.seed", "val_data": "validation.sources", "val_holdout": "validation.holdout_scans",
    "val_every": "validation.every", "val_keep": "validation.keep", "steps": "run.steps", "batch_size": "run.batch_size", "out": "run.out_dir",
    "device": "run.device", "workers": "run.workers", "checkpoint_every": "run.checkpoint_every", "seed": "run.seed",
}


def options_as_overrides(args: argparse.Namespace) -> list[str]:
    """The options as ``KEY=VALUE`` assignments (JSON values are valid YAML), applied after --set."""
    import json

    out = [f"{key}={json.dumps(getattr(args, attr))}" for attr, key in OPTION_KEYS.items() if getattr(args, attr) is not None]
    if args.random_weights:
        out.append("random_weights=true")
    if args.init_head or args.evaluate:
        out.append("init_head=true")
    if args.label_blocks is not None:
        out += ["labels.selection=blocks", f"labels.block_size={args.label_blocks}"]
    return out


@training_command(PROG)
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .config import load_config
    from .evaluate import class_table
    from .loop import VALIDATION_FILE, evaluate, finetune

    cfg = load_config(args.config, [*args.overrides, *options_as_overrides(args)])
    if args.evaluate:
        report = evaluate(cfg)
        miou, acc = (float("nan") if report[k] is None else report[k] for k in ("miou", "accuracy"))
        print(f"{PROG}: {cfg.init} on {report['scans']} scan(s) ({report['validation']}): mIoU {miou:.3f}, "
              f"accuracy {acc:.3f}; written to {cfg.run.out_dir}/evaluation.json")
        print(class_table(report))
        return 0
    result = finetune(cfg, resume=args.resume, progress=not args.no_progress)
    if result.interrupted_by:
        return report_stopped(PROG, result)
    if result.model_path is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    best = f"; best validation mIoU {result.best['miou']:.3f} at step {result.best['step']}" if result.best else ""
    print(f"{PROG}: {result.step} steps done; model written to {result.model_path}{best}; "
          f"{result.scans_skipped} unusable scans skipped")
    if result.kept:
        kept = result.kept
        print(f"{PROG}: model.safetensors is step {kept['step']} ({kept['keep']}: {kept['rule']}); its validation, "
              f"in {result.out_dir / VALIDATION_FILE}:")
        print(class_table(kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
