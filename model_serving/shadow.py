"""Shadow scoring: the challenger scores a request's drivers after the champion's response is built.

The work runs as an asyncio task beside the requests, and the model's `predict` on a thread of its own
with a timeout, so a slow or failing challenger changes no response and fails no request. At most
SHADOW_CONCURRENCY scorings run at once (one stuck in `predict` holds its place until it returns); a
request arriving when all places are taken is not shadowed, and is counted (serving_shadow_skipped_total).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model_serving.metrics import ServingMetrics
from model_serving.model_store import LoadedModel

SHADOW_CONCURRENCY = 16
SHADOW_TIMEOUT_SECONDS = 2.0
log = logging.getLogger("serving.shadow")


class ShadowScorer:
    """Runs shadow scorings off the response path, bounded in number and time."""

    def __init__(self, metrics: ServingMetrics, concurrency: int = SHADOW_CONCURRENCY,
                 timeout: float = SHADOW_TIMEOUT_SECONDS) -> None:
        self.metrics = metrics
        self.concurrency = concurrency
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow-predict")
        self._tasks: set[asyncio.Task] = set()
        self._stuck = 0  # predict calls that timed out and have not returned yet

    @property
    def running(self) -> int:
        return len(self._tasks) + self._stuck

    def submit(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Start `work()` as a task unless SHADOW_CONCURRENCY are running (then count a skip); never raises."""
        if self.running >= self.concurrency:
            self.metrics.shadow_skipped.inc()
            return False
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must never reach a request
            log.exception("shadow scoring failed")

    async def predict(self, model: LoadedModel, matrix: np.ndarray) -> np.ndarray:
        """`model.predict(matrix)` on the shadow thread; TimeoutError after `timeout` seconds. A timed-out call
        keeps its place until it returns, so a stuck challenger cannot queue up work without bound."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, model.predict, matrix)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            self._stuck += 1
            future.add_done_callback(self._returned)
            raise

    def _returned(self, future: asyncio.Future) -> None:
        self._stuck -= 1
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it as never retrieved

    async def wait_idle(self) -> None:
        """Until the shadow scorings started so far are done (used at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout)

    async def close(self) -> None:
        await self.wait_idle()
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
