"""``python -m ssl3d_ros.training.finetune`` (and ``torchrun -m``): the ssl3d-finetune command."""
import sys

from .cli import main

sys.exit(main())
