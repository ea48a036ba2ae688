"""Dynamic batching for export.serve: concurrent requests to one model are
gathered into a single onnxruntime run.

    batcher = DynamicBatcher(run, max_batch=32, timeout_s=0.002, max_queue=512)
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

Overload: at most `max_queue` requests wait (those not yet in a running batch);
one more is refused at once with Overloaded, so an overload sheds load instead
of growing every caller's latency. infer(rows, wait_timeout_s) gives up with
WaitTimeout when the request has not started running by then; once its batch
runs, a request is always answered. A request's time in the queue and its
batch's input/run/output times fill the Timing passed to infer; each run's
reach `on_execution`, its size and run time `on_batch` (the server's
statistics and metrics).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from typing import Callable, List, Optional

import numpy as np

RunFunction = Callable[[np.ndarray], List[np.ndarray]]
BatchObserver = Callable[[int, float], None]
ExecutionObserver = Callable[["Timing"], None]


class Overloaded(RuntimeError):
    """The model's queue is full: refuse the request now (503, Retry-After)."""


class WaitTimeout(RuntimeError):
    """The request waited longer than it may for its batch to start (504)."""


class ShuttingDown(RuntimeError):
    """The batcher stopped before the request ran (503)."""


@dataclasses.dataclass
class Timing:
    """Where one request's time went, in seconds: waiting for its batch, and
    its batch's input assembly, run and output split; `batch_rows` the rows of
    that batch."""

    queue: float = 0.0
    compute_input: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0
    batch_rows: int = 0


@dataclasses.dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future
    enqueued: float
    timing: Optional[Timing]
    started: bool = False


class DynamicBatcher:
    def __init__(self, run: RunFunction, max_batch: int, timeout_s: float, name: str = "model",
                 on_batch: Optional[BatchObserver] = None, max_queue: int = 0,
                 on_execution: Optional[ExecutionObserver] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be at least 0, got {timeout_s}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be at least 0 (0: unbounded), got {max_queue}")
        self.run = run
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.name = name
        self.on_batch = on_batch  # called with (rows, seconds) after every run
        self.on_execution = on_execution  # called with each run's Timing (queue 0)
        self._queue: Optional[asyncio.Queue] = None
        self._carry: Optional[_Pending] = None
        self._taken: List[_Pending] = []  # the batch being gathered or run
        self._worker: Optional[asyncio.Task] = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._in_flight = 0  # callers inside infer()
        self._idle: Optional[asyncio.Event] = None  # set while _in_flight is 0

    @property
    def waiting(self) -> int:
        """Requests accepted and not yet in a running batch."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + (self._carry is not None)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"run-{self.name}")
        self._worker = asyncio.create_task(self._work(), name=f"batcher-{self.name}")

    async def drain(self) -> None:
        """Wait until every request accepted so far has been answered."""
        if self._idle is not None:
            await self._idle.wait()

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get ShuttingDown."""
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
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown("the server is shutting down"))
        self._carry, self._taken = None, []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def infer(self, rows: np.ndarray, wait_timeout_s: Optional[float] = None,
                    timing: Optional[Timing] = None) -> List[np.ndarray]:
        """Run the model on `rows` (batch dimension first), batched with whatever
        else is waiting; return this request's rows of every output, and fill
        `timing` in when given.

        Raises Overloaded when max_queue requests are already waiting, and
        WaitTimeout when the batch has not started within wait_timeout_s."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        if self.max_queue and self.waiting >= self.max_queue:
            raise Overloaded(f"model {self.name!r} has {self.waiting} requests waiting, its limit (--max-queue)")
        pending = _Pending(rows, asyncio.get_running_loop().create_future(), time.perf_counter(), timing)
        self._queue.put_nowait(pending)
        self._in_flight += 1
        self._idle.clear()
        try:
            if wait_timeout_s is not None:
                done, _ = await asyncio.wait({pending.future}, timeout=wait_timeout_s)
                if not done and not pending.started:
                    # Not yet running: drop it (the worker skips answered futures).
                    pending.future.set_exception(WaitTimeout(
                        f"model {self.name!r}: the request waited {wait_timeout_s * 1000:g} ms without being "
                        "run (--request-timeout-ms)"))
            return await pending.future
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _next(self, timeout: Optional[float]) -> Optional[_Pending]:
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

    async def _gather(self) -> List[_Pending]:
        batch = self._taken = [await self._next(None)]
        rows = len(batch[0].rows)
        deadline = time.monotonic() + self.timeout_s
        while rows < self.max_batch:
            item = await self._next(deadline - time.monotonic())
            if item is None:
                break
            if rows + len(item.rows) > self.max_batch:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            rows += len(item.rows)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            batch = [pending for pending in batch if not pending.future.done()]  # callers that gave up
            if not batch:
                continue
            started = time.perf_counter()
            for pending in batch:
                pending.started = True
            inputs = batch[0].rows if len(batch) == 1 else np.concatenate([pending.rows for pending in batch])
            assembled = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self.run, inputs)
            except Exception as error:  # noqa: BLE001 -- every caller of the batch gets the error
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            ran = time.perf_counter()
            if self.on_batch is not None:
                self.on_batch(len(inputs), ran - assembled)
            start, answers = 0, []
            for pending in batch:
                stop = start + len(pending.rows)
                answers.append([output[start:stop] for output in outputs])
                start = stop
            split = time.perf_counter()
            if self.on_execution is not None:
                self.on_execution(Timing(0.0, assembled - started, ran - assembled, split - ran, len(inputs)))
            for pending, answer in zip(batch, answers):
                if pending.timing is not None:
                    timing = pending.timing
                    timing.queue, timing.compute_input = started - pending.enqueued, assembled - started
                    timing.compute_infer, timing.compute_output, timing.batch_rows = ran - assembled, split - ran, len(inputs)
                if not pending.future.done():
                    pending.future.set_result(answer)
