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
import logging
import sys

from ssl3d_ros.cli import (EXIT_BUG, EXIT_CODES_EPILOG, EXIT_INTERRUPTED, INPUT_OS_ERRORS, console_script,
                           describe_error)
from ssl3d_ros.config import ConfigError


PRETRAIN_EPILOG = EXIT_CODES_EPILOG.replace(
    "  130  interrupted (Ctrl-C)",
    "  130  stopped by Ctrl-C or SIGTERM after saving the state (continue with --resume); a second Ctrl-C\n"
    "       stops without saving")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ssl3d-pretrain", description=__doc__.split("\n\n")[0], epilog=PRETRAIN_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (config/pretrain/<recipe>.yaml)")
    p.add_argument("--data", nargs="+", metavar="PATH", help="scan sources replacing data.sources (bags, folders, files, sim:outdoor)")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="PointCloud2 topics to read from bags")
    add_run_arguments(p, "preprocessing.voxel_size=0.15")
    return p.parse_args(argv)


def add_run_arguments(p: argparse.ArgumentParser, set_example: str) -> None:
    """The runtime options pretraining and fine-tuning share (the ``run`` section and ``--set``)."""
    p.add_argument("--steps", type=int, help="total optimisation steps (run.steps)")
    p.add_argument("--batch-size", type=int, help="scans per process per step (run.batch_size)")
    p.add_argument("--out", help="output folder (run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the latest training state in OUT/checkpoints")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="run.device")
    p.add_argument("--workers", type=int, help="DataLoader workers per process (run.workers)")
    p.add_argument("--checkpoint-every", type=int, help="steps between resumable states (run.checkpoint_every)")
    p.add_argument("--seed", type=int, help="run.seed (weights of fresh layers, augmentations, order)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help=f"override any config entry (value parsed as YAML), e.g. --set {set_example}; repeatable")


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


@console_script("ssl3d-pretrain")
def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .config import load_config
    from ssl3d_ros.checkpoint import CheckpointError

    from .loop import train

    cfg = apply_overrides(load_config(args.config, args.overrides), args)
    try:
        result = train(cfg, resume=args.resume, progress=not args.no_progress)
    except CheckpointError as exc:
        if not isinstance(exc.__cause__, OSError):
            raise  # not a failed write: the contract's exit 2
        # the encoder could not be written (disk full): the training states are intact
        print(f"ssl3d-pretrain: error: {exc}; continue with --resume once it can be written", file=sys.stderr)
        return EXIT_BUG
    except OSError as exc:
        if isinstance(exc, INPUT_OS_ERRORS):
            raise  # a missing or unreadable input path: the contract's exit 2
        # disk full or unwritable --out: earlier checkpoints are intact
        print(f"ssl3d-pretrain: error: {describe_error(exc)}; continue with --resume once it can be written",
              file=sys.stderr)
        return EXIT_BUG
    finally:
        from .distributed import cleanup

        cleanup()
    if result.interrupted_by:
        print(f"ssl3d-pretrain: stopped at step {result.step}; state saved in {result.out_dir / 'checkpoints'} "
              f"(continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.encoder_path is not None:  # under torchrun only rank 0 exports the encoder and reports it
        print(f"ssl3d-pretrain: {result.step} steps done; encoder written to {result.encoder_path}; "
              f"{result.scans_skipped} unreadable scans skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
