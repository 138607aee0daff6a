"""An independent reference model of docs/semantics.md (windowed aggregation; deduplication
at the end of the file).

Written from those rules alone, in plain Python over integer microseconds, so the
property tests can say, for any input split into micro-batches, which rows a streaming
query must accept, which (window, key) groups it must emit in which batch, and which
groups it must still hold in state when the run stops. The aggregate *values* are left to
a single batch DuckDB query over the accepted rows (see the tests).

Rules modelled (docs/semantics.md):

- W_0 = 0 (no watermark, 1970-01-01). After batch N, M_N = max event time over all rows
  of batches 0..N (late rows and NULL keys included, empty batches add nothing),
  truncated to milliseconds; W_{N+1} = max(W_N, M_N - D).
- A row that fails the query's WHERE conjuncts over columns other than the event time
  (Event.passes False) never counts: Spark's optimizer pushes such a filter below the
  watermark operator (PushPredicateThroughNonJoin, the case of a Filter over an
  EventTimeWatermark), so the row moves no watermark, is never late and never NULL.
- Batch N emits and evicts with W_N and drops late rows with L_N = W_{N-1} (L_0 = 0).
- Tumbling/hopping: a row is late for a window iff window_end <= L_N, per window.
  Session: a row is late iff ts + gap <= L_N, on its own one-event session.
- Rows with a NULL event time are dropped.
- FINAL: a group is emitted once, in the first batch with window_end <= W_N, then evicted.
  Sessions merge when they overlap or touch; emitted once end <= W_N, then forgotten.
- CHANGES: every group that received an accepted row in batch N is emitted in batch N
  with its cumulative value; groups whose end <= W_N are evicted silently.
- available_now: after the last input batch, one no-data batch runs iff the watermark
  computed after it is strictly greater than the one in force during it. The query then
  stops; restarted on its checkpoint with new input, it goes on from there.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field, replace

MICROS_PER_MILLI = 1_000
NO_WATERMARK = 0  # 1970-01-01T00:00:00, in microseconds since the Unix epoch
MIN_TIME = -(2**62)  # before any event time: nothing is late, nothing closes


@dataclass(frozen=True)
class Tumbling:
    size: int  # microseconds


@dataclass(frozen=True)
class Hopping:
    size: int  # microseconds
    slide: int  # microseconds


@dataclass(frozen=True)
class Session:
    gap: int  # microseconds


Window = Tumbling | Hopping | Session


@dataclass(frozen=True)
class Event:
    """One input row: its position in the input, its event time and its grouping key."""

    row_id: int
    ts: int | None  # microseconds since the epoch; None is a NULL event time
    key: Hashable  # a tuple of grouping key values (None is a NULL key)
    passes: bool = True  # passes the WHERE conjuncts Spark pushes below the watermark
    # Reaches the aggregation: False for a row that a filter above the watermark removes,
    # such as a stream-static inner join that finds no match for it (it moves the
    # watermark, and is never late, never NULL, never in a window).
    reaches: bool = True


# A group is (window_start, window_end, key), window bounds in microseconds.
Group = tuple[int, int, Hashable]


@dataclass(frozen=True)
class BatchInfo:
    batch_id: int
    watermark: int  # W_N: emission and eviction
    late_threshold: int  # L_N = W_{N-1}: late-row dropping
    no_data: bool  # the extra batch of available_now
    num_input_rows: int
    num_null_event_times: int
    num_late_rows: int  # rows dropped as late (hopping: rows dropped from all their windows)
    num_late_windows: int  # (row, window) pairs dropped as late: differs for hopping only


@dataclass
class Outcome:
    """What a query over the input must do, batch by batch."""

    batches: list[BatchInfo] = field(default_factory=list)
    # Rows accepted into at least one window, with the batch they arrived in.
    accepted: dict[int, int] = field(default_factory=dict)
    # (batch_id, group) emitted, and the accepted rows (row ids) it aggregates.
    emitted: list[tuple[int, Group, frozenset[int]]] = field(default_factory=list)
    # Groups in state after the last batch, with the rows they hold.
    open_groups: dict[Group, frozenset[int]] = field(default_factory=dict)


def truncate_to_millis(ts: int) -> int:
    return ts // MICROS_PER_MILLI * MICROS_PER_MILLI  # floor, also before the epoch


@dataclass(frozen=True)
class Step:
    """One micro-batch that runs: the input batch it reads (None: a no-data batch)."""

    batch: int | None
    watermark: int  # W_N
    late_threshold: int  # L_N = W_{N-1}


def schedule(
    batches: Sequence[Sequence[Event]], delay: int, stops: Collection[int] = ()
) -> list[Step]:
    """Every micro-batch that runs, with its watermark and late-row threshold.

    The query runs with trigger available_now and stops after the last batch and after
    each batch index in stops (then restarts from its checkpoint for the next batches).
    Each time it stops, one no-data batch runs first iff the watermark computed after
    the last batch is strictly greater than the one in force during it.
    """
    steps: list[Step] = []
    current = NO_WATERMARK  # W_N
    previous = NO_WATERMARK  # W_{N-1}; L_0 = no watermark
    max_seen: int | None = None
    for index, batch in enumerate(batches):
        steps.append(Step(index, current, previous))
        times = [event.ts for event in batch if event.ts is not None and event.passes]
        if times:
            max_seen = max(times) if max_seen is None else max(max_seen, *times)
        following = current
        if max_seen is not None:
            following = max(current, truncate_to_millis(max_seen) - delay)
        previous, current = current, following
        if (index in stops or index == len(batches) - 1) and current > previous:
            steps.append(Step(None, current, previous))
            previous = current  # a no-data batch adds no event time
    return steps


def schedule_sources(
    sources: Sequence[Sequence[Sequence[Event]]],
    delays: Sequence[int | None],
    policy: str = "min",
    stops: Collection[int] = (),
    no_data: bool = True,
) -> tuple[list[list[Event]], list[Step]]:
    """A query over several sources (a UNION ALL, a join with a table): the input of each
    micro-batch and every micro-batch that runs, as schedule() gives them for one source.

    Rules (DESIGN.md section 8, as Spark 4.3 runs them on file sources, one file per
    trigger per source): micro-batch N reads batch N of every source that still has one (a
    source that ran out adds nothing). Each source with a delay has its own watermark: the
    max event time of its passing rows so far, truncated to milliseconds, minus its delay;
    a source that has produced no row yet counts as the epoch (Spark's WatermarkTracker
    puts 0 for an EventTimeWatermarkExec that saw no rows). The global watermark is the min
    of them (`policy` 'min', Spark's default multipleWatermarkPolicy) or the max, and never
    moves backwards. Sources without a delay have no say. `no_data` False: the operator
    runs no no-data batch (its time column carries no watermark), so none is scheduled.
    """
    assert policy in ("min", "max")
    length = max(len(batches) for batches in sources)
    combined = [
        [event for batches in sources if n < len(batches) for event in batches[n]]
        for n in range(length)
    ]
    steps: list[Step] = []
    current = previous = NO_WATERMARK
    max_seen: list[int | None] = [None] * len(sources)
    for index in range(length):
        steps.append(Step(index, current, previous))
        for number, batches in enumerate(sources):
            batch = batches[index] if index < len(batches) else []
            times = [e.ts for e in batch if e.ts is not None and e.passes]
            if times:
                known = max_seen[number]
                max_seen[number] = max(times) if known is None else max(known, *times)
        own = [
            NO_WATERMARK if seen is None else truncate_to_millis(seen) - delay
            for seen, delay in zip(max_seen, delays, strict=True)
            if delay is not None
        ]
        following = current
        if own:
            following = max(current, min(own) if policy == "min" else max(own))
        previous, current = current, following
        if no_data and (index in stops or index == length - 1) and current > previous:
            steps.append(Step(None, current, previous))
            previous = current
    return combined, steps


def run_sources(
    sources: Sequence[Sequence[Sequence[Event]]],
    delays: Sequence[int | None],
    window: Tumbling | Hopping,
    emit: str,
    policy: str = "min",
    stops: Collection[int] = (),
    watermarked: bool = True,
) -> Outcome:
    """The model of a windowed aggregation over several sources' rows (UNION ALL): the
    operator above them judges every row against the one global watermark, whatever its
    own source's (DESIGN.md section 8: a row late for its own source's watermark is kept
    while the global one is behind).

    `watermarked` False: the window's time column carries no watermark (a UNION ALL's
    columns are its first branch's, and Spark's `Union.output` keeps its first child's
    metadata: a first branch without one leaves the union's time column without). Then no
    row is late, no window is evicted and no no-data batch runs, as with one source whose
    window is not on the watermarked column; the watermark itself still moves."""
    batches, steps = schedule_sources(sources, delays, policy, stops, watermarked)
    outcome = _run_fixed(step_inputs(batches, steps), steps, window, emit, watermarked)
    if not watermarked:  # the progress records still report the moving watermark
        outcome.batches = [
            replace(info, watermark=step.watermark, late_threshold=step.late_threshold)
            for info, step in zip(outcome.batches, steps, strict=True)
        ]
    return outcome


def window_starts(window: Tumbling | Hopping, ts: int) -> list[int]:
    """Starts of every window containing ts, windows aligned to the Unix epoch."""
    if isinstance(window, Tumbling):
        return [ts // window.size * window.size]
    last = ts // window.slide * window.slide  # the latest start <= ts
    starts = []
    start = last
    while start + window.size > ts:  # start <= ts < start + size
        starts.append(start)
        start -= window.slide
    return sorted(starts)


def run(
    batches: Sequence[Sequence[Event]],
    window: Window,
    delay: int,
    emit: str,
    stops: Collection[int] = (),
) -> Outcome:
    """The model: emit is 'final' or 'changes'; stops as in schedule()."""
    assert emit in ("final", "changes")
    steps = schedule(batches, delay, stops)
    if isinstance(window, Session):
        return _run_sessions(batches, steps, window, emit)
    return _run_fixed(step_inputs(batches, steps), steps, window, emit)


def step_inputs(batches: Sequence[Sequence[Event]], steps: Sequence[Step]) -> list[Sequence[Event]]:
    """The rows each step reads: its input batch, none for a no-data batch."""
    return [batches[step.batch] if step.batch is not None else [] for step in steps]


def _batch_info(
    batch_id: int, step: Step, batch: Sequence[Event], late: int, late_windows: int
) -> BatchInfo:
    return BatchInfo(
        batch_id=batch_id,
        watermark=step.watermark,
        late_threshold=step.late_threshold,
        no_data=step.batch is None,
        num_input_rows=len(batch),
        num_null_event_times=sum(e.ts is None and e.passes and e.reaches for e in batch),
        num_late_rows=late,
        num_late_windows=late_windows,
    )


def _run_fixed(
    inputs: Sequence[Sequence[Event]],
    steps: Sequence[Step],
    window: Tumbling | Hopping,
    emit: str,
    bounded: bool = True,
) -> Outcome:
    """`inputs`: the rows of each step. `bounded` False: the window's time column carries no
    watermark, so no row is late and no window is evicted (the watermark still moves and is
    reported)."""
    outcome = Outcome()
    size = window.size
    state: dict[Group, set[int]] = {}  # open groups and their rows
    for batch_id, step in enumerate(steps):
        watermark, late_threshold = step.watermark, step.late_threshold
        if not bounded:
            watermark = late_threshold = MIN_TIME
        batch = inputs[batch_id]
        late = late_windows = 0
        touched: dict[Group, None] = {}  # in order of first touch
        for event in batch:
            if event.ts is None or not event.passes or not event.reaches:
                continue
            starts = window_starts(window, event.ts)
            if all(start + size <= late_threshold for start in starts):
                late += 1
            for start in starts:
                end = start + size
                if end <= late_threshold:
                    late_windows += 1
                    continue
                group = (start, end, event.key)
                outcome.accepted[event.row_id] = batch_id
                state.setdefault(group, set()).add(event.row_id)
                touched[group] = None
        outcome.batches.append(_batch_info(batch_id, step, batch, late, late_windows))
        closing = [group for group in state if group[1] <= watermark]
        if emit == "final":
            for group in closing:
                outcome.emitted.append((batch_id, group, frozenset(state[group])))
        else:
            for group in touched:
                outcome.emitted.append((batch_id, group, frozenset(state[group])))
        for group in closing:
            del state[group]
    outcome.open_groups = {group: frozenset(rows) for group, rows in state.items()}
    return outcome


@dataclass
class _Session:
    start: int
    end: int
    rows: set[int]
    touched: bool  # received an accepted row in the current batch


def _merge(sessions: list[_Session]) -> list[_Session]:
    """Merge sessions of one key that overlap or touch (next.start <= current.end)."""
    merged: list[_Session] = []
    for session in sorted(sessions, key=lambda s: (s.start, s.end)):
        if merged and session.start <= merged[-1].end:
            last = merged[-1]
            last.end = max(last.end, session.end)
            last.rows |= session.rows
            last.touched = last.touched or session.touched
        else:
            merged.append(_Session(session.start, session.end, set(session.rows), session.touched))
    return merged


def _run_sessions(
    batches: Sequence[Sequence[Event]], steps: Sequence[Step], window: Session, emit: str
) -> Outcome:
    outcome = Outcome()
    gap = window.gap
    state: dict[Hashable, list[_Session]] = {}  # open sessions per key
    for batch_id, step in enumerate(steps):
        watermark, late_threshold = step.watermark, step.late_threshold
        batch = batches[step.batch] if step.batch is not None else []
        late = 0
        new: dict[Hashable, list[_Session]] = {}
        for event in batch:
            if event.ts is None or not event.passes:
                continue
            if event.ts + gap <= late_threshold:
                late += 1
                continue
            outcome.accepted[event.row_id] = batch_id
            new.setdefault(event.key, []).append(
                _Session(event.ts, event.ts + gap, {event.row_id}, True)
            )
        outcome.batches.append(_batch_info(batch_id, step, batch, late, late))
        for key, sessions in new.items():
            state[key] = _merge(state.get(key, []) + sessions)
        for key in list(state):
            keep = []
            for session in state[key]:
                group = (session.start, session.end, key)
                closing = session.end <= watermark
                if (emit == "final" and closing) or (emit == "changes" and session.touched):
                    outcome.emitted.append((batch_id, group, frozenset(session.rows)))
                session.touched = False
                if not closing:
                    keep.append(session)
            if keep:
                state[key] = keep
            else:
                del state[key]
    for key, sessions in state.items():
        for session in sessions:
            outcome.open_groups[(session.start, session.end, key)] = frozenset(session.rows)
    return outcome


# -- deduplication ---------------------------------------------------------------------------
#
# Spark's streaming deduplication (sql/core/src/main/scala/org/apache/spark/sql/execution/
# streaming/statefulOperators.scala, BaseStreamingDeduplicateExec and its two subclasses):
#
# - Late rows: with a watermark, a row whose event time is at or below the late-event
#   watermark L_N is dropped (applyRemovingRowsOlderThanWatermark with
#   watermarkPredicateForDataForLateEvents, a LessThanOrEqual on the event-time column).
#   Rows with a NULL event time are dropped and counted (DESIGN section 3), as for windows
#   (Spark's predicate is not true for NULL and keeps them: a difference README documents).
# - In input order, a row is emitted iff its key is not in state, and its key is then put
#   in state (the `baseIterator.filter` over store.get(key)): a key in state drops the
#   batch's rows; otherwise the first row wins.
# - After the batch's rows (the CompletionIterator's evictDupInfoFromState), with W_N:
#   dropDuplicates removes a key whose event-time column is <= W_N, and only when a key
#   column is the event time (watermarkPredicateForKeysForEviction); otherwise a key stays
#   for good. dropDuplicatesWithinWatermark stores expiresAt = ts + delay of the row it
#   emits and removes the key once W_N >= expiresAt.
# - A no-data batch runs when the watermark moved (shouldRunAnotherBatch: the new watermark
#   is greater than the eviction watermark), as schedule() has it for every operator.
# - Without a watermark nothing is late, nothing is forgotten and no no-data batch runs.


@dataclass
class DedupOutcome:
    batches: list[BatchInfo] = field(default_factory=list)
    emitted: dict[int, int] = field(default_factory=dict)  # row_id -> batch it is emitted in
    state: dict[Hashable, int | None] = field(default_factory=dict)  # key -> expiry at the end


def deduplicate(
    batches: Sequence[Sequence[Event]],
    delay: int | None,
    within_watermark: bool = False,
    key_has_time: bool = False,
    stops: Collection[int] = (),
) -> DedupOutcome:
    """The model of both deduplications; Event.key is the row's key. `delay` None: no
    watermark. `key_has_time`: for dropDuplicates, one key column is the event time."""
    assert delay is not None or not within_watermark  # Spark requires the watermark
    if delay is None:
        steps = [Step(index, NO_WATERMARK, NO_WATERMARK) for index in range(len(batches))]
    else:
        steps = schedule(batches, delay, stops)
    outcome = DedupOutcome()
    state = outcome.state
    for batch_id, step in enumerate(steps):
        batch = batches[step.batch] if step.batch is not None else []
        late = nulls = 0
        for event in batch:
            if not event.passes:
                continue
            if delay is not None:
                if event.ts is None:
                    nulls += 1
                    continue
                if event.ts <= step.late_threshold:
                    late += 1
                    continue
            if event.key in state:
                continue
            if within_watermark:
                state[event.key] = event.ts + delay
            else:
                state[event.key] = event.ts if key_has_time and delay is not None else None
            outcome.emitted[event.row_id] = batch_id
        outcome.batches.append(
            BatchInfo(
                batch_id=batch_id,
                watermark=step.watermark,
                late_threshold=step.late_threshold,
                no_data=step.batch is None,
                num_input_rows=len(batch),
                num_null_event_times=nulls,
                num_late_rows=late,
                num_late_windows=late,
            )
        )
        for key in [k for k, expiry in state.items() if expiry is not None]:
            if state[key] <= step.watermark:
                del state[key]
    return outcome


# -- stream-stream joins ---------------------------------------------------------------------


@dataclass(frozen=True)
class JoinOutcome:
    """What a stream-stream join must do: its batches, and each emitted row as (batch_id,
    left row id or None, right row id or None); a left semi join emits (batch, left, None)."""

    steps: list[Step]
    emitted: list[tuple[int, int | None, int | None]]
    late_rows: list[int]  # per step
    null_event_times: list[int]  # per step
    state_rows: int  # left after the last step


def run_join(
    left: Sequence[Sequence[Event]],
    right: Sequence[Sequence[Event]],
    delays: tuple[int | None, int | None],
    join_type: str,
    before: int,
    after: int,
    policy: str = "min",
    stops: Collection[int] = (),
) -> JoinOutcome:
    """The model of `l JOIN r ON l.key = r.key AND r.ts BETWEEN l.ts - before AND l.ts +
    after` (join_type: inner, left, right, full, semi), Events' keys as the join key.

    Rules (DESIGN.md section 8, Spark's StreamingSymmetricHashJoinExec and
    StreamingJoinHelper):
    - batches and watermarks as schedule_sources gives them; rows whose key is NULL on a side
      that is never NULL-extended are filtered below the watermark (Event.passes False: Spark
      infers `key IS NOT NULL`, InferFiltersFromConstraints);
    - on a side with a watermark, a row with a NULL event time is dropped (counted), and a
      row with `ts <= L_N` is late (dropped, counted), whatever its own source's delay
      (StreamingSymmetricHashJoinExec: watermarkPredicateForDataForLateEvents);
    - in a batch: the left rows join the right state, then the right rows join the left
      state with this batch's left rows (OneSideHashJoiner.storeAndJoinWithOtherSide, left
      first): each pair once, in the batch where its second row arrives;
    - NULL keys and NULL times never match (streamsql's rule; Spark's full outer join
      matches NULL keys);
    - after the batch, rows go from state once no future row can match them
      (StreamingJoinHelper.getStateValueWatermark: `r.ts <= l.ts + after` bounds the left by
      `l.ts <= W - after - 1 ms`, needing a watermark on the right; `r.ts >= l.ts - before`
      the right by `r.ts <= W - before - 1 ms`, needing one on the left); an outer join
      emits those of its preserved side(s) that never matched, with NULLs, as they go
      (state format 2's `matched` flag);
    - a left semi join emits a left row once, in the batch its first match arrives
      (streamsql's rule, DESIGN.md section 8), and forgets it then.
    """
    _, steps = schedule_sources([left, right], list(delays), policy, stops)
    extends = {"left": {0}, "right": {1}, "full": {0, 1}}.get(join_type, set())
    bounds = _join_bounds(delays, before, after)
    if bounds == [None, None]:  # no state ever leaves: the query runs no no-data batch
        steps = [s for s in steps if s.batch is not None]
    state: list[list[list]] = [[], []]  # per side: [event, matched]
    emitted: list[tuple[int, int | None, int | None]] = []
    late_counts, null_counts = [], []
    for batch_id, step in enumerate(steps):
        new: list[list[list]] = [[], []]
        late = nulls = 0
        for side, batches in enumerate((left, right)):
            if step.batch is None or step.batch >= len(batches):
                continue
            for event in batches[step.batch]:
                if not event.passes:
                    continue
                if delays[side] is not None and event.ts is None:
                    nulls += 1
                elif delays[side] is not None and event.ts <= step.late_threshold:
                    late += 1
                else:
                    new[side].append([event, False])
        late_counts.append(late)
        null_counts.append(nulls)

        def matches(lrow: Event, rrow: Event) -> bool:
            return (
                lrow.key[0] is not None
                and lrow.key == rrow.key
                and lrow.ts is not None
                and rrow.ts is not None
                and lrow.ts - before <= rrow.ts <= lrow.ts + after
            )

        pairs = [(lrow, rrow) for lrow in new[0] for rrow in state[1] if matches(lrow[0], rrow[0])]
        pairs += [
            (lrow, rrow)
            for lrow in state[0] + new[0]
            for rrow in new[1]
            if matches(lrow[0], rrow[0])
        ]
        for lrow, rrow in pairs:
            if join_type == "semi":
                if not lrow[1]:
                    emitted.append((batch_id, lrow[0].row_id, None))
            else:
                emitted.append((batch_id, lrow[0].row_id, rrow[0].row_id))
            lrow[1] = rrow[1] = True
        for side in (0, 1):
            state[side] += new[side]
            if join_type == "semi" and side == 0:
                state[0] = [row for row in state[0] if not row[1]]
            if bounds[side] is None:
                continue
            limit = step.watermark + bounds[side]
            gone = [r for r in state[side] if r[0].ts is not None and r[0].ts <= limit]
            state[side] = [r for r in state[side] if not (r[0].ts is not None and r[0].ts <= limit)]
            if side in extends:
                emitted += [
                    (batch_id, *((r[0].row_id, None) if side == 0 else (None, r[0].row_id)))
                    for r in gone
                    if not r[1]
                ]
    return JoinOutcome(steps, emitted, late_counts, null_counts, len(state[0]) + len(state[1]))


# -- chained stateful operators --------------------------------------------------------------
#
# Spark 3.5 runs several stateful operators in one query (append mode), each under a watermark
# of its own that the operators below it propagate (sql/core/src/main/scala/org/apache/spark/
# sql/execution/streaming/WatermarkPropagator.scala, PropagateWatermarkSimulator.doSimulate):
#
# - The plan is walked bottom up once per batch, from the query's (global) watermark W_N: a
#   stateful operator's input watermark is the min of its children's output watermarks, and
#   its output watermark is `node.produceWatermark(input)`.
# - A window (StateStoreSaveExec) and a deduplication pass on the watermark they run under
#   unchanged: StateStoreWriter.produceOutputWatermark(inputWatermarkMs) =
#   Some(inputWatermarkMs) (statefulOperators.scala; "the operator will produce the window
#   [0, 5) only when the output watermark is equal or greater than 5 ... Hence this window is
#   considered as non-late record"). Shift 0.
# - A stream-stream join passes on the lowest of its sides' state watermarks and its input
#   watermark (StreamingSymmetricHashJoinExec.produceOutputWatermark: `(leftStateWatermark
#   ++ rightStateWatermark ++ Some(inputWatermarkMs)).min`, state watermarks from
#   StreamingSymmetricHashJoinHelper.getStateWatermark): with run_join's bounds, shift =
#   min(0, the bounds of the sides that have one) (`join_shift`).
# - Each operator drops late rows with the watermark it ran under in the batch before and
#   evicts with the one of this batch (IncrementalExecution.scala, WatermarkPropagationRule:
#   eventTimeWatermarkForLateEvents from watermarkPropagator.getInputWatermarkForLateEvents,
#   the operator's input watermark of the previous batch; eventTimeWatermarkForEviction from
#   getInputWatermarkForEviction, this batch's), so an operator shifted by s runs with
#   L_N + s and W_N + s.
# - The rows an operator emits in batch N are the input of the next one in batch N: one
#   physical plan runs per micro-batch (IncrementalExecution), a no-data batch included.
# - A window over a window reads its rows at window_time = window_end - 1 microsecond
#   (sql/catalyst/src/main/scala/org/apache/spark/sql/catalyst/analysis/
#   ResolveTimeWindows.scala, ResolveWindowTime: "The correct representative event time of a
#   window is window.end - 1").
# - Late rows are those of the query's input the first operator drops; a row an operator
#   emits can be late for the next only in corner cases: `run_over` counts them anyway
#   (BatchInfo.num_late_rows of its outcome; Spark's numRowsDroppedByWatermark of that
#   operator).


def join_shift(delays: tuple[int | None, int | None], before: int, after: int) -> int:
    """How far below the query's watermark a window over run_join's rows runs."""
    bounds = _join_bounds(delays, before, after)
    return min(0, *(b for b in bounds if b is not None))


def _join_bounds(
    delays: tuple[int | None, int | None], before: int, after: int
) -> list[int | None]:
    """Per side, the state watermark's offset from W (None: the side's state never goes)."""
    return [
        -after - MICROS_PER_MILLI if delays[1] is not None else None,
        -before - MICROS_PER_MILLI if delays[0] is not None else None,
    ]


def window_rows(outcome: Outcome, steps: Sequence[Step]) -> list[list[Event]]:
    """The rows a FINAL window emits, per step, as the next operator reads them: one Event per
    emitted group (row_id: its index in outcome.emitted), at its window_time, keyed by its
    key."""
    rows: list[list[Event]] = [[] for _ in steps]
    for number, (batch_id, (_, end, key), _) in enumerate(outcome.emitted):
        rows[batch_id].append(Event(number, end - 1, key))
    return rows


def run_over(
    steps: Sequence[Step], inputs: Sequence[Sequence[Event]], window: Tumbling | Hopping, shift: int
) -> Outcome:
    """The model of a FINAL window over the rows an operator below emits: inputs[N] are those
    of step N (Event.row_id as the caller numbers them), run under the query's watermark
    shifted by `shift`."""
    shifted = [
        replace(s, watermark=s.watermark + shift, late_threshold=s.late_threshold + shift)
        for s in steps
    ]
    return _run_fixed(inputs, shifted, window, "final")
