"""``for_each_batch``, the loop under every migration command (no I/O): failures stay per batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from async_batchstate.migration import MigrationError
from async_batchstate.migration._walk import for_each_batch


class _Recorder:
    """Collects what ``on_done`` was given, by batch id."""

    def __init__(self) -> None:
        self.results: dict[str, object] = {}

    async def on_done(self, batch_id: str, result: object) -> None:
        self.results[batch_id] = result


async def _ids(names: Iterable[str], fail_after: int | None = None) -> AsyncIterator[str]:
    for index, name in enumerate(names):
        if fail_after is not None and index == fail_after:
            raise ConnectionError("listing failed")
        yield name


class _Interrupt(BaseException):
    """Stands in for KeyboardInterrupt: a BaseException that is not an Exception."""


async def test_one_failing_batch_is_reported_and_the_others_run() -> None:
    """The batch whose work raises reaches on_done with its exception; every other one runs."""
    recorder = _Recorder()

    async def work(batch_id: str) -> str:
        if batch_id == "b2":
            raise RuntimeError("boom")
        return batch_id.upper()

    await for_each_batch(
        _ids(f"b{i}" for i in range(6)), work, concurrency=2, on_done=recorder.on_done
    )

    failed = recorder.results.pop("b2")
    assert ["RuntimeError", "boom"] == [type(failed).__name__, str(failed)]
    assert {f"b{i}": f"B{i}" for i in (0, 1, 3, 4, 5)} == recorder.results


async def test_listing_error_is_raised_unwrapped_after_started_batches_finish() -> None:
    """An error from the id iterator is raised as itself (no ExceptionGroup), after the
    batches already started have finished and reached on_done."""
    recorder = _Recorder()
    release = asyncio.Event()

    async def work(batch_id: str) -> str:
        await release.wait()
        return batch_id

    async def ids() -> AsyncIterator[str]:
        async for batch_id in _ids(["b0", "b1", "b2"], fail_after=2):
            yield batch_id
            if batch_id == "b1":
                release.set()

    with pytest.raises(ConnectionError, match="listing failed"):
        await for_each_batch(ids(), work, concurrency=4, on_done=recorder.on_done)

    assert {"b0": "b0", "b1": "b1"} == recorder.results


async def test_on_done_error_is_raised_unwrapped_and_stops_dispatching() -> None:
    """An on_done that raises (a bug, or a progress callback) ends the run with that error,
    unwrapped, without hanging, and no batch is started after it."""
    started: list[str] = []

    async def work(batch_id: str) -> str:
        started.append(batch_id)
        return batch_id

    async def on_done(batch_id: str, result: object) -> None:
        raise ValueError(f"on_done failed on {batch_id}")

    with pytest.raises(ValueError, match="on_done failed on b0"):
        await for_each_batch(
            _ids(f"b{i}" for i in range(100)), work, concurrency=1, on_done=on_done
        )

    assert ["b0"] == started


async def test_base_exception_from_work_is_not_recorded_and_propagates() -> None:
    """A BaseException that is not an Exception (like KeyboardInterrupt) is not swallowed
    as a batch failure: on_done never sees it and it stops the run."""
    recorder = _Recorder()

    async def work(batch_id: str) -> str:
        if batch_id == "b1":
            raise _Interrupt
        return batch_id

    with pytest.raises(BaseExceptionGroup) as caught:
        await for_each_batch(_ids(["b0", "b1"]), work, concurrency=1, on_done=recorder.on_done)

    assert caught.group_contains(_Interrupt)
    assert {"b0": "b0"} == recorder.results


async def test_cancelling_the_run_cancels_batches_in_flight() -> None:
    """Cancelling the caller cancels the work in flight; it is not reported as a failure."""
    recorder = _Recorder()
    running = asyncio.Event()
    cancelled: list[str] = []

    async def work(batch_id: str) -> str:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(batch_id)
            raise
        return batch_id

    run = asyncio.create_task(
        for_each_batch(_ids(["b0"]), work, concurrency=1, on_done=recorder.on_done)
    )
    await running.wait()
    run.cancel()

    with pytest.raises(asyncio.CancelledError):
        await run
    assert (["b0"], {}) == (cancelled, recorder.results)


async def test_at_most_concurrency_batches_run_at_once() -> None:
    """With concurrency 3 and 20 batches, no more than 3 are in flight at any moment."""
    recorder = _Recorder()
    in_flight = 0
    peak = 0

    async def work(batch_id: str) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)  # yield to the loop: let the others start if they may
        in_flight -= 1
        return batch_id

    await for_each_batch(
        _ids(f"b{i}" for i in range(20)), work, concurrency=3, on_done=recorder.on_done
    )

    assert (3, 20) == (peak, len(recorder.results))


async def test_concurrency_below_one_is_refused() -> None:
    """concurrency 0 raises MigrationError before any id is read."""
    recorder = _Recorder()

    async def work(batch_id: str) -> str:
        return batch_id

    with pytest.raises(MigrationError, match="concurrency"):
        await for_each_batch(_ids(["b0"]), work, concurrency=0, on_done=recorder.on_done)
