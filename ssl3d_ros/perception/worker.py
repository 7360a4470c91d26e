"""The node's hand-over between the executor thread and its inference thread (plain Python)."""
from __future__ import annotations

import threading
from typing import Any, Callable

from .headers import loggable_frame_id


class LatestFrameSlot:
    """One-slot mailbox: a new frame replaces a waiting one (the replaced one counts as dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced a frame that was still waiting."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The waiting frame (removing it), or None after ``timeout`` or when closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def frame_failure(exc: BaseException, frame_id: str, device: Any) -> tuple[str, str, str]:
    """How a frame's exception is counted: (NodeStats counter, log message, warning kind).

    A malformed cloud is ``rejected``; one whose frame /tf_static has not linked to the base frame yet
    ``without_transform``; a device out of memory is an ``errors`` entry of its own kind
    (the caller also counts ``out_of_memory`` and frees the CUDA cache); anything else is ``errors``."""
    import torch

    from ..codec import CloudFormatError
    from .mounting import TransformUnavailable

    if isinstance(exc, CloudFormatError):
        return "rejected", f"rejected malformed PointCloud2 (frame {loggable_frame_id(frame_id)}): {exc}", f"rejected:{exc}"
    if isinstance(exc, TransformUnavailable):  # parameter frame.tf_static, before the transform came
        return ("without_transform", f"skipped a cloud in frame {loggable_frame_id(frame_id)}: {exc}",
                f"without_transform:{frame_id}")
    if isinstance(exc, torch.OutOfMemoryError):
        return "errors", f"out of memory on {device}: {str(exc).splitlines()[0]}", "out_of_memory"
    message = f"processing failed: {type(exc).__name__}: {exc}"
    return "errors", message, f"errors:{message}"


class InferenceWorker:
    """The one thread that loads and warms up the model and then runs every frame.

    Torch's OpenMP keeps a thread team per calling thread: a warm-up on the executor thread left a
    second team behind, and with more OpenMP threads than cores each parallel region's hand-off slept
    instead of spinning, which made every frame about 1.7x slower on a 2-core CPU. So loading,
    warm-up and inference all happen here, and frames arrive through a :class:`LatestFrameSlot`.
    ``process(item)`` exceptions go to ``on_failure(item, exc)``; the thread never dies of a frame.
    """

    def __init__(self, load: Callable[[], float], process: Callable[[Any], None],
                 on_failure: Callable[[Any, BaseException], None], name: str = "ssl3d_inference") -> None:
        self._load, self._process, self._on_failure = load, process, on_failure
        self.slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._startup: dict[str, Any] = {}

    def start(self) -> float:
        """Start the thread and wait for the load; returns its result (warm-up ms) or re-raises its error."""
        self._thread.start()
        self._ready.wait()
        if "error" in self._startup:
            self._thread.join()
            raise self._startup["error"]
        return self._startup["result"]

    def _run(self) -> None:
        try:
            self._startup["result"] = self._load()
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which re-raises on the caller's thread
            self._startup["error"] = exc
            return
        finally:
            self._ready.set()
        while not self._stop.is_set():
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(item)
            except Exception as exc:  # never let one frame kill the worker
                self._on_failure(item, exc)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.slot.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)


class OutputStage:
    """A second thread that encodes and publishes frame N while the inference thread runs frame N+1.

    Encoding and publishing a frame's four outputs is about a fifth of its time on a 2-core CPU and
    uses no more than one core, while the inference thread leaves part of the other idle (measured:
    the node at 143 % CPU of 200 % with every output subscribed); on CUDA it is CPU work the GPU
    would otherwise wait for. ``submit(item)`` waits while the previous frame is still being
    published, so at most two frames are in flight (one computed, one published): memory stays
    bounded and no computed frame is ever dropped here (drops happen only in the input slot).
    ``publish(item)`` exceptions go to ``on_failure(item, exc)``; the thread never dies of a frame.
    ``stop()`` publishes a frame already handed over, then ends the thread.
    """

    def __init__(self, publish: Callable[[Any], None], on_failure: Callable[[Any, BaseException], None],
                 name: str = "ssl3d_outputs") -> None:
        self._publish, self._on_failure = publish, on_failure
        self._cond = threading.Condition()
        self._item: Any = None
        self._busy = False  # an item is waiting or being published
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Hand ``item`` over once the previous one is published; False (not taken) after ``stop``."""
        with self._cond:
            while self._busy and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._item, self._busy = item, True
            self._cond.notify_all()
            return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once nothing is waiting or being published (False after ``timeout``)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._item is not None or self._closed)
                if self._item is None:  # closed with nothing handed over
                    return
                item, self._item = self._item, None
            try:
                self._publish(item)
            except Exception as exc:  # never let one frame kill the publisher
                self._on_failure(item, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)


__all__ = ["LatestFrameSlot", "frame_failure", "InferenceWorker", "OutputStage"]
