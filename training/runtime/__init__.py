"""The training runtime ``ssl3d-pretrain`` and ``ssl3d-finetune`` share, and the benchmarks time.

- :mod:`.run`: a run's set-up (DDP under torchrun, device, threads, seed, the out folder), the
  optimisation step (parameter groups, warm-up/cosine learning rates, bf16 autocast, clipping,
  DDP), the step loop (metrics over ranks, skipped scans, metrics.csv, progress, stops) and the
  resumable training states;
- :mod:`.command`: the console-script contract of a training command (``ssl3d_ros.cli``'s, plus
  what a resumable run adds) and the run options both commands take. It loads no torch, so
  ``--help`` stays fast; that is why this is two modules.

Nothing is imported here: ``from .runtime.command import ...`` must not load torch.
"""
