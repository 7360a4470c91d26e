"""``python -m ssl3d_ros.training.study``: the ssl3d-study command."""
import sys

from .cli import main

if __name__ == "__main__":  # importing the package's modules (tests walk them) runs nothing
    sys.exit(main())
