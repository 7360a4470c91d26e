"""``make demo``: the whole job on the built-in default, on a 2-core CPU in 4 to 8 minutes.

1. simulate two labelled LiDAR sequences (different street layouts) and write them as rosbag2;
2. pretrain the nano encoder on the first one with a self-supervised recipe (labels unused);
3. fit a linear segmentation head on frozen features and write it into the checkpoint;
4. replay the held-out bag through the real node over DDS and measure latency, drops and mIoU;
5. draw what the encoder learned; print a short report and the output folder.

Each step is the package's own command line tool, run as a subprocess, so the demo exercises
exactly what a user runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ssl3d_ros.cli import EXIT_BUG, EXIT_CODES_EPILOG, console_script

RECIPES = ("sonata", "msm", "jepa", "mae", "acl")


def _pretrain_config(recipe: str) -> Path:
    """config/pretrain/RECIPE.yaml wherever the package's data files are (ssl3d_ros.locations)."""
    from .locations import data_dirs, searched

    for folder in data_dirs("config/pretrain"):
        if (folder / f"{recipe}.yaml").is_file():
            return folder / f"{recipe}.yaml"
    raise SystemExit(f"ssl3d-demo: recipe config {recipe}.yaml not found; searched: {searched('config/pretrain')}")


def _run(step: str, args: list[str], log_dir: Path, *, show_output: bool = False) -> None:
    log = log_dir / f"{step}.log"
    print(f"\n== {step}: {' '.join(args)}", flush=True)
    started = time.monotonic()
    with open(log, "wb") as handle:
        if show_output:
            # The progress bar goes to the terminal and the log as raw bytes: reading lines would
            # turn each carriage-return update of the bar into a new line.
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                handle.write(chunk)
            code = proc.wait()
        else:
            code = subprocess.run(args, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:  # the step's last log lines, then the contract's one error line
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
        print(f"ssl3d-demo: error: step '{step}' failed (exit {code}); log: {log}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BUG)  # the steps' inputs are the demo's own: a failing step is a bug
    print(f"   done in {time.monotonic() - started:.0f} s (log: {log})", flush=True)


def pretrain_folder(out: Path, recipe: str, config: Path, steps: int, seed: int, train_scans: int) -> Path:
    """The pretraining run's folder, named after everything that shapes it, so that a re-run resumes
    its own run and a changed recipe, config or budget starts a new one beside it (the pretraining
    CLI refuses to resume a run of another model)."""
    key = hashlib.sha1(config.read_bytes() + f"|{steps}|{seed}|{train_scans}".encode()).hexdigest()[:8]
    return out / "pretrain" / f"{recipe}-{key}"


def _module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


@console_script("ssl3d-demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssl3d-demo", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=RECIPES, default="sonata", help="self-supervised recipe")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--train-scans", type=int, default=120, help="scans in the pretraining bag")
    parser.add_argument("--eval-scans", type=int, default=40, help="scans in the held-out replay bag")
    parser.add_argument("--steps", type=int, default=800, help="pretraining steps")
    parser.add_argument("--probe-scans", type=int, default=10, help="training-bag scans the linear head is fitted on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    train_bag, eval_bag = out / "sim_train_bag", out / "sim_eval_bag"
    config = _pretrain_config(args.recipe)
    pretrain_dir = pretrain_folder(out, args.recipe, config, args.steps, args.seed, args.train_scans)
    probe_dir = out / "probe"
    model = out / "model.safetensors"
    started = time.monotonic()

    for bag, scans, seed in ((train_bag, args.train_scans, args.seed), (eval_bag, args.eval_scans, args.seed + 1)):
        if not bag.exists():
            _run(f"simulate-{bag.name}", _module("ssl3d_ros.sim.cli") + [
                "--scene", "outdoor", "--scans", str(scans), "--seed", str(seed), "--out", str(bag), "--quiet",
            ], logs)

    _run("pretrain", _module("ssl3d_ros.training.pretrain") + [
        "--config", str(config),
        "--data", str(train_bag), "--steps", str(args.steps), "--out", str(pretrain_dir), "--seed", str(args.seed),
    ] + (["--resume"] if (pretrain_dir / "checkpoints").exists() else []), logs, show_output=True)

    _run("probe", _module("ssl3d_ros.evaluation.probe") + [
        "--checkpoint", str(pretrain_dir / "encoder.safetensors"), str(train_bag),
        # Linear probe only (kNN and multi-level probes take minutes on a CPU: ssl3d-probe runs them).
        "--label-field", "label", "--class-map", "sim-outdoor", "--max-scans", str(args.probe_scans), "--max-points-per-scan", "25000",
        "--probes", "linear", "--baselines", "random", "raw", "--out", str(probe_dir), "--write-head", str(model),
    ], logs)

    _run("replay", _module("ssl3d_ros.evaluation.replay") + [
        str(eval_bag), "--checkpoint", str(model), "--mode", "recorded", "--label-field", "label",
        "--class-map", "sim-outdoor", "--out", str(out / "replay"),
    ], logs)

    _run("pictures", _module("ssl3d_ros.evaluation.viz") + [
        str(eval_bag), "--checkpoint", str(model), "--index", str(min(5, args.eval_scans - 1)), "--label-field", "label",
        "--class-map", "sim-outdoor", "--color", "pca", "classes", "gt", "similarity", "--out", str(out / "pictures"),
    ], logs)

    _print_summary(out, args.recipe, time.monotonic() - started)
    return 0


def _print_summary(out: Path, recipe: str, seconds: float) -> None:
    probe = json.loads((out / "probe" / "report.json").read_text())
    replay = json.loads((out / "replay" / "replay.json").read_text())
    lines = [f"# ssl3d_ros demo: recipe {recipe}, {seconds / 60:.1f} min", "",
             f"Linear/kNN probes on frozen features ({probe['split']}), mIoU %:"]
    for row in probe["results"]:
        lines.append(f"- {row['encoder']} / {row['probe']}: {_pct(row['miou'])}")
    lat = replay["latency_ms"]
    lines += ["", f"Replay of the held-out bag through the node over DDS ({replay['mode']}):",
              f"- frames in bag {replay['frames_in_bag']}, sent {replay['sent']}, segmented {replay['outputs']}, "
              f"dropped {replay['dropped']}, rejected {replay['rejected']}",
              f"- latency stamp -> segmentation received: p50 {_ms(lat.get('p50'))}, p90 {_ms(lat.get('p90'))}, "
              f"p99 {_ms(lat.get('p99'))}"]
    if replay.get("segmentation"):
        lines.append(f"- segmentation mIoU {_pct(replay['segmentation']['miou'])} %, "
                     f"accuracy {_pct(replay['segmentation']['accuracy'])} %")
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    lines += ["", f"Pictures ({out / 'pictures'}): {', '.join(pictures)}",
              f"Details: {out / 'probe' / 'report.md'}, {out / 'replay' / 'replay.md'}"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    print("\n" + text)
    print(f"demo output folder: {out}")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
