"""Dynamic batching for export.serve: concurrent requests to one model are
gathered into a single onnxruntime run.

    batcher = DynamicBatcher(run, max_batch=32, timeout_s=0.002)
    await batcher.start()
    outputs = await batcher.infer(x)      # x: (n, ...) rows; outputs: this request's rows only
    await batcher.stop()

One worker task per model takes the first waiting request, then keeps taking
requests until the batch holds `max_batch` rows or `timeout_s` has passed since
the first one, concatenates them along the batch dimension, runs the model in a
dedicated thread (the event loop keeps accepting requests meanwhile) and hands
each caller exactly its own rows of every output. Runs are one at a time per
model -- onnxruntime already spreads one run over its intra-op threads -- so
while a batch runs the next one fills up, and under load batches grow by
themselves without waiting for the timeout. A request is never split: one with
more rows than max_batch runs alone, and one that would overflow the current
batch starts the next. max_batch 1 turns batching off: every request is its own
run.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Callable, List, Optional, Tuple

import numpy as np

RunFunction = Callable[[np.ndarray], List[np.ndarray]]
BatchObserver = Callable[[int, float], None]


class DynamicBatcher:
    def __init__(self, run: RunFunction, max_batch: int, timeout_s: float, name: str = "model",
                 on_batch: Optional[BatchObserver] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be at least 0, got {timeout_s}")
        self.run = run
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.name = name
        self.on_batch = on_batch  # called with (rows, seconds) after every run
        self._queue: Optional[asyncio.Queue] = None
        self._carry: Optional[Tuple[np.ndarray, asyncio.Future]] = None
        self._taken: List[Tuple[np.ndarray, asyncio.Future]] = []  # the batch being gathered or run
        self._worker: Optional[asyncio.Task] = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"run-{self.name}")
        self._worker = asyncio.create_task(self._work(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get a RuntimeError."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        waiting = self._taken + ([self._carry] if self._carry else [])
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for _, future in waiting:
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        self._carry, self._taken = None, []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def infer(self, rows: np.ndarray) -> List[np.ndarray]:
        """Run the model on `rows` (batch dimension first), batched with whatever
        else is waiting; return this request's rows of every output."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, future))
        return await future

    async def _next(self, timeout: Optional[float]):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _gather(self) -> List[Tuple[np.ndarray, asyncio.Future]]:
        batch = self._taken = [await self._next(None)]
        rows = len(batch[0][0])
        deadline = time.monotonic() + self.timeout_s
        while rows < self.max_batch:
            item = await self._next(deadline - time.monotonic())
            if item is None:
                break
            if rows + len(item[0]) > self.max_batch:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            rows += len(item[0])
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            batch = [(rows, future) for rows, future in batch if not future.done()]  # callers that gave up
            if not batch:
                continue
            inputs = batch[0][0] if len(batch) == 1 else np.concatenate([rows for rows, _ in batch])
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self.run, inputs)
            except Exception as error:  # noqa: BLE001 -- every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            if self.on_batch is not None:
                self.on_batch(len(inputs), time.perf_counter() - started)
            start = 0
            for rows, future in batch:
                stop = start + len(rows)
                if not future.done():
                    future.set_result([output[start:stop] for output in outputs])
                start = stop
