"""torchrun worker for test_training_ddp.py: two DDP steps of every recipe through the real loop.

Run as ``torchrun --nproc-per-node 2 test/ddp_recipe_steps.py OUT_DIR``. Every rank records the
Python warnings raised while training and a checksum of its trained student parameters; rank 0 writes
them for all ranks to OUT_DIR/report.json. A recipe whose unused parameters DDP does not know about
fails its second step ("Expected to have finished reduction in the prior iteration").
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from builders import tiny_config  # noqa: E402

from ssl3d_ros.training.loop import train  # noqa: E402

RECIPES = ("sonata", "msm", "jepa", "mae", "acl")


def main(out_dir: Path) -> None:
    report: dict[str, dict] = {}
    for recipe in RECIPES:
        cfg = tiny_config(recipe, out_dir / recipe, steps=2, checkpoint_every=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(cfg, progress=False)
        checksum = torch.stack([p.detach().double().sum() for p in result.recipe.student_encoder.parameters()]).sum()
        gathered = [torch.zeros((), dtype=torch.float64) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, checksum)
        messages = [f"{w.category.__name__}: {w.message}" for w in caught]
        every_rank: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(every_rank, messages)
        report[recipe] = {"steps": result.step, "student_checksums": [float(c) for c in gathered],
                          "warnings": every_rank}
    if dist.get_rank() == 0:
        (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
