"""export.serve.batching.DynamicBatcher on its own (no server, no onnxruntime): every
caller gets exactly its rows back, batches respect max_batch, requests are never
split, errors reach every caller of the batch, max_batch 1 turns it off, a
full queue refuses at once and a request that waits too long times out."""
import asyncio
import threading
import time

import numpy as np
import pytest

from export.serve.batching import DynamicBatcher, Overloaded, Timing, WaitTimeout


class RecordingModel:
    """A 'model' whose outputs identify their input rows: out0 = 2x, out1 = row sums."""

    def __init__(self, fail_on=None):
        self.batches = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch):
        self.gate.wait(5)
        self.batches.append(len(batch))
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise ValueError("poisoned row")
        return [batch * 2, batch.reshape(len(batch), -1).sum(1)]


def rows(first_value, count):
    return np.arange(first_value, first_value + count, dtype=np.float32).reshape(count, 1).repeat(3, 1)


async def _with_batcher(model, coroutine, max_batch=8, timeout_s=0.05):
    observed = []
    batcher = DynamicBatcher(model, max_batch, timeout_s, on_batch=lambda n, s: observed.append(n))
    await batcher.start()
    try:
        return await coroutine(batcher), observed
    finally:
        await batcher.stop()


def test_concurrent_requests_get_their_own_rows():
    model = RecordingModel()
    sizes = [1, 3, 2, 1, 4, 1, 2, 5, 1, 1]

    async def send_all(batcher):
        requests = [rows(100 * i, n) for i, n in enumerate(sizes)]
        answers = await asyncio.gather(*(batcher.infer(r) for r in requests))
        return requests, answers

    (requests, answers), observed = asyncio.run(_with_batcher(model, send_all))
    for request, (doubled, sums) in zip(requests, answers):
        np.testing.assert_array_equal(doubled, request * 2)
        np.testing.assert_array_equal(sums, request.sum(1))
    assert sum(model.batches) == sum(sizes)
    assert max(model.batches) <= 8
    assert max(model.batches) > 1, "concurrent requests were never batched"
    assert observed == model.batches


def test_a_request_is_never_split_and_an_oversized_one_runs_alone():
    model = RecordingModel()

    async def send(batcher):
        return await asyncio.gather(batcher.infer(rows(0, 5)), batcher.infer(rows(10, 5)),
                                    batcher.infer(rows(20, 12)))

    answers, _ = asyncio.run(_with_batcher(model, send))
    assert [len(a[0]) for a in answers] == [5, 5, 12]
    # 5 + 5 > 8: two runs of 5; 12 > max_batch: a run of its own.
    assert sorted(model.batches) == [5, 5, 12]


def test_waits_at_most_the_timeout_for_company():
    model = RecordingModel()

    async def send(batcher):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.infer(rows(0, 1))
        return loop.time() - started

    elapsed, _ = asyncio.run(_with_batcher(model, send, timeout_s=0.2))
    assert 0.15 <= elapsed < 2.0
    assert model.batches == [1]


def test_requests_arriving_during_a_run_form_the_next_batch():
    model = RecordingModel()

    async def send(batcher):
        model.gate.clear()  # hold the first run while the others queue up
        first = asyncio.create_task(batcher.infer(rows(0, 1)))
        await asyncio.sleep(0.05)
        others = [asyncio.create_task(batcher.infer(rows(10 * i, 1))) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(first, *others)

    _, _ = asyncio.run(_with_batcher(model, send, timeout_s=0.0))
    assert model.batches == [1, 6]


def test_max_batch_one_runs_every_request_alone():
    model = RecordingModel()

    async def send(batcher):
        return await asyncio.gather(*(batcher.infer(rows(i, 1 + i % 3)) for i in range(9)))

    asyncio.run(_with_batcher(model, send, max_batch=1))
    assert model.batches == [1 + i % 3 for i in range(9)]


def test_a_failed_run_fails_its_callers_and_the_batcher_goes_on():
    model = RecordingModel(fail_on=-1.0)

    async def send(batcher):
        poisoned = np.full((1, 3), -1.0, np.float32)
        results = await asyncio.gather(batcher.infer(poisoned), batcher.infer(rows(0, 1)), return_exceptions=True)
        after = await batcher.infer(rows(5, 2))
        return results, after

    (results, after), _ = asyncio.run(_with_batcher(model, send))
    assert all(isinstance(r, ValueError) for r in results), results
    np.testing.assert_array_equal(after[0], rows(5, 2) * 2)


def test_stop_fails_waiting_requests_and_refuses_new_ones():
    model = RecordingModel()

    async def scenario():
        batcher = DynamicBatcher(model, 8, 10.0)
        await batcher.start()
        waiting = asyncio.create_task(batcher.infer(rows(0, 1)))
        await asyncio.sleep(0.05)
        await batcher.stop()
        with pytest.raises(RuntimeError, match="shutting down"):
            await waiting
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.infer(rows(0, 1))

    asyncio.run(scenario())


@pytest.mark.parametrize("max_batch, timeout_s", [(0, 0.01), (4, -1.0)])
def test_rejects_bad_settings(max_batch, timeout_s):
    with pytest.raises(ValueError):
        DynamicBatcher(RecordingModel(), max_batch, timeout_s)


def test_a_full_queue_refuses_at_once_and_the_accepted_are_all_answered():
    """max_queue requests may wait while a batch runs; one more is refused at
    once with Overloaded; every accepted request is answered."""
    model = RecordingModel()
    model.gate.clear()  # the first run blocks until the gate opens

    async def scenario():
        batcher = DynamicBatcher(model, 1, 0.0, max_queue=3)
        await batcher.start()
        try:
            running = asyncio.create_task(batcher.infer(rows(0, 1)))
            await asyncio.sleep(0.05)  # taken by the worker: running, not waiting
            queued = [asyncio.create_task(batcher.infer(rows(10 * i, 1))) for i in range(1, 4)]
            await asyncio.sleep(0.05)
            assert batcher.waiting == 3
            started = time.perf_counter()
            with pytest.raises(Overloaded, match="3 requests waiting"):
                await batcher.infer(rows(99, 1))
            refused_in = time.perf_counter() - started
            model.gate.set()
            answers = await asyncio.gather(running, *queued)
            after = await batcher.infer(rows(7, 1))  # room again
            return refused_in, answers, after
        finally:
            await batcher.stop()

    refused_in, answers, after = asyncio.run(scenario())
    assert refused_in < 0.5  # at once, not after the blocked run
    for i, (doubled, _) in enumerate(answers):
        np.testing.assert_array_equal(doubled, rows(10 * i, 1) * 2)
    np.testing.assert_array_equal(after[0], rows(7, 1) * 2)
    assert model.batches == [1] * 5  # the refused request never ran


def test_a_request_that_waits_too_long_times_out_and_never_runs():
    model = RecordingModel()
    model.gate.clear()

    async def scenario():
        batcher = DynamicBatcher(model, 1, 0.0)
        await batcher.start()
        try:
            timing = Timing()
            running = asyncio.create_task(batcher.infer(rows(0, 1), 0.05, timing))  # runs at once: no timeout
            await asyncio.sleep(0.02)
            with pytest.raises(WaitTimeout, match="waited 50 ms"):
                await batcher.infer(rows(50, 1), 0.05)
            await asyncio.sleep(0.1)  # the running request outlives its timeout: still answered
            model.gate.set()
            return await running, timing
        finally:
            await batcher.stop()

    (doubled, _), timing = asyncio.run(scenario())
    np.testing.assert_array_equal(doubled, rows(0, 1) * 2)
    assert model.batches == [1]  # the timed-out request was dropped, not run
    assert timing.batch_rows == 1 and timing.compute_infer >= 0.1 and timing.queue < 0.05


def test_execution_timings_add_up():
    model = RecordingModel()
    executions = []

    async def send(batcher):
        timings = [Timing() for _ in range(6)]
        await asyncio.gather(*(batcher.infer(rows(i, 2), None, t) for i, t in enumerate(timings)))
        return timings

    async def scenario():
        batcher = DynamicBatcher(model, 4, 0.01, on_execution=executions.append)
        await batcher.start()
        try:
            return await send(batcher)
        finally:
            await batcher.stop()

    timings = asyncio.run(scenario())
    assert [e.batch_rows for e in executions] == model.batches and sum(model.batches) == 12
    assert sorted({t.batch_rows for t in timings}) == sorted(set(model.batches))
    assert all(t.queue >= 0 and t.compute_infer > 0 for t in timings + executions)
