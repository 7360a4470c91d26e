#!/usr/bin/env python3
"""Overload: 120k-point clouds published at several times the rate the node sustains.

The command line of ``ssl3d_ros.evaluation.overload`` (what is measured and reported: its module
doc). Default 60 s at 3x; a soak run is the same with a longer ``--duration`` (e.g. 3600). Without
``--checkpoint`` the node runs the packaged checkpoint, else a random-init nano (as bench_node.py).
Run inside the private network namespace::

    scripts/netns-run .venv/bin/python benchmarks/overload.py                       # 60 s, 3x
    scripts/netns-run .venv/bin/python benchmarks/overload.py --duration 3600 --json soak.json

``test/test_overload.py`` runs the same code for 10 s in the default test suite.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ssl3d_ros.evaluation.node_harness import NodeError
from ssl3d_ros.evaluation.overload import POINTS, run_overload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the packaged checkpoint (else random-init nano)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload (soak: e.g. 3600)")
    parser.add_argument("--factor", type=float, default=3.0, help="publish rate / the rate the node answers (calibrated first, then rising each second if the node answers faster)")
    parser.add_argument("--points", type=int, default=POINTS)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ssl3d_overload_"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from bench_node import benchmark_checkpoint  # benchmarks/ is this script's folder, on sys.path

        checkpoint = benchmark_checkpoint(None, workdir)
    try:
        result = run_overload(checkpoint, duration_s=args.duration, factor=args.factor, device=args.device,
                              points=args.points, workdir=workdir,
                              progress=lambda text: print(text, file=sys.stderr, flush=True))
    except NodeError as exc:
        print(f"overload: {exc}", file=sys.stderr)
        return 1
    text = json.dumps({k: v for k, v in result.items() if k != "node_log_tail"}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["node_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
