"""The node's hand-over between the executor thread and its inference thread (plain Python)."""
from __future__ import annotations

import threading
from typing import Any


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
