"""The console-script contract of the training commands (``ssl3d-pretrain``, ``ssl3d-finetune``).

``ssl3d_ros.cli.console_script`` gives every command its exit statuses (2 bad input, 1 a bug or an
output that cannot be written, 130 Ctrl-C); a resumable training run adds to it:

- an output it cannot write (disk full, unwritable ``--out``, a checkpoint that failed to save):
  ``PROG: error: <problem>; continue with --resume once it can be written``, exit 1 (the training
  states written earlier are intact);
- a run stopped by Ctrl-C or SIGTERM after saving its state: ``PROG: stopped at step N; ...``,
  exit 130 (:func:`report_stopped`);
- the process group of a torchrun run is taken down however the command ends.

Loads no torch at import: ``PROG --help`` answers at once.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Any, Callable, Sequence

from ssl3d_ros.cli import EXIT_BUG, EXIT_CODES_EPILOG, EXIT_INTERRUPTED, INPUT_OS_ERRORS, console_script, describe_error

TRAINING_EXIT_CODES = EXIT_CODES_EPILOG.replace(
    "  130  interrupted (Ctrl-C)",
    "  130  stopped by Ctrl-C or SIGTERM after saving the state (continue with --resume); a second Ctrl-C\n"
    "       stops without saving")
RESUME_HINT = "continue with --resume once it can be written"


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


def _failed_checkpoint_write(exc: BaseException) -> bool:
    """A CheckpointError raised because the file could not be written (its cause an OSError)."""
    checkpoint = sys.modules.get("ssl3d_ros.checkpoint.meta")  # where it is defined; not imported: none raised
    error_type = getattr(checkpoint, "CheckpointError", None)
    return isinstance(error_type, type) and isinstance(exc, error_type) and isinstance(exc.__cause__, OSError)


def training_command(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorator: ``console_script(prog)`` plus the resumable run's part of the contract (above) for a
    training command's ``main(argv) -> int``; INFO log records go to stderr."""
    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def resumable(argv: Sequence[str] | None = None) -> int | None:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            try:
                return main(argv)
            except OSError as exc:
                if isinstance(exc, INPUT_OS_ERRORS):
                    raise  # a missing or unreadable input path: the contract's exit 2
                # disk full or unwritable --out: earlier training states are intact
                print(f"{prog}: error: {describe_error(exc)}; {RESUME_HINT}", file=sys.stderr)
                return EXIT_BUG
            except ValueError as exc:
                if not _failed_checkpoint_write(exc):
                    raise  # a bad checkpoint or config: the contract's exit 2
                print(f"{prog}: error: {exc}; {RESUME_HINT}", file=sys.stderr)
                return EXIT_BUG
            finally:
                if "torch" in sys.modules:  # a run started: leave no process group behind
                    from ..distributed import cleanup

                    cleanup()

        return console_script(prog)(resumable)

    return wrap


def report_stopped(prog: str, result: Any) -> int:
    """The line for a run that stopped (Ctrl-C / SIGTERM) after saving its state; the exit status."""
    print(f"{prog}: stopped at step {result.step}; state saved in {result.out_dir / 'checkpoints'} "
          f"(continue with --resume)", file=sys.stderr)
    return EXIT_INTERRUPTED


__all__ = ["TRAINING_EXIT_CODES", "RESUME_HINT", "add_run_arguments", "training_command", "report_stopped"]
