#!/usr/bin/env bash
# Install what travelled with the device script, then run a command with it:
#
#   bash benchmarks/device/install.sh python3 benchmarks/device/run.py --device cuda --out "$OUT"
#
# Unpacks .devcarry/site-cp312.tar.xz (made by `make device-carry`) into $SSL3D_DEVICE_SITE
# (default /tmp/site) and runs the command with that tree importable: PYTHONPATH (the tree and the
# repository), LD_LIBRARY_PATH (the ROS libraries: the wheels' bootstrap .pth is not read from
# PYTHONPATH, so it is done here), AMENT_PREFIX_PATH, and the scans that travelled as the data folder.
# No package registry is needed; nothing outside the site folder and the repository is written.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CARRY="${SSL3D_DEVCARRY:-$REPO/.devcarry}"
SITE="${SSL3D_DEVICE_SITE:-/tmp/site}"
ARCHIVE="$CARRY/site-cp312.tar.xz"

if [ ! -f "$ARCHIVE" ]; then
  echo "install.sh: $ARCHIVE is missing: run 'make device-carry' on the CPU machine and carry .devcarry" >&2
  exit 2
fi
if [ ! -f "$SITE/.unpacked" ] || [ "$ARCHIVE" -nt "$SITE/.unpacked" ]; then
  rm -rf "$SITE"
  mkdir -p "$SITE"
  started=$(date +%s)
  tar -xJf "$ARCHIVE" -C "$SITE" --strip-components=1
  touch "$SITE/.unpacked"
  echo "install.sh: unpacked $ARCHIVE into $SITE in $(( $(date +%s) - started )) s"
fi

# The repository is on PYTHONPATH as a checkout: ssl3d_ros maps its training/ folder itself.

libs="$SITE/lib"
for d in "$SITE"/*.libs; do [ -d "$d" ] && libs="$libs:$d"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export AMENT_PREFIX_PATH="$SITE${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1  # the ros wheels' re-exec bootstrap: its work is done above
if [ -d "$CARRY/data" ] && [ -z "${SSL3D_SHARED_DATA:-}" ] && [ ! -d "$REPO/../shared/data" ]; then
  export SSL3D_SHARED_DATA="$CARRY/data"
fi
export PYTHONUNBUFFERED=1

if [ "$#" -eq 0 ]; then
  echo "install.sh: installed; give a command to run with it" >&2
  exit 0
fi
exec "$@"
