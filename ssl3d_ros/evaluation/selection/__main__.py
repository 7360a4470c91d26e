"""``python -m ssl3d_ros.evaluation.selection``: the ssl3d-select command."""
import sys

from .cli import main

__all__ = []  # runs the command; defines nothing

if __name__ == "__main__":  # importing the package's modules (tests walk them) runs nothing
    sys.exit(main())
