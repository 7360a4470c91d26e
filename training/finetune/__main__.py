"""``python -m ssl3d_ros.training.finetune`` (and ``torchrun -m``): the ssl3d-finetune command."""
import sys

from .cli import main

if __name__ == "__main__":  # importing the package's modules (tests walk them) runs nothing
    sys.exit(main())
