"""Training state files (ssl3d_ros.training.state): keep the newest, fall back past a damaged one."""
from __future__ import annotations

import torch

from ssl3d_ros.training import state as state_io


def test_state_roundtrip_and_fallback(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    for step in (10, 20, 30):
        state_io.save_state(tmp_path, step, model.state_dict(), opt.state_dict(), {"counters": {"scans_seen": step}}, keep=2)
    assert [p.name for p in state_io.list_states(tmp_path)] == ["state-00000020.safetensors", "state-00000030.safetensors"]
    latest = state_io.load_latest(tmp_path)
    assert latest.step == 30 and latest.extra["counters"]["scans_seen"] == 30
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model2.load_state_dict(latest.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(latest.optimizer)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    # a damaged newest file (e.g. the disk filled up) falls back to the previous one; temp files are ignored
    (tmp_path / "state-00000030.safetensors").write_bytes(b"garbage")
    (tmp_path / ".state-00000040.safetensors.123.tmp").write_bytes(b"partial")
    assert state_io.load_latest(tmp_path).step == 20
