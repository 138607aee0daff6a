"""A stream-stream join's per-batch steps (Spark's StreamingSymmetricHashJoinExec).

State: the rows of both sides, in one table, each row with its side, an id (the batch that
brought it and its place in the batch) and whether it ever matched. The table's columns are
the join's own (both sides', named apart); a row of one side has NULL in the other's.

Per batch N, in the batch's transaction (W = W_N, L = L_N):
1. the batch's rows of each side join the state: those with a NULL event time, or one at or
   below L, are dropped and counted (late, on either side); the others are stored;
2. pairs: this batch's left rows with the right rows of earlier batches, then every left row
   (this batch's included) with this batch's right rows, so each pair is emitted once, in
   the batch where its second row arrives (Spark joins the left input with the right state
   and stores it, then the right input with the left state);
3. rows that matched are marked; a left semi join emits a left row when it first matches;
4. rows below their side's bound leave state: an outer join emits those of its preserved
   side(s) that never matched with NULLs for the other side, in that batch.

Spark's OneSideHashJoiner.storeAndJoinWithOtherSide stores every left row, and a right row
only if it stays past this batch or is an unmatched outer row; no later row can match one
below its bound, so storing all of them and evicting after the batch emits the same rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamsql.catalog.definitions import INTERNAL_PREFIX
from streamsql.incremental.compiler import Effect, Fetch, Step, ident, sql_of
from streamsql.plan.plan import JoinSide, JoinType, StreamingPlan

if TYPE_CHECKING:
    from streamsql.incremental.compiler import Compiler

SIDE, ROW_ID, MATCHED = (f"{INTERNAL_PREFIX}{n}" for n in ("side", "id", "matched"))
LEFT_ID, RIGHT_ID = f"{INTERNAL_PREFIX}left_id", f"{INTERNAL_PREFIX}right_id"
PAIRS, FIRST, GONE = (f"{INTERNAL_PREFIX}join_{n}" for n in ("pairs", "first", "gone"))
# A row's id: its batch times this, plus its place in the batch (of one side).
BATCH_IDS = 1 << 32


class StreamJoinSteps:
    """The state table's shape and the per-batch steps of the plan's stream-stream join."""

    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self.plan: StreamingPlan = compiler.plan
        self.join = compiler.plan.join
        self.state = compiler.state
        self.scans = {scan.view: scan for scan in self.plan.scans}

    def _tag(self, side: JoinSide) -> str:
        return "'L'" if side is self.join.left else "'R'"

    def _accepted(self, side: JoinSide) -> str:
        """A side's rows that are neither late nor without an event time."""
        if side.event_time is None:
            return "TRUE"
        scan = self.scans[side.view]
        return (
            f"{ident(side.event_time)} IS NOT NULL AND "
            f"{self.compiler._epoch_us(side.event_time, scan.types)} > $late"
        )

    def _input(self, side: JoinSide) -> str:
        """The batch's rows of a side (after the filters below the watermark), as `alias`."""
        rows = sql_of(self.compiler.scan_rows(self.scans[side.view]))
        return f"({rows}) AS {ident(side.alias)}"

    def shape(self) -> str:
        """The state table's columns, over no rows."""
        join = self.join
        columns = [
            f"{ident(side.alias)}.{ident(c)} AS {ident(n)}"
            for side in (join.left, join.right)
            for c, n in side.columns
        ]
        return (
            f"SELECT {', '.join(columns)}, ''::VARCHAR AS {SIDE}, 0::BIGINT AS {ROW_ID}, "
            f"FALSE AS {MATCHED} FROM {self._input(join.left)}, {self._input(join.right)} "
            "LIMIT 0"
        )

    def _new_rows(self, side: JoinSide) -> str:
        columns = ", ".join(f"{ident(c)} AS {ident(n)}" for c, n in side.columns)
        return (
            f"SELECT {columns}, {self._tag(side)} AS {SIDE}, "
            f"$batch_id::BIGINT * {BATCH_IDS} + row_number() OVER () AS {ROW_ID}, "
            f"FALSE AS {MATCHED} FROM {self._input(side)} WHERE {self._accepted(side)}"
        )

    def _stored(self, side: JoinSide, which: str) -> str:
        """A side's state rows (`which`: this batch's 'new', earlier 'old', or 'all') under
        the source's column names and the side's alias, for ON and the join's columns."""
        columns = ", ".join(f"{ident(n)} AS {ident(c)}" for c, n in side.columns)
        batch = {
            "new": f" AND {ROW_ID} >= $batch_id::BIGINT * {BATCH_IDS}",
            "old": f" AND {ROW_ID} < $batch_id::BIGINT * {BATCH_IDS}",
            "all": "",
        }[which]
        return (
            f"(SELECT {columns}, {ROW_ID} FROM {self.state} "
            f"WHERE {SIDE} = {self._tag(side)}{batch}) AS {ident(side.alias)}"
        )

    def _evicted(self, side: JoinSide) -> str:
        """State rows of a side that no future row can match (FALSE: none, ever)."""
        if side.bound is None:
            return "FALSE"
        column, offset = side.bound
        name = dict(side.columns)[column]
        scan = self.scans[side.view]
        time = self.compiler._epoch_us(name, {name.lower(): scan.types.get(column.lower(), "")})
        return f"({SIDE} = {self._tag(side)} AND {time} <= $watermark::BIGINT + {offset})"

    def statistics(self) -> Step:
        """Rows without an event time and late rows, of both sides (the sources' own
        statistics count their input rows and event times)."""
        nulls, late = [], []
        for side in (self.join.left, self.join.right):
            if side.event_time is None:
                continue
            scan = self.scans[side.view]
            time = self.compiler._epoch_us(side.event_time, scan.types)
            rows = f"FROM {self._input(side)}"
            nulls.append(
                f"(SELECT count(*) FILTER (WHERE {ident(side.event_time)} IS NULL) {rows})"
            )
            late.append(f"(SELECT count(*) FILTER (WHERE {time} <= $late) {rows})")
        figures = [
            f"({' + '.join(nulls)})::BIGINT" if nulls else "0",
            f"({' + '.join(late)})::BIGINT" if late else "0",
            "NULL",
        ]
        return Step("late rows of the join's sides", f"SELECT {', '.join(figures)}", Fetch.STATS)

    def steps(self) -> list[Step]:
        join = self.join
        left, right = join.left, join.right
        condition = sql_of(join.condition)
        projection = ", ".join(
            f"{ident(side.alias)}.{ident(c)} AS {ident(n)}"
            for side in (left, right)
            for c, n in side.columns
        )
        ids = (
            f"{ident(left.alias)}.{ROW_ID} AS {LEFT_ID}, "
            f"{ident(right.alias)}.{ROW_ID} AS {RIGHT_ID}"
        )
        pairs = (
            f"CREATE OR REPLACE TEMP TABLE {PAIRS} AS "
            f"SELECT {ids}, {projection} FROM {self._stored(left, 'new')} "
            f"JOIN {self._stored(right, 'old')} ON {condition} "
            f"UNION ALL SELECT {ids}, {projection} FROM {self._stored(left, 'all')} "
            f"JOIN {self._stored(right, 'new')} ON {condition}"
        )
        steps = [
            Step(
                "store the batch's rows of both sides",
                f"INSERT INTO {self.state} BY NAME {self._new_rows(left)} "
                f"UNION ALL BY NAME {self._new_rows(right)}",
                effect=Effect.ADDS,
            ),
            Step("join each side's new rows with the other side's", pairs),
        ]
        internal = f"EXCLUDE ({SIDE}, {ROW_ID}, {MATCHED})"
        output = f"SELECT * EXCLUDE ({LEFT_ID}, {RIGHT_ID}) FROM {PAIRS}"
        if join.type is JoinType.SEMI:
            steps.append(
                Step(
                    "left rows matched for the first time",
                    f"CREATE OR REPLACE TEMP TABLE {FIRST} AS SELECT * {internal} "
                    f"FROM {self.state} WHERE {SIDE} = 'L' AND NOT {MATCHED} "
                    f"AND {ROW_ID} IN (SELECT {LEFT_ID} FROM {PAIRS})",
                )
            )
            output = f"SELECT * FROM {FIRST}"
        if join.type is not JoinType.INNER:
            steps.append(
                Step(
                    "mark the rows that matched",
                    f"UPDATE {self.state} SET {MATCHED} = TRUE WHERE NOT {MATCHED} AND ("
                    f"({SIDE} = 'L' AND {ROW_ID} IN (SELECT {LEFT_ID} FROM {PAIRS})) OR "
                    f"({SIDE} = 'R' AND {ROW_ID} IN (SELECT {RIGHT_ID} FROM {PAIRS})))",
                )
            )
        extended = [side for side in (left, right) if side.alias in self._null_extended()]
        if extended:
            leaving = " OR ".join(self._evicted(side) for side in extended)
            steps.append(
                Step(
                    "unmatched outer rows that leave state",
                    f"CREATE OR REPLACE TEMP TABLE {GONE} AS SELECT * {internal} "
                    f"FROM {self.state} WHERE NOT {MATCHED} AND ({leaving})",
                )
            )
            output += f" UNION ALL BY NAME SELECT * FROM {GONE}"
        evicted = [self._evicted(side) for side in (left, right) if side.bound is not None]
        if join.type is JoinType.SEMI:  # a left row that matched has nothing more to emit
            evicted.append(f"({SIDE} = 'L' AND {MATCHED})")
        if evicted:
            steps.append(
                Step(
                    "evict rows no future row can match",
                    f"DELETE FROM {self.state} WHERE {' OR '.join(evicted)}",
                    effect=Effect.REMOVES,
                )
            )
        plan = self.plan
        where = f" WHERE {sql_of(plan.where)}" if plan.where is not None else ""
        select = ", ".join(sql_of(e) for e in plan.projection)
        emit = f"SELECT {select} FROM ({output}) AS {ident(plan.alias)}{where}"
        steps.append(Step("emit joined rows", emit, Fetch.EMIT))
        return steps

    def _null_extended(self) -> set[str]:
        join = self.join
        return {getattr(join, side).alias for side in join.type.null_extends}

    def setup(self) -> str:
        temporary = "TEMP " if self.compiler.temporary else ""
        return f"CREATE {temporary}TABLE IF NOT EXISTS {self.state} AS {self.shape()}"
