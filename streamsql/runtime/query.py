"""A running streaming query: a worker thread driving micro-batches by its trigger.

The public surface follows Spark's StreamingQuery: status, last_progress,
recent_progress, stop(), await_termination(timeout), process_all_available().
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import duckdb

from streamsql.checkpoint.offset_log import Offsets
from streamsql.errors import Error, SourceUnavailable, StreamingQueryError, from_duckdb
from streamsql.runtime.microbatch import MicroBatchExecution
from streamsql.runtime.progress import QueryProgress, RunTotals, timestamp_of
from streamsql.runtime.triggers import Trigger, TriggerKind
from streamsql.secrets import redact

T = TypeVar("T")

IDLE_POLL_SECONDS = 0.1  # how often an idle query re-checks sources that cannot notify
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 0.5, 15.0  # backoff while a source is unavailable
STOP_GRACE_SECONDS = 2.0  # how long stop() waits for the batch in flight before interrupting
RECENT_PROGRESS = 100
MAX_CAUSES = 10  # links of an error chain an error message follows down to its root


class StreamingQuery:
    def __init__(
        self,
        execution: MicroBatchExecution,
        trigger: Trigger,
        on_progress: Callable[[StreamingQuery], None] | None = None,
        label: str | None = None,
    ) -> None:
        self.execution = execution
        # what its errors call it: "Sink clicks", or a push query by its SQL
        self.label = label or f"Sink {execution.name}"
        self.trigger = trigger
        self.on_progress = on_progress  # after each batch, and when the query terminates
        self.exception: BaseException | None = None
        self.failed_batch: int | None = None  # the batch in flight when it failed
        self.recent_progress: collections.deque[QueryProgress] = collections.deque(
            maxlen=RECENT_PROGRESS
        )
        self._state = "initializing"
        self.state_since = time.time()  # when the query entered its state (wall clock)
        self.totals = RunTotals()  # over this run's batches, for `streamsql run`'s summary
        self._stopping = threading.Event()
        self._terminated = threading.Event()
        self._wake = threading.Event()
        self._served = threading.Condition()
        self._requested = 0  # process_all_available() calls made
        self._served_upto = 0  # calls answered by a planning pass that found nothing to do
        self._errands: queue.SimpleQueue[tuple[Callable[[MicroBatchExecution], Any], Future]] = (
            queue.SimpleQueue()
        )
        self.unavailable_since: float | None = None  # when a source stopped answering
        self.unavailable_source: str | None = None  # which
        self._retries = 0
        self._thread = threading.Thread(
            target=self._loop, name=f"streamsql-{execution.name}", daemon=True
        )

    @property
    def name(self) -> str:
        return self.execution.name

    @property
    def id(self) -> str:
        """The query's id: the same across restarts from its checkpoint."""
        return self.execution.id

    @property
    def run_id(self) -> str:
        return self.execution.run_id

    def start(self) -> StreamingQuery:
        try:
            self.execution.start()
        except BaseException:
            self.execution.close()
            raise
        for source in self.execution.sources.values():
            source.subscribe(self._wake.set)
        self._thread.start()
        return self

    # -- Spark's StreamingQuery API ------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        return not self._terminated.is_set()

    @property
    def status(self) -> dict[str, Any]:
        """Spark's status, and since when the query is in it: "processing" (a batch in
        flight: `batch`), "waiting for next trigger" (an interval trigger between two
        batches), "waiting for data" (nothing new in the source), "stopped", "failed"."""
        return {
            "message": self._state,
            "is_active": self.is_active,
            "is_data_available": self._state == "processing",
            "source_available": self.unavailable_since is None,
            "trigger": str(self.trigger),
            "since": timestamp_of(round(self.state_since * 1e6)),
            "batch": self.execution.batch_id if self._state == "processing" else None,
            "error": self.error,
        }

    def _enter(self, state: str) -> None:
        """Take a new state, published (`on_progress`) when it changes, so that a batch
        stuck in flight, or a query gone idle after its last batch, shows as such."""
        if state == self._state:
            return
        self._state, self.state_since = state, time.time()
        if self.on_progress and state not in ("stopped", "failed"):  # _loop publishes those
            self.on_progress(self)

    @property
    def error(self) -> str | None:
        """Why the query stopped, if it failed: which query, in which batch, and the root
        cause of the error chain first (a DuckDB error, a callback's exception), then what
        the layers above it said."""
        if self.exception is None:
            return None
        chain = [self.exception]
        while chain[-1].__cause__ is not None and len(chain) < MAX_CAUSES:
            chain.append(chain[-1].__cause__)
        messages = [_message(error) for error in reversed(chain)]
        # what a layer added, not the cause again with a prefix
        said = [m for m in dict.fromkeys(messages[1:]) if m and messages[0] not in m]
        batch = "" if self.failed_batch is None else f" in batch {self.failed_batch}"
        return "\n".join([f"{self.label} failed{batch}: {messages[0]}", *said])

    @property
    def last_progress(self) -> QueryProgress | None:
        return self.recent_progress[-1] if self.recent_progress else None

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the batch in flight commits; a batch stuck reading a source that does
        not answer is given up after STOP_GRACE_SECONDS (it runs again on resume)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            began = time.monotonic()
            grace = STOP_GRACE_SECONDS if timeout is None else min(timeout, STOP_GRACE_SECONDS)
            self._thread.join(grace)
            if self._thread.is_alive():
                for source in self.execution.sources.values():
                    source.interrupt()
                left = None if timeout is None else max(0.0, timeout - (time.monotonic() - began))
                self._thread.join(left)

    def await_termination(self, timeout: float | None = None) -> bool:
        """True once the query has stopped; raises the error that stopped it, if any."""
        finished = self._terminated.wait(timeout)
        if self.exception is not None:
            raise StreamingQueryError(self.error) from self.exception
        return finished

    def process_all_available(self, timeout: float | None = None) -> None:
        """Block until everything available now has been processed and committed."""
        with self._served:
            self._requested += 1
            ticket = self._requested
            self._wake.set()
            done = self._served.wait_for(
                lambda: self._served_upto >= ticket or self._terminated.is_set(), timeout
            )
        if self.exception is not None:
            raise StreamingQueryError(self.error) from self.exception
        if not done:
            raise TimeoutError(f"{self.label} did not catch up within {timeout} seconds")

    def between_batches(self, errand: Callable[[MicroBatchExecution], T]) -> T:
        """Run `errand` on the query's own thread and cursor, between two batches (the one
        writer of its state and sink), and return its result."""
        future: Future[T] = Future()
        self._errands.put((errand, future))
        self._wake.set()
        while not future.done():
            if not self.is_active:
                raise StreamingQueryError(f"{self.label} stopped before it could do that")
            with contextlib.suppress(TimeoutError):
                return future.result(IDLE_POLL_SECONDS)
        return future.result()

    def _run_errands(self) -> None:
        while not self._errands.empty():
            errand, future = self._errands.get()
            try:
                future.set_result(errand(self.execution))
            except Exception as error:  # the caller gets it; the query goes on
                future.set_exception(error)

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        bound: Offsets | None = None
        bounded = not self.trigger.stops  # available_now and once: bound taken at the start
        pending = None  # a planned batch whose source could not be read yet
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._served:
                ticket = self._requested
            self._wake.clear()
            self._run_errands()
            try:
                if not bounded:
                    bound, bounded = self.execution.snapshot(), True
                batch = pending or self.execution.next_batch(bound, self.trigger.limited)
                if batch is not None:
                    pending = batch
                    self._enter("processing")
                    progress = self.execution.run(batch)
                    pending = None
            except SourceUnavailable as error:
                self._wait_for_source(error)
                continue
            self.unavailable_since = None
            self._retries = 0
            if batch is None:
                self._enter("waiting for data")
                with self._served:
                    self._served_upto = ticket
                    self._served.notify_all()
                if self.trigger.stops:
                    break
                if not self.trigger.interval:
                    # As fast as possible: wake on new data (or re-check soon).
                    self._wake.wait(IDLE_POLL_SECONDS)
                    continue
            else:
                self.recent_progress.append(progress)
                self.totals.add(progress)
                if self.on_progress:
                    self.on_progress(self)
                if self.trigger.kind is TriggerKind.ONCE:
                    break
            # A fixed interval: the next batch starts on the next tick, or at once when
            # this one overran it (as in Spark).
            deadline = started + self.trigger.interval
            if time.monotonic() < deadline and batch is not None:
                self._enter("waiting for next trigger")
            while not self._stopping.is_set() and time.monotonic() < deadline:
                self._wake.wait(deadline - time.monotonic())  # errands are run meanwhile
                self._wake.clear()
                self._run_errands()

    def _wait_for_source(self, error: SourceUnavailable) -> None:
        """Back off before trying the same step again, reporting why in status."""
        delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2**self._retries)
        self._retries += 1
        if self.unavailable_since is None:
            self.unavailable_since = time.time()
        self.unavailable_source = error.source
        self._enter(
            f"source {error.source} unavailable: {error} "
            f"(attempt {self._retries}, next in {delay:g} s)"
        )
        deadline = time.monotonic() + delay
        while not self._stopping.is_set() and time.monotonic() < deadline:
            self._wake.wait(deadline - time.monotonic())
            self._wake.clear()
            self._run_errands()

    def _loop(self) -> None:
        try:
            self._run()
        except duckdb.Error as error:  # as the PEP 249 error it is, saying in which batch
            self.failed_batch = self.execution.batch_id
            self.exception = from_duckdb(error, f"batch {self.failed_batch}")
            self.exception.__cause__ = error
            self._enter("failed")
        except BaseException as error:  # reported through status and await_termination
            self.exception, self.failed_batch = error, self.execution.batch_id
            self._enter("failed")
        else:
            self._enter("stopped")
        finally:
            self.totals.ended = time.monotonic()
            for source in self.execution.sources.values():
                source.unsubscribe(self._wake.set)
            self.execution.close()
            self._terminated.set()
            if self.on_progress:
                self.on_progress(self)
            with self._served:
                self._served.notify_all()


def _message(error: BaseException) -> str:
    """An error's text; for an exception of a callback or a library, its type too, which its
    message alone (`list index out of range`) would not say."""
    if isinstance(error, Error | duckdb.Error):
        return redact(str(error))
    return redact(f"{type(error).__name__}: {error}")
