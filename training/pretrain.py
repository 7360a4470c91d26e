"""``ssl3d-pretrain``: self-supervised pretraining of the sparse encoder on unlabelled scans.

    ssl3d-pretrain --config config/pretrain/sonata.yaml [--data PATH ...] [--topics T ...]
                   [--steps N] [--out DIR] [--resume] [--device auto|cpu|cuda] [--workers N]
                   [--set SECTION.KEY=VALUE ...]
    torchrun --nproc-per-node 4 -m ssl3d_ros.training.pretrain --config ...

Writes DIR/checkpoints/state-*.safetensors (resumable training state), DIR/metrics.csv, TensorBoard
events in DIR/tensorboard and, at the end, DIR/encoder.safetensors (loadable by the node).
Exit status: 0 done; 1 a bug, or a checkpoint that could not be written (disk full: earlier ones are
intact); 2 bad config or data (one line naming the file); 130 stopped by Ctrl-C / SIGTERM after saving
(resume with --resume).
"""
from __future__ import annotations

import argparse
import sys

from ssl3d_ros.config import ConfigError

from .runtime.command import TRAINING_EXIT_CODES, add_run_arguments, report_stopped, training_command


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ssl3d-pretrain", description=__doc__.split("\n\n")[0], epilog=TRAINING_EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (config/pretrain/<recipe>.yaml)")
    p.add_argument("--data", nargs="+", metavar="PATH", help="scan sources replacing data.sources (bags, folders, files, sim:outdoor)")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="PointCloud2 topics to read from bags")
    add_run_arguments(p, "preprocessing.voxel_size=0.15")
    return p.parse_args(argv)


def apply_overrides(cfg, args: argparse.Namespace):
    if args.data:
        cfg.data.sources = list(args.data)
    if args.topics:
        cfg.data.topics = list(args.topics)
    for attr, key in (("steps", "steps"), ("batch_size", "batch_size"), ("out", "out_dir"), ("device", "device"),
                      ("workers", "workers"), ("checkpoint_every", "checkpoint_every"), ("seed", "seed")):
        value = getattr(args, attr)
        if value is not None:
            setattr(cfg.run, key, value)
    if cfg.run.steps < 1 or cfg.run.batch_size < 1 or cfg.run.checkpoint_every < 1:
        raise ConfigError("run.steps, run.batch_size and run.checkpoint_every must be >= 1")
    return cfg


@training_command("ssl3d-pretrain")
def main(argv=None) -> int:
    args = parse_args(argv)
    from .config import load_config
    from .loop import train

    cfg = apply_overrides(load_config(args.config, args.overrides), args)
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    if result.interrupted_by:
        return report_stopped("ssl3d-pretrain", result)
    if result.encoder_path is not None:  # under torchrun only rank 0 exports the encoder and reports it
        print(f"ssl3d-pretrain: {result.step} steps done; encoder written to {result.encoder_path}; "
              f"{result.scans_skipped} unreadable scans skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
