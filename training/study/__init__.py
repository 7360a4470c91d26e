"""The label-efficiency study (``ssl3d-study``): scratch against pretrained encoders, fine-tuned and as
frozen linear probes, under label budgets, scored on held-out test sequences.

The cells' names (training, so torch) load on first use: ``ssl3d-study --help``, a refused plan and
``--report-only`` answer without importing torch."""
from .cli import main
from .plan import Budget, Cell, Row, StudyPlan, check_plan, parse_row
from .report import cached_records, plot, report

_CELL_NAMES = ("StudyInterrupted", "cell_config", "run_cell", "run_study")


def __getattr__(name: str):
    if name in _CELL_NAMES:
        from . import cells

        return getattr(cells, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "Budget", "Cell", "Row", "StudyPlan", "check_plan", "parse_row", *_CELL_NAMES, "cached_records", "plot",
           "report"]
