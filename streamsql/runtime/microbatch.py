"""One query's micro-batch protocol (Spark's MicroBatchExecution), on one DuckDB cursor.

Per batch N:
  1. plan the input range of every source the query reads and append them to the offset log
     (its own transaction), or take the logged ranges of a batch that was planned but never
     committed;
  2. read and decode exactly those ranges;
  3. in one transaction: run the batch's SQL steps with W_N and L_N = W_(N-1), write the
     sink, the dead letters and the commit record (with W_(N+1)); commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from streamsql.catalog.definitions import INTERNAL_PREFIX
from streamsql.checkpoint.commit_log import CommitLog, CommitRecord
from streamsql.checkpoint.dead_letters import WRITE_LOCK, DeadLetters
from streamsql.checkpoint.fingerprint import fingerprint
from streamsql.checkpoint.metadata import QueryMetadata
from streamsql.checkpoint.offset_log import OffsetLog, Offsets, PlannedBatch
from streamsql.checkpoint.schema import forget_statements
from streamsql.checkpoint.transactions import (
    KILL_IN_BATCH_AT,
    atomically,
    kill_point,
    transaction,
)
from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.connectors.source import Origins, Source, SourceBatch
from streamsql.errors import (
    DataError,
    NotSupportedError,
    ProgrammingError,
    SourceUnavailable,
    from_duckdb,
)
from streamsql.incremental.compiler import (
    MAX_EVENT_US,
    MIN_EVENT_US,
    BatchProgram,
    Effect,
    Fetch,
    Statistics,
    Step,
)
from streamsql.plan.plan import StreamingPlan
from streamsql.quoting import quote
from streamsql.runtime.operator import StatefulOperator, chain_of
from streamsql.runtime.progress import QueryProgress, timestamp_of
from streamsql.runtime.watermark import WatermarkTracker

T = TypeVar("T")

# Appended partials are combined once they outnumber the rows of the last compaction and
# this many: the state stays within twice its compacted size, at a constant cost per row.
COMPACTION_MIN_ROWS = 50_000

# The rejected rows, each written as JSON by naming the relation: a name no column can have.
REJECTED_VIEW = f"{INTERNAL_PREFIX}rejected"

# The offset and commit logs keep the last this many batches (Spark's minBatchesToRetain).
RETAINED_BATCHES = 100


@dataclass
class BatchStats:
    input_rows: int = 0
    null_event_times: int = 0
    late_rows: int = 0
    max_event_us: int | None = None
    min_time_us: int | None = None  # earliest accepted window time
    bad_times: int = 0  # rows whose event or window time is out of range (none are counted)

    def add(self, other: BatchStats) -> None:
        """Another source's figures (each counts its own rows; window figures come from
        one of them, or from the relation over them)."""
        self.input_rows += other.input_rows
        self.null_event_times += other.null_event_times
        self.late_rows += other.late_rows
        if self.min_time_us is None or (
            other.min_time_us is not None and other.min_time_us < self.min_time_us
        ):
            self.min_time_us = other.min_time_us


class MicroBatchExecution:
    """`programs`: one per operator of the plan's chain, in its order."""

    def __init__(
        self,
        name: str,
        cursor: duckdb.DuckDBPyConnection,
        plan: StreamingPlan,
        programs: list[BatchProgram],
        sources: list[Source],
        sink: Sink,
    ) -> None:
        self.name = name
        self.id = ""  # the query's id, read from the checkpoint at start
        self.run_id = str(uuid.uuid4())  # this run's
        self.plan = plan
        self.operators = chain_of(plan, programs)
        self.reader = self.operators[0]  # the operator that reads the sources
        self.sources = {source.name: source for source in sources}  # in the plan's order
        self.sink = sink
        self.cursor = cursor  # this query's own connection to the engine database, in UTC
        self.metadata = QueryMetadata(self.cursor, name)
        self.offset_log = OffsetLog(self.cursor, name, list(self.sources))
        self.commit_log = CommitLog(self.cursor, name, list(self.sources))
        self.dead_letter_stores = {
            s.name: DeadLetters(self.cursor, name, s.name, s.dead_letter_retention) for s in sources
        }
        self.watermarks = WatermarkTracker(self.reader.plan)
        self.batch_id = 0
        self.committed_end: Offsets = {}
        self.watermark: int | None = None  # W for the next batch
        self.late_threshold: int | None = None  # L for the next batch (W of the last one)
        self.max_events: dict[str, int | None] = dict.fromkeys(self.sources)
        self.output: OutputSchema | None = None
        self.dead_letters = 0  # kept in the dead-letter table, over all batches
        self.planning_ms = 0.0  # the batch in flight's planning and offset-log write
        self.last_started: float | None = None  # when the previous batch started
        self.recovered = False  # a planned, uncommitted batch can only exist at start
        self._registered: set[str] = set()

    # -- start and recovery ------------------------------------------------------------------

    def start(self) -> None:
        """Claim the checkpoint, create state, resume from the last commit, open the sink.
        A query that fails to start on a new checkpoint leaves nothing behind."""
        fresh = self.metadata.is_new()
        self.id = self.metadata.claim(fingerprint(self.plan))
        try:
            self._resume()
            self.sink.open(self.cursor, self.output, self.id)
        except duckdb.Error as error:
            self._discard(fresh)
            raise from_duckdb(error, f"Sink {self.sink.name}") from None
        except BaseException:
            self._discard(fresh)
            raise

    def _discard(self, fresh: bool) -> None:
        if fresh:
            statements = forget_statements(self.name)
            statements += [
                (f"DROP TABLE IF EXISTS {op.state_table}", [])
                for op in self.operators
                if op.state_table
            ]
            atomically(self.cursor, statements)

    def _resume(self) -> None:
        for scan in self.reader.plan.scans:
            self.cursor.register(scan.view, self.sources[scan.name].schema.empty_table())
        last = self.commit_log.latest()
        if self.reader.plan.has_watermark:
            self.watermark = self.late_threshold = 0
        if last is None:
            self.committed_end = self.offset_log.first_start()
            if self.committed_end is None:  # a new query: its start is part of its checkpoint
                self.committed_end = {n: s.initial_offset() for n, s in self.sources.items()}
                self.offset_log.add_initial(self.committed_end)
        else:
            done = self.offset_log.get(last.batch_id)
            self.batch_id = last.batch_id + 1
            self.committed_end = done.end
            self.watermark = last.next_watermark_us
            self.late_threshold = done.watermark_us
            self.max_events.update(last.max_event_by_source)
        types: list[str] = []
        for op in self.operators:
            if op.index:  # it reads what the operator before emits, typed by its dry run
                below = self.operators[op.index - 1].empty_output
                self.cursor.register(op.plan.scans[0].view, below)
            values = self._values(op, 0, 0, self.batch_id)  # before any batch: the epoch
            for step in op.program.setup:
                params = {name: values[name] for name in step.parameters}
                self.cursor.execute(step.sql, params or None).fetchall()
            if op.state_table:
                op.state_rows = op.compacted_rows = self._scalar(op.program.state_rows_sql)
                if op.plan.window:
                    op.earliest_end = self._scalar(op.program.earliest_end_sql)
                self._create_state_views(op)
            types = self._dry_run(op, values)
        ends = self.offset_log.planned_ends()
        for name, source in self.sources.items():
            source.recover([end[name] for end in ends])
        for store in self.dead_letter_stores.values():
            self.dead_letters = store.resume()  # the query's count, of all its sources
        plan = self.plan
        self.output = OutputSchema(
            tuple(plan.output_names),
            tuple(types),
            plan.emit,
            plan.stateful,
            tuple(plan.key_names),
            plan.keys_complete,
        )

    def _create_state_views(self, op: StatefulOperator) -> None:
        """Views over the Arrow results of DML ... RETURNING that restore the state's types.

        Arrow has no HUGEINT (it comes back a DECIMAL) and no ENUM; read through these views,
        the returned rows have exactly the types of the state table again.
        """
        state = op.state_table
        columns = self.cursor.execute(f"DESCRIBE {state}").fetchall()
        for step in op.program.steps:
            if step.fetch is not Fetch.VIEW:
                continue
            action = "NULL::VARCHAR AS __action, " if step.effect is Effect.MERGES else ""
            self.cursor.register(
                f"{step.view}_rows",
                self.cursor.sql(f"SELECT {action}* FROM {state} LIMIT 0").to_arrow_table(),
            )
            casts = [
                f"CAST({quote(name)} AS {type_}) AS {quote(name)}" for name, type_, *_ in columns
            ]
            if action:
                casts.insert(0, "__action")
            self.cursor.execute(
                f"CREATE OR REPLACE TEMP VIEW {step.view} AS "
                f"SELECT {', '.join(casts)} FROM {step.view}_rows"
            ).fetchall()

    def _scalar(self, sql: str) -> Any:
        return self.cursor.execute(sql).fetchall()[0][0]

    def _dry_run(self, op: StatefulOperator, values: dict[str, Any]) -> list[str]:
        """Run an operator's batch over no rows, in a transaction rolled back, to type what
        it emits (the query's output, or the next operator's input): its types, and its
        rows over no input as `op.empty_output`."""
        types: list[str] = []
        self.cursor.execute("BEGIN TRANSACTION").fetchall()
        try:
            for step in op.program.steps:
                params = {p: values[p] for p in step.parameters} or None
                if step.fetch is Fetch.EMIT:
                    described = self.cursor.execute(f"DESCRIBE {step.sql}", params).fetchall()
                    types = [row[1] for row in described]
                    op.empty_output = self._run_step(step, params)
                    break
                self._run_step(step, params)
        except duckdb.Error as error:
            raise ProgrammingError(
                f"Query {self.name} does not run on DuckDB: {str(error).splitlines()[0]}"
            ) from None
        except pa.ArrowException as error:  # a type Arrow cannot carry (lists 64 deep, ...)
            raise NotSupportedError(
                f"Query {self.name} returns rows that Arrow cannot carry: {error}"
            ) from None
        finally:
            self.cursor.execute("ROLLBACK").fetchall()
        return types

    @property
    def last_committed(self) -> int | None:
        """The last batch in the commit log (restored from the checkpoint at start)."""
        return self.batch_id - 1 if self.batch_id else None

    def by_source(self, figure: Callable[[Source, Any], Any]) -> Any:
        """`figure(source, committed offset)` of the query's one source, or of each of its
        sources by name."""
        figures = {n: figure(s, self.committed_end.get(n)) for n, s in self.sources.items()}
        return next(iter(figures.values())) if len(figures) == 1 else figures

    def position(self) -> dict[str, Any]:
        """Where the query stands, as `streamsql status` shows it."""
        return {
            "sink": self.name,
            "last_batch": self.last_committed,
            "committed_offsets": self.by_source(lambda s, end: s.public_offset(end)),
            "lag": self.by_source(lambda s, end: s.lag_by_partition(end) or s.backlog(end)),
            "watermark": timestamp_of(self.watermark),
            "state_rows": self.state_rows if self.stateful else None,
            "dead_letters": self.dead_letters,
        }

    # -- one batch -------------------------------------------------------------------------

    @property
    def stateful(self) -> bool:
        return any(op.state_table for op in self.operators)

    @property
    def state_rows(self) -> int:
        """The rows in the state of every operator."""
        return sum(op.state_rows for op in self.operators)

    @property
    def needs_no_data_batch(self) -> bool:
        """Some operator asks for a batch without data (Spark's shouldRunAnotherBatch)."""
        return any(
            op.should_run_another_batch(self.watermark, self.late_threshold)
            for op in self.operators
        )

    def snapshot(self) -> Offsets:
        """Bounds covering everything each source has now (trigger available_now)."""
        return {name: source.snapshot() for name, source in self.sources.items()}

    def next_batch(self, bound: Offsets | None, limited: bool = True) -> PlannedBatch | None:
        """The batch to run next: a logged, uncommitted one, a new one, or None (idle).
        Each source plans its own range (nothing, when it has nothing new); `limited`: the
        sources' per-trigger limits apply."""
        if not self.recovered:
            self.recovered = True
            logged = self.offset_log.get(self.batch_id)
            if logged is not None:
                return logged
        began = time.perf_counter()
        ends = {
            name: self._ask(
                name, source.plan_batch, self.committed_end[name], (bound or {}).get(name), limited
            )
            for name, source in self.sources.items()
        }
        if all(end is None for end in ends.values()) and not self.needs_no_data_batch:
            return None
        end = {n: self.committed_end[n] if e is None else e for n, e in ends.items()}
        batch = PlannedBatch(
            self.batch_id, self.committed_end, end, self.watermark, self.late_threshold
        )
        self.offset_log.add(batch)
        self.planning_ms = _ms_since(began)
        return batch

    def run(self, batch: PlannedBatch) -> QueryProgress:
        timings: dict[str, float] = {"plan": self.planning_ms}
        self.planning_ms = 0.0
        began = time.perf_counter()
        for op in self.operators:
            op.begin_batch()
        inputs = {
            name: source.empty()
            if batch.end[name] == batch.start[name]
            else self._ask(name, source.read, batch.start[name], batch.end[name])
            for name, source in self.sources.items()
        }
        timings["read"] = _ms_since(began)
        mark = time.perf_counter()
        kept = [(op.state_rows, op.earliest_end) for op in self.operators]
        retired = self._retired_through(batch.batch_id)
        try:
            values = self._values(
                self.reader, batch.late_threshold_us, batch.watermark_us, batch.batch_id
            )
            stats, inputs, per_source = self._measure(inputs, values)
            self.reader.late_rows = stats.late_rows
            dead = {name: self._dead_letters(data, name) for name, data in inputs.items()}
            stored = {
                name: rows if self.sources[name].on_error == "dead_letter" else rows.slice(0, 0)
                for name, rows in dead.items()
            }
            with self._dead_letter_lock(stored), transaction(self.cursor):
                emitted = self._run_operators(batch, stats, values)
                timings["execute"] = _ms_since(mark)
                mark = time.perf_counter()
                expired = sum(
                    self.dead_letter_stores[name].store(batch.batch_id, rows)
                    for name, rows in stored.items()
                )
                max_events = dict(self.max_events)
                for name, figures in per_source.items():
                    if figures.max_event_us is not None:
                        truncated = figures.max_event_us // 1000 * 1000  # Spark keeps ms
                        known = max_events[name]
                        max_events[name] = truncated if known is None else max(known, truncated)
                next_watermark = self.watermarks.advance(batch.watermark_us, max_events)
                self.sink.write(self.cursor, batch.batch_id, emitted)
                timings["sink"] = _ms_since(mark)
                mark = time.perf_counter()
                self.commit_log.add(
                    CommitRecord(
                        batch.batch_id,
                        next_watermark,
                        max_events,
                        stats.input_rows,
                        emitted.num_rows,
                    )
                )
                if retired is not None:
                    self.commit_log.forget_emitted_windows(retired)
        except BaseException:
            for op, (state_rows, earliest_end) in zip(self.operators, kept, strict=True):
                op.state_rows, op.earliest_end = state_rows, earliest_end
            raise
        finally:
            for view in self._registered:
                self.cursor.unregister(view)
            self._registered.clear()
        self.sink.committed(self.cursor, batch.batch_id)
        for name, source in self.sources.items():
            source.committed(batch.end[name])
        if retired is not None:
            with transaction(self.cursor):  # Spark's purge of both logs, here in one
                self.offset_log.purge(retired, self._merge_ends)
                self.commit_log.purge(retired)
        timings["commit"] = _ms_since(mark)
        timings["total"] = round(timings["plan"] + _ms_since(began), 3)
        self.batch_id = batch.batch_id + 1
        self.committed_end = batch.end
        self.late_threshold = batch.watermark_us
        self.watermark = next_watermark
        self.max_events = max_events
        self.dead_letters += sum(rows.num_rows for rows in stored.values()) - expired
        seconds = max(timings["total"] / 1000, 1e-9)
        since_last = began - self.last_started if self.last_started is not None else seconds
        self.last_started = began
        return QueryProgress(
            id=self.id,
            run_id=self.run_id,
            name=self.name,
            batch_id=batch.batch_id,
            timestamp=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            num_input_rows=stats.input_rows,
            num_late_rows=sum(op.late_rows for op in self.operators),
            num_null_event_times=stats.null_event_times,
            num_dead_letters=sum(rows.num_rows for rows in dead.values()),
            num_output_rows=emitted.num_rows,
            watermark=timestamp_of(batch.watermark_us),
            late_threshold=timestamp_of(batch.late_threshold_us),
            next_watermark=timestamp_of(next_watermark),
            state_rows=self.state_rows,
            duration_ms=timings,
            input_rows_per_second=stats.input_rows / max(since_last, 1e-9),
            processed_rows_per_second=stats.input_rows / seconds,
            no_data_batch=batch.no_data,
            state_operators=self._state_operators(),
            sources=[
                {
                    "source": name,
                    "connector": source.definition.connector,
                    "start_offset": source.public_offset(batch.start[name]),
                    "end_offset": source.public_offset(batch.end[name]),
                    "num_input_rows": per_source[name].input_rows,
                    "lag": source.backlog(batch.end[name]),
                    "lag_by_partition": source.lag_by_partition(batch.end[name]),
                    "watermark": timestamp_of(self._own_watermark(name)),
                    **source.metrics(),
                    "warnings": source.take_warnings(),
                }
                for name, source in self.sources.items()
            ],
            sink={
                "name": self.sink.name,
                "connector": type(self.sink).__name__,
                "num_output_rows": emitted.num_rows,
            },
        )

    @staticmethod
    def _ask(name: str, call: Callable[..., T], *args: Any) -> T:
        """A source's answer; if it cannot be reached, the error says which source."""
        try:
            return call(*args)
        except SourceUnavailable as error:
            error.source = name
            raise

    def _merge_ends(self, name: str, ends: list[Any]) -> Any:
        return self.sources[name].merge_ends(ends)

    def _own_watermark(self, name: str) -> int | None:
        """A source's own watermark after the last batch (None: it has none)."""
        if name not in self.watermarks.delays:
            return None
        return max(0, self.watermarks.own(name, self.max_events))

    def _dead_letter_lock(self, stored: dict[str, pa.Table]) -> Any:
        """What the batch holds around its transaction: the dead-letter write lock when any
        source's store writes (each decides once, for its `store`)."""
        locks = [self.dead_letter_stores[n].lock_for(rows) for n, rows in stored.items()]
        return WRITE_LOCK if any(lock is WRITE_LOCK for lock in locks) else contextlib.nullcontext()

    @staticmethod
    def _retired_through(batch_id: int) -> int | None:
        """The last batch the logs drop once `batch_id` commits (every RETAINED_BATCHES
        batches), or None."""
        if batch_id >= RETAINED_BATCHES and batch_id % RETAINED_BATCHES == 0:
            return batch_id - RETAINED_BATCHES
        return None

    def _state_operators(self) -> list[dict[str, Any]]:
        """Spark's stateOperators: the state store of each stateful operator."""
        return [op.metrics() for op in self.operators if op.state_table]

    def _values(
        self, op: StatefulOperator, late: int | None, watermark: int | None, batch_id: int
    ) -> dict[str, Any]:
        """The parameters of `op`'s statements in a batch run under the query's late
        threshold and watermark."""
        return {
            **self.plan.parameters,
            **op.values(late, watermark),
            "query": self.metadata.query,
            "batch_id": batch_id,
        }

    def _measure(
        self, inputs: dict[str, SourceBatch], values: dict[str, Any]
    ) -> tuple[BatchStats, dict[str, SourceBatch], dict[str, BatchStats]]:
        """The batch's figures (and each source's), and the inputs with the rows whose times
        are out of range moved to their dead letters (before the batch's transaction, which
        then knows every dead letter it stores)."""
        total = BatchStats()
        per_source = {}
        for scan, statistics in zip(
            self.reader.plan.scans, self.reader.program.statistics, strict=True
        ):
            name, source = scan.view, scan.name
            data = inputs[source]
            self._register(name, data.rows)
            stats = self._statistics(statistics, data.rows, values)
            if stats.bad_times:
                data = inputs[source] = self._reject_bad_times(statistics, data, source)
                self._register(name, data.rows)
                stats = self._statistics(statistics, data.rows, values)
            per_source[source] = stats
            total.add(stats)
        self._window_figures(self.reader, total, values)
        return total, inputs, per_source

    def _window_figures(self, op: StatefulOperator, stats: BatchStats, values: dict) -> None:
        """Over the relation an operator reads (not one input as it is): the rows whose
        window time is NULL, the late rows, the earliest accepted window time."""
        step = op.program.window_statistics
        if step is not None:
            figures = self._run_step(step, {p: values[p] for p in step.parameters} or None)
            stats.null_event_times, stats.late_rows, stats.min_time_us = figures

    def _run_operators(
        self, batch: PlannedBatch, stats: BatchStats, values: dict[str, Any]
    ) -> pa.Table:
        """Run each operator over the rows the one before emitted; returns the last one's."""
        rows = self._execute_steps(self.reader, stats, values)
        for op in self.operators[1:]:
            values = self._values(op, batch.late_threshold_us, batch.watermark_us, batch.batch_id)
            self._register(op.plan.scans[0].view, rows)
            figures = self._statistics(op.program.statistics[0], rows, values)
            self._window_figures(op, figures, values)
            op.late_rows = figures.late_rows
            rows = self._execute_steps(op, figures, values)
        return rows

    def _execute_steps(
        self, op: StatefulOperator, stats: BatchStats, values: dict[str, Any]
    ) -> pa.Table:
        """Run an operator's steps over its measured input; returns the rows it emits."""
        window = op.plan.window
        if window and stats.min_time_us is not None:
            opened = window.first_end(stats.min_time_us)
            op.earliest_end = opened if op.earliest_end is None else min(op.earliest_end, opened)
        watermark = values["watermark"]
        closes = (
            op.earliest_end is not None and watermark is not None and op.earliest_end <= watermark
        )
        sizes: dict[str, int] = {}
        emitted: pa.Table | None = None
        for step in op.program.steps:
            if (step.closes and not closes) or (
                step.unless_empty and not sizes.get(step.unless_empty)
            ):
                continue
            result = self._apply(op, step, values)
            if step.view:
                sizes[step.view] = result.num_rows
            if step.fetch is Fetch.EMIT:
                emitted = result
        if closes:
            op.earliest_end = self._scalar(op.program.earliest_end_sql)
        if op.program.compaction and op.state_rows - op.compacted_rows > max(
            COMPACTION_MIN_ROWS, op.compacted_rows
        ):
            for step in op.program.compaction:
                self._apply(op, step, values, churn=False)
            op.compacted_rows = op.state_rows
        return op.empty_output if emitted is None else emitted

    def _reject_bad_times(
        self, statistics: Statistics, data: SourceBatch, source: str
    ) -> SourceBatch:
        """Rows whose event or window time the engine cannot compute with become dead
        letters, where they came from, before they reach the watermark or any window."""
        errors = self.cursor.sql(statistics.bad_times).to_arrow_table()["__error"]
        errors = errors.combine_chunks()
        bad = pc.is_valid(errors)
        origins = data.origins
        if origins is None:  # a source that cannot say: the row's position in the batch
            origins = Origins.positional(data.rows.num_rows, source, 0)
        found = origins.take(bad)
        rejected = data.rows.filter(bad)
        self._register(REJECTED_VIEW, rejected)
        written = (
            self.cursor.sql(
                f"SELECT encode(to_json({REJECTED_VIEW})::VARCHAR) AS raw FROM {REJECTED_VIEW}"
            )
            .to_arrow_table()["raw"]
            .combine_chunks()
        )
        dead = pa.table(
            {
                "partition": found["partition"],
                "offset": found["offset"],
                "raw": pc.coalesce(found["raw"], written),
                "error": errors.filter(bad),
            },
            schema=data.dead_letters.schema,
        )
        return SourceBatch(
            data.rows.filter(pc.invert(bad)),
            pa.concat_tables([data.dead_letters, dead]),
            origins.filter(pc.invert(bad)),
        )

    def _apply(
        self, op: StatefulOperator, step: Step, values: dict[str, Any], churn: bool = True
    ) -> Any:
        """Run a step of `op` and account for the state rows it adds, updates or removes
        (`churn`: count them as the batch's updated and removed rows; compaction's are not)."""
        result = self._run_step(step, {name: values[name] for name in step.parameters} or None)
        added = removed = updated = 0
        if step.effect is Effect.MERGES:
            added = pc.sum(pc.equal(result["__action"], "INSERT")).as_py() or 0
            updated = result.num_rows
        elif step.effect is not Effect.NONE:
            count = result.num_rows if isinstance(result, pa.Table) else result[0][0]
            added, removed = (count, 0) if step.effect is Effect.ADDS else (0, count)
            updated = added
        op.state_rows += added - removed
        if churn:
            op.updated += updated
            op.removed += removed
        return result

    def _statistics(
        self, statistics: Statistics, rows: pa.Table, values: dict[str, int | None]
    ) -> BatchStats:
        cutoff = values["late_cutoff"] if statistics.late else None
        if statistics.sql is not None:
            step = statistics.sql
            return BatchStats(*self._run_step(step, {p: values[p] for p in step.parameters}))
        # Plain microsecond timestamp columns: measured on the Arrow batch directly, with as
        # few passes as the usual batch (no late rows) needs.
        names = {name.lower(): name for name in rows.column_names}
        stats = BatchStats(input_rows=rows.num_rows)
        extremes: dict[str, dict[str, Any]] = {}
        for column in filter(None, (statistics.window_time, statistics.event_time)):
            if column.lower() not in extremes:
                values = rows[names[column.lower()]].cast(pa.int64())
                extremes[column.lower()] = {"values": values, **pc.min_max(values).as_py()}
        if any(
            e["min"] is not None and (e["min"] < MIN_EVENT_US or e["max"] > MAX_EVENT_US)
            for e in extremes.values()
        ):
            stats.bad_times = 1  # at least; the rows are rejected and measured again
            return stats
        if statistics.window_time:
            times = extremes[statistics.window_time.lower()]
            stats.null_event_times = times["values"].null_count
            stats.min_time_us = times["min"]
            if cutoff is not None and times["min"] is not None and times["min"] < cutoff:
                late = pc.less(times["values"], cutoff)
                stats.late_rows = pc.sum(late).as_py() or 0
                stats.min_time_us = pc.min(pc.filter(times["values"], pc.invert(late))).as_py()
        if statistics.event_time:
            stats.max_event_us = extremes[statistics.event_time.lower()]["max"]
        return stats

    def _run_step(self, step: Step, params: dict[str, int | None] | None) -> Any:
        """Run one statement; a VIEW result is registered under its name for later steps."""
        kill_point(KILL_IN_BATCH_AT)
        if step.fetch in (Fetch.VIEW, Fetch.EMIT):
            rows = self.cursor.sql(step.sql, params=params).to_arrow_table()
            if step.view:
                self._register(f"{step.view}_rows", rows)
            return rows
        rows = self.cursor.execute(step.sql, params).fetchall()
        return rows[0] if step.fetch is Fetch.STATS else rows

    def _register(self, view: str, rows: pa.Table) -> None:
        self.cursor.register(view, rows)
        self._registered.add(view)

    def _dead_letters(self, data: SourceBatch, source: str) -> pa.Table:
        """A source's bad records of the batch; an error, before the batch writes anything,
        under on_error = 'fail'."""
        dead = data.dead_letters
        if dead.num_rows and self.sources[source].on_error == "fail":
            first = dead.slice(0, 1).to_pylist()[0]
            raise DataError(
                f"Source {source}: bad record at {first['partition']} offset "
                f"{first['offset']}: {first['error']} (on_error = 'fail')"
            )
        return dead

    def close(self) -> None:
        try:
            self.sink.close()
        finally:
            try:
                for source in self.sources.values():
                    source.close()
            finally:
                self.cursor.close()


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
