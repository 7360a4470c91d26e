"""``ssl3d-novelty-ref``: write a novelty reference into a checkpoint, from the checkpoint's own
encoder run over scans of the data it should call familiar.

    ssl3d-novelty-ref --checkpoint IN.safetensors --data PATH [PATH ...] --out OUT.safetensors
                      [--topics T ...] [--exclude GLOB ...] [--scans N] [--dims D] [--prototypes K] [--seed S]

The scans are read as ``ssl3d-pretrain --data`` reads them (rosbag2 bags, KITTI-style folders,
.pcd/.ply/.npy, ``sim:outdoor[:N]``); ``--scans`` of them, evenly spaced, are encoded with the
checkpoint's preprocessing and the reference (:mod:`ssl3d_ros.models.novelty`) is fitted on their voxel
hypercolumns. OUT is IN with the reference added (replaced if it had one); OUT may be IN. The node
then publishes ``~/output/novelty`` and warns when recent frames are unlike the reference.

``ssl3d-pretrain`` (``run.novelty_scans``) and ``ssl3d-finetune`` (``novelty_scans``) write a reference
the same way at the end of a run, fitted on their own training scans.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterable, Sequence

from ssl3d_ros.cli import EXIT_CODES_EPILOG, console_script

log = logging.getLogger(__name__)

PROG = "ssl3d-novelty-ref"
DEFAULT_SCANS = 64


def evenly_spaced(length: int, count: int) -> list[int]:
    """``count`` indices spread over ``range(length)`` (all of them when ``count`` >= ``length``)."""
    if count <= 0 or count >= length:
        return list(range(length))
    return sorted({int(i * length / count) for i in range(count)})


def reference_scans(source, count: int) -> Iterable:
    """Up to ``count`` readable scans of ``source``, evenly spaced; an unreadable one is skipped and logged."""
    from ssl3d_ros.io import ScanReadError

    for index in evenly_spaced(len(source), count):
        try:
            yield source[index]
        except ScanReadError as error:
            log.warning("novelty reference: skipping scan %d: %s", index, error)


def fit_on_scans(encoder, scans: Iterable, preprocessing, device, *, dims: int | None = None,
                 prototypes: int | None = None, seed: int = 0, sources: Sequence[str] = ()):
    """A :class:`~ssl3d_ros.models.novelty.NoveltyReference` of ``encoder`` on ``scans``: each scan
    preprocessed as the node does it (no augmentation), encoded, the hypercolumns of the voxels a frame
    is scored on kept (0.5 MB a scan). Scans without a voxel after preprocessing are left out."""
    import torch

    from ssl3d_ros.models.novelty import DEFAULT_DIMS, DEFAULT_PROTOTYPES, fit_reference, sample_voxels
    from ssl3d_ros.preprocessing import collate, preprocess

    frames = []
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for scan in scans:
                vox = preprocess(scan, preprocessing)
                if len(vox) == 0:
                    continue
                hyper = encoder.hypercolumn(encoder(collate([vox], device=device)))
                frames.append(sample_voxels(hyper))
    finally:
        encoder.train(was_training)
    channels = int(encoder.hypercolumn_channels)
    return fit_reference(frames, dims=min(DEFAULT_DIMS if dims is None else dims, channels),
                         prototypes=DEFAULT_PROTOTYPES if prototypes is None else prototypes, seed=seed,
                         sources=list(sources))


def add_novelty_reference(checkpoint: str | Path, out: str | Path, scans: Iterable, *, device: str = "cpu",
                          dims: int | None = None, prototypes: int | None = None, seed: int = 0,
                          sources: Sequence[str] = ()):
    """Fit a reference with ``checkpoint``'s encoder on ``scans`` and write ``checkpoint`` with it to
    ``out`` (atomically; ``out`` may be ``checkpoint``). Returns the reference."""
    import torch

    from ssl3d_ros.checkpoint import add_heads, load_checkpoint

    torch_device = torch.device(device)
    ckpt = load_checkpoint(checkpoint, device=torch_device, backend="auto" if torch_device.type == "cuda" else "torch")
    reference = fit_on_scans(ckpt.encoder, scans, ckpt.preprocessing, torch_device, dims=dims,
                             prototypes=prototypes, seed=seed, sources=sources)
    add_heads(checkpoint, out, novelty=reference)
    return reference


def build_parser() -> argparse.ArgumentParser:
    from ssl3d_ros.models.novelty import DEFAULT_DIMS, DEFAULT_PROTOTYPES

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1].rstrip() + "\n\n" + EXIT_CODES_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the checkpoint whose encoder the node runs")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="scans the reference describes (bags, folders, files, sim:outdoor[:N])")
    p.add_argument("--out", required=True, help="the checkpoint to write (may be --checkpoint)")
    p.add_argument("--topics", nargs="+", default=[], metavar="TOPIC", help="PointCloud2 topics of bags (default all)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="GLOB",
                   help="scan paths to leave out (fnmatch, '*' crosses '/'), e.g. a test sequence")
    p.add_argument("--scans", type=int, default=DEFAULT_SCANS,
                   help=f"scans used, evenly spaced over the data (default {DEFAULT_SCANS}; 0: all)")
    p.add_argument("--dims", type=int, default=DEFAULT_DIMS,
                   help=f"principal components the prototypes live in (default {DEFAULT_DIMS})")
    p.add_argument("--prototypes", type=int, default=DEFAULT_PROTOTYPES,
                   help=f"k-means prototypes of the reference voxels (default {DEFAULT_PROTOTYPES})")
    p.add_argument("--seed", type=int, default=0, help="voxel sampling and k-means seed (default 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the encoder runs (default cpu)")
    return p


@console_script(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scans < 0:
        raise SystemExit(f"--scans must be >= 0, got {args.scans}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ssl3d_ros.checkpoint import read_meta

    read_meta(args.checkpoint)  # a bad checkpoint is refused before any scan is read
    from .data import DataConfig, open_data

    source = open_data(DataConfig(sources=list(args.data), topics=list(args.topics), exclude=list(args.exclude)))
    reference = add_novelty_reference(args.checkpoint, args.out, reference_scans(source, args.scans),
                                      device=args.device, dims=args.dims, prototypes=args.prototypes, seed=args.seed,
                                      sources=list(args.data))
    print(f"{PROG}: novelty reference of {reference.frames} scans ({reference.num_prototypes} prototypes in "
          f"{reference.dims} dims; 95th-percentile frame divergence {reference.quantile('frame'):.4f}) written to "
          f"{args.out}")
    return 0


__all__ = ["PROG", "DEFAULT_SCANS", "evenly_spaced", "reference_scans", "fit_on_scans", "add_novelty_reference",
           "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
