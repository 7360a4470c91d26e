"""The training metrics log (ssl3d_ros.training.metrics): CSV and TensorBoard, resumed mid-run."""
from __future__ import annotations

from ssl3d_ros.training.metrics import MetricsLogger


def test_metrics_csv_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=True)
    for step in range(1, 6):
        log.log(step, {"loss": 1.0 / step})
    log.close()
    assert list((tmp_path / "tensorboard").iterdir())
    resumed = MetricsLogger(tmp_path, tensorboard=False, resume_step=3)
    resumed.log(4, {"loss": 0.3, "new_monitor": 1.0})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,loss,new_monitor" and len(lines) == 5 and lines[-1].startswith("4,0.3")
