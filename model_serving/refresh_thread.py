"""A daemon thread that keeps something in step with an outside store: the model alias, the rollout state.

`refresh` runs at once and then after each wait; an exception in it is logged and the loop goes on, since a
bug in one callback must not stop the worker from ever following the registry or the rollout again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class RefreshThread:
    def __init__(self, name: str, refresh: Callable[[], object], next_wait: Callable[[], float],
                 logger: logging.Logger) -> None:
        self.name = name
        self._refresh, self._next_wait, self._log = refresh, next_wait, logger
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh()
            except Exception:
                self._log.exception(f"{self.name} failed")
            self._stop.wait(self._next_wait())

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
