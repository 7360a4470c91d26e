"""Where inference runs: device and precision from the node's parameters, the process-wide settings
(CPU threads, heap retention), and the pinned staging buffers that carry each frame's model input to
a CUDA device."""
from __future__ import annotations

import torch

from ..config import ConfigError


def resolve_device(requested: str) -> tuple[torch.device, list[str]]:
    """The device to run on and the warnings to log (CPU fallback when CUDA is missing)."""
    warnings: list[str] = []
    if requested == "cpu":
        return torch.device("cpu"), warnings
    if requested not in ("auto", "cuda"):
        raise ConfigError(f"parameter 'device': {requested!r} is not one of auto, cuda, cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device()), warnings
    why = ("this torch build has no CUDA (install the CUDA wheel of torch)" if torch.version.cuda is None
           else "no CUDA device is visible")
    warnings.append(f"device '{requested}': {why}; falling back to CPU inference")
    return torch.device("cpu"), warnings


def resolve_precision(requested: str, device: torch.device) -> tuple[torch.dtype, list[str]]:
    """Model dtype: half on CUDA by default; CPU always runs float32 (its half kernels are slow or missing)."""
    if device.type == "cuda":
        if requested in ("auto", "fp16"):
            return torch.float16, []
        if requested == "bf16":
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16, []
            return torch.float16, ["precision 'bf16' is not supported by this GPU; using fp16"]
        return torch.float32, []
    if requested in ("fp16", "bf16"):
        return torch.float32, [f"precision '{requested}' is not used on CPU; running fp32"]
    return torch.float32, []


class DeviceStaging:
    """Pinned host and device buffers for the model input, grown geometrically, reused every frame.

    On CUDA the per-frame host->device copy goes through these instead of fresh allocations, and the
    copy is asynchronous from pinned memory.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, channels: int, capacity: int) -> None:
        self.device, self.dtype, self.channels = device, dtype, channels
        self.capacity = 0
        self._reserve(max(capacity, 1))

    def _reserve(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        rows = max(rows, int(self.capacity * 1.5))
        pin = self.device.type == "cuda"
        self.host_feat = torch.empty((rows, self.channels), dtype=torch.float32, pin_memory=pin)
        self.host_coords = torch.empty((rows, 4), dtype=torch.int32, pin_memory=pin)
        self.dev_feat = torch.empty((rows, self.channels), dtype=self.dtype, device=self.device)
        self.dev_coords = torch.empty((rows, 4), dtype=torch.int32, device=self.device)
        self.capacity = rows

    def upload(self, feats: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = feats.shape[0]
        self._reserve(m)
        self.host_feat[:m].copy_(feats)
        self.host_coords[:m].copy_(coords)
        dev_feat, dev_coords = self.dev_feat[:m], self.dev_coords[:m]
        dev_feat.copy_(self.host_feat[:m], non_blocking=True)  # casts to the model dtype on the device
        dev_coords.copy_(self.host_coords[:m], non_blocking=True)
        return dev_feat, dev_coords


def apply_process_settings(cpu_threads: int, retain_memory: bool) -> None:
    """Process-wide settings the node's parameters ask for: torch's CPU threads and glibc's heap
    retention (see :mod:`.heap`). Called once by the node, before the model loads; a library
    user running the pipeline in their own process decides these for themselves."""
    from .heap import retain_freed_memory

    if cpu_threads > 0:
        torch.set_num_threads(cpu_threads)
    if retain_memory:
        retain_freed_memory()


__all__ = ["resolve_device", "resolve_precision", "DeviceStaging", "apply_process_settings"]
