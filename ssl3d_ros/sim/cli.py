"""``ssl3d-simulate``: write a simulated, labelled scan sequence as a rosbag2 and/or .npy files."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from ..cli import EXIT_CODES_EPILOG, console_script
from ..config import ConfigError, load_yaml
from .scenes import class_colors, class_names
from .sequence import SimConfig, build_world, default_lidar, with_lidar

log = logging.getLogger("ssl3d_ros.sim")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ssl3d-simulate",
        description="Simulate a labelled LiDAR scan sequence (seeded street or room scene, Open3D ray "
                    "casting, 10 Hz stamps) and write it as a rosbag2 (PointCloud2 with x, y, z, "
                    "intensity, ring, time and an int32 'label' field) and/or as .npy files.",
        epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML file with a SimConfig (e.g. config/sim_outdoor.yaml)")
    parser.add_argument("--scene", choices=["outdoor", "indoor"], help="scene type (default: outdoor, or the config's)")
    parser.add_argument("--scans", type=int, default=50, help="number of scans (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="layout and noise seed (default 0)")
    parser.add_argument("--beams", type=int, help="LiDAR beams (default: the scene's LiDAR, 32)")
    parser.add_argument("--columns", type=int, help="LiDAR points per revolution per beam (default 1024)")
    parser.add_argument("--out", type=Path, help="rosbag2 folder to create (must not exist)")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap", help="bag storage (default mcap)")
    parser.add_argument("--topic", default="/points", help="PointCloud2 topic (default /points)")
    parser.add_argument("--depth-topic",
                        help="also write the depth camera's organized clouds (height > 1, NaN holes, "
                             "'label' field) on this topic")
    parser.add_argument("--npy-dir", type=Path,
                        help="also write NNNNNN.points.npy ((N,4) x, y, z, intensity) + NNNNNN.labels.npy "
                             "(int32) + meta.json here")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if args.out is None and args.npy_dir is None:
        parser.error("give --out BAG_DIR and/or --npy-dir DIR")
    if args.depth_topic and args.out is None:
        parser.error("--depth-topic needs --out BAG_DIR")
    if args.scans < 1:
        parser.error("--scans must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; rosbag2 needs a new folder")
    return args


def config_from_args(args: argparse.Namespace) -> SimConfig:
    cfg = load_yaml(SimConfig, args.config) if args.config else SimConfig()
    if args.scene:
        cfg = dataclasses.replace(cfg, scene=args.scene)
    lidar_changes = {k: v for k, v in (("beams", args.beams), ("columns", args.columns)) if v is not None}
    if lidar_changes:
        cfg = with_lidar(cfg, **lidar_changes)
    return cfg


def depth_cloud_message(frame, typestore):
    """An organized rosbags PointCloud2 (height x width, NaN points kept) for a depth frame.

    BagWriter.write_scan encodes unorganized clouds only (a Scan has no image shape), hence this.
    """
    from ..codec import encode_cloud, fill_cloud_message
    from ..io.rosbag import POINTCLOUD2, split_stamp

    types = typestore.types
    sec, nanosec = split_stamp(frame.stamp_ns)
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame.frame_id)
    encoded = encode_cloud(frame.points.reshape(-1, 3), {"label": frame.labels.reshape(-1)}, height=frame.height)
    msg = types[POINTCLOUD2](header=header, height=0, width=0, fields=[], is_bigendian=False, point_step=0,
                             row_step=0, data=np.zeros(0, dtype=np.uint8), is_dense=False)
    return fill_cloud_message(msg, encoded, types["sensor_msgs/msg/PointField"])


def write_npy(directory: Path, k: int, scan) -> None:
    stem = directory / f"{k:06d}"
    points = np.column_stack([scan.points, scan.fields["intensity"]]).astype(np.float32)
    np.save(f"{stem}.points.npy", points)
    np.save(f"{stem}.labels.npy", scan.labels.astype(np.int32))


@console_script("ssl3d-simulate")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        cfg = config_from_args(args)
        lidar = cfg.lidar or default_lidar(cfg.scene)
        world = build_world(cfg, args.seed, duration_s=args.scans / lidar.rate_hz)
    except ConfigError:
        raise
    except ValueError as exc:  # a SimConfig value the world builder refuses: bad configuration too
        raise ConfigError(str(exc)) from None

    if args.npy_dir is not None:
        args.npy_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stamps, counts = [], []
    # The writer's context finishes metadata.yaml on success and aborts the bag on an exception.
    with contextlib.ExitStack() as stack:
        writer = None
        if args.out is not None:
            from ..io.rosbag import BagWriter  # rosbags only when a bag is written

            writer = stack.enter_context(BagWriter(args.out, storage=args.storage))
        for k in range(args.scans):
            scan = world.lidar_scan(k)
            if writer is not None:
                writer.write_scan(args.topic, scan, label_field="label")
                if args.depth_topic:
                    from ..io.rosbag import POINTCLOUD2

                    frame = world.depth_frame(k)
                    writer.write_message(args.depth_topic, POINTCLOUD2,
                                         depth_cloud_message(frame, writer.typestore), frame.stamp_ns)
            if args.npy_dir is not None:
                write_npy(args.npy_dir, k, scan)
            stamps.append(scan.stamp_ns)
            counts.append(len(scan))
            if (k + 1) % 10 == 0 or k + 1 == args.scans:
                log.info("scan %d/%d: %d points", k + 1, args.scans, len(scan))

    if args.npy_dir is not None:
        meta = {
            "scene": cfg.scene, "seed": args.seed, "frame_id": lidar.frame_id, "intensity_scale": 1.0,
            "class_names": list(class_names(cfg.scene)), "class_colors": class_colors(cfg.scene).tolist(),
            "stamps_ns": stamps, "point_counts": counts, "lidar": dataclasses.asdict(lidar),
        }
        (args.npy_dir / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    elapsed = time.perf_counter() - started
    log.info("%d scans, %d points, %.3f s per scan%s%s", args.scans, sum(counts), elapsed / args.scans,
             f" -> bag {args.out} ({args.storage}, topic {args.topic})" if args.out else "",
             f" -> {args.npy_dir}" if args.npy_dir else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
