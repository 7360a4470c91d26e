"""The label-efficiency study (``ssl3d-study``): scratch against pretrained encoders, fine-tuned and as
frozen linear probes, under label budgets, scored on held-out test sequences."""
from .cells import StudyInterrupted, cached_records, cell_config, run_cell, run_study
from .cli import main
from .plan import Budget, Cell, Row, StudyPlan, check_plan, parse_row
from .report import plot, report

__all__ = ["main", "Budget", "Cell", "Row", "StudyPlan", "check_plan", "parse_row", "StudyInterrupted", "cached_records",
           "cell_config", "run_cell", "run_study", "plot", "report"]
