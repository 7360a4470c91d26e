"""Run every benchmark in sequence (``make bench``) and keep each one's output in benchmarks/results/.

The figures in BENCHMARKS.md come from these commands on a quiet machine; each script prints its own
medians and its ratio against a baseline measured in the same run.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ("codec", ["bench_codec.py", "--points", "120000", "--dims", "64", "--repeats", "15"]),
    ("preprocessing", ["bench_preprocessing.py", "--voxel", "0.1", "--repeats", "20"]),
    ("encoder", ["bench_encoder.py", "--repeats", "5", "--warmup", "2"]),
    ("training", ["bench_training.py", "--steps", "8", "--threads", "1"]),
    ("finetune", ["bench_finetune.py", "--steps", "8", "--threads", "1"]),
    ("node", ["bench_node.py"]),
    ("novelty", ["bench_novelty.py", "--repeats", "10", "--threads", "1"]),
]


def main() -> int:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    failed = []
    for name, args in RUNS:
        print(f"== {name}: python benchmarks/{' '.join(args)}", flush=True)
        with open(out / f"{name}.txt", "w", encoding="utf-8") as log:
            proc = subprocess.Popen([sys.executable, str(HERE / args[0]), *args[1:]], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            if proc.wait() != 0:
                failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
