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

from sqlglot import exp

from streamsql.catalog.definitions import INTERNAL_PREFIX
from streamsql.incremental.compiler import Effect, Fetch, Step
from streamsql.incremental.sqltree import (
    aliased,
    column,
    create_table,
    delete,
    fill,
    insert_by_name,
    param,
    star,
    table,
    template,
    union_by_name,
)
from streamsql.plan.plan import JoinSide, JoinType, StreamingPlan
from streamsql.quoting import identifier

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
        self.state = compiler.table
        self.scans = {scan.view: scan for scan in self.plan.scans}

    def _tag(self, side: JoinSide) -> exp.Expr:
        return exp.Literal.string("L" if side is self.join.left else "R")

    def _is(self, side: JoinSide) -> exp.Expr:
        """A state row is of `side`."""
        return exp.EQ(this=column(SIDE), expression=self._tag(side))

    def _accepted(self, side: JoinSide) -> exp.Expr:
        """A side's rows that are neither late nor without an event time."""
        if side.event_time is None:
            return exp.true()
        scan = self.scans[side.view]
        return exp.and_(
            column(side.event_time).is_(exp.null()).not_(),
            exp.GT(
                this=self.compiler._epoch_us(side.event_time, scan.types),
                expression=param("late"),
            ),
        )

    def _input(self, side: JoinSide) -> exp.Expr:
        """The batch's rows of a side (after the filters below the watermark), as `alias`."""
        return aliased(self.compiler.scan_rows(self.scans[side.view]), side.alias)

    def _columns(self, sides: tuple[JoinSide, ...]) -> list[exp.Expr]:
        """The sides' columns under the join's names for them."""
        return [
            exp.alias_(column(c, side.alias), identifier(n))
            for side in sides
            for c, n in side.columns
        ]

    def shape(self) -> exp.Select:
        """The state table's columns, over no rows."""
        join = self.join
        return (
            exp.select(
                *self._columns((join.left, join.right)),
                exp.alias_(exp.cast(exp.Literal.string(""), "VARCHAR"), identifier(SIDE)),
                exp.alias_(exp.cast(exp.Literal.number(0), "BIGINT"), identifier(ROW_ID)),
                exp.alias_(exp.false(), identifier(MATCHED)),
            )
            .from_(self._input(join.left))
            .join(self._input(join.right))
            .limit(0)
        )

    def _batch_start(self) -> exp.Expr:
        """The first row id of this batch."""
        return fill(
            template("CAST(batch AS BIGINT) * ids"), {"batch": param("batch_id"), "ids": BATCH_IDS}
        )

    def _new_rows(self, side: JoinSide) -> exp.Select:
        row_id = fill(template("first + row_number() OVER ()"), {"first": self._batch_start()})
        return (
            exp.select(
                *(exp.alias_(column(c), identifier(n)) for c, n in side.columns),
                exp.alias_(self._tag(side), identifier(SIDE)),
                exp.alias_(row_id, identifier(ROW_ID)),
                exp.alias_(exp.false(), identifier(MATCHED)),
            )
            .from_(self._input(side))
            .where(self._accepted(side))
        )

    def _stored(self, side: JoinSide, which: str) -> exp.Expr:
        """A side's state rows (`which`: this batch's 'new', earlier 'old', or 'all') under
        the source's column names and the side's alias, for ON and the join's columns."""
        conditions = [self._is(side)]
        if which == "new":
            conditions.append(exp.GTE(this=column(ROW_ID), expression=self._batch_start()))
        elif which == "old":
            conditions.append(exp.LT(this=column(ROW_ID), expression=self._batch_start()))
        rows = (
            exp.select(
                *(exp.alias_(column(n), identifier(c)) for c, n in side.columns), column(ROW_ID)
            )
            .from_(self.state.copy())
            .where(*conditions)
        )
        return aliased(rows, side.alias)

    def _evicted(self, side: JoinSide) -> exp.Expr:
        """State rows of a side that no future row can match (FALSE: none, ever)."""
        if side.bound is None:
            return exp.false()
        name_of, offset = side.bound
        name = dict(side.columns)[name_of]
        scan = self.scans[side.view]
        time = self.compiler._epoch_us(name, {name.lower(): scan.types.get(name_of.lower(), "")})
        bound = fill(
            template("CAST(watermark AS BIGINT) + offset"),
            {"watermark": param("watermark"), "offset": offset},
        )
        return exp.paren(exp.and_(self._is(side), exp.LTE(this=time, expression=bound)))

    def statistics(self) -> Step:
        """Rows without an event time and late rows, of both sides (the sources' own
        statistics count their input rows and event times)."""
        nulls, late = [], []
        for side in (self.join.left, self.join.right):
            if side.event_time is None:
                continue
            scan = self.scans[side.view]
            time = self.compiler._epoch_us(side.event_time, scan.types)
            nulls.append(self._count(side, column(side.event_time).is_(exp.null())))
            late.append(self._count(side, exp.LTE(this=time, expression=param("late"))))
        figures = [_sum(nulls), _sum(late), exp.null()]
        return Step("late rows of the join's sides", exp.select(*figures), Fetch.STATS)

    def _count(self, side: JoinSide, condition: exp.Expr) -> exp.Expr:
        """The batch's rows of a side that meet `condition`, as a scalar subquery."""
        count = exp.Filter(this=exp.Count(this=exp.Star()), expression=exp.Where(this=condition))
        return exp.select(count).from_(self._input(side)).subquery()

    def steps(self) -> list[Step]:
        join = self.join
        left, right = join.left, join.right
        ids = [
            exp.alias_(column(ROW_ID, left.alias), identifier(LEFT_ID)),
            exp.alias_(column(ROW_ID, right.alias), identifier(RIGHT_ID)),
        ]

        def pairs_of(left_rows: str, right_rows: str) -> exp.Select:
            return (
                exp.select(*(c.copy() for c in ids), *self._columns((left, right)))
                .from_(self._stored(left, left_rows))
                .join(self._stored(right, right_rows), on=join.condition.copy())
            )

        pairs = exp.union(pairs_of("new", "old"), pairs_of("all", "new"), distinct=False)
        steps = [
            Step(
                "store the batch's rows of both sides",
                insert_by_name(
                    self.state, union_by_name(self._new_rows(left), self._new_rows(right))
                ),
                effect=Effect.ADDS,
            ),
            Step(
                "join each side's new rows with the other side's",
                create_table(table(PAIRS), pairs, temporary=True, replace=True),
            ),
        ]
        internal = (SIDE, ROW_ID, MATCHED)
        output: exp.Query = exp.select(star(LEFT_ID, RIGHT_ID)).from_(table(PAIRS))
        if join.type is JoinType.SEMI:
            first = (
                exp.select(star(*internal))
                .from_(self.state.copy())
                .where(
                    self._is(left),
                    exp.not_(column(MATCHED)),
                    self._paired(LEFT_ID),
                )
            )
            steps.append(
                Step(
                    "left rows matched for the first time",
                    create_table(table(FIRST), first, temporary=True, replace=True),
                )
            )
            output = exp.select("*").from_(table(FIRST))
        if join.type is not JoinType.INNER:
            matched = exp.or_(
                exp.and_(self._is(left), self._paired(LEFT_ID)),
                exp.and_(self._is(right), self._paired(RIGHT_ID)),
            )
            mark = exp.update(
                self.state.copy(),
                {MATCHED: exp.true()},
                exp.and_(exp.not_(column(MATCHED)), exp.paren(matched)),
            )
            steps.append(Step("mark the rows that matched", mark))
        extended = [side for side in (left, right) if side.alias in self._null_extended()]
        if extended:
            leaving = exp.or_(*(self._evicted(side) for side in extended))
            gone = (
                exp.select(star(*internal))
                .from_(self.state.copy())
                .where(exp.not_(column(MATCHED)), exp.paren(leaving))
            )
            steps.append(
                Step(
                    "unmatched outer rows that leave state",
                    create_table(table(GONE), gone, temporary=True, replace=True),
                )
            )
            output = union_by_name(output, exp.select("*").from_(table(GONE)))
        evicted = [self._evicted(side) for side in (left, right) if side.bound is not None]
        if join.type is JoinType.SEMI:  # a left row that matched has nothing more to emit
            evicted.append(exp.paren(exp.and_(self._is(left), column(MATCHED))))
        if evicted:
            steps.append(
                Step(
                    "evict rows no future row can match",
                    delete(self.state, exp.or_(*evicted)),
                    effect=Effect.REMOVES,
                )
            )
        plan = self.plan
        emit = exp.select(*(e.copy() for e in plan.projection)).from_(aliased(output, plan.alias))
        if plan.where is not None:
            emit = emit.where(plan.where.copy())
        steps.append(Step("emit joined rows", emit, Fetch.EMIT))
        return steps

    @staticmethod
    def _paired(ids: str) -> exp.Expr:
        """A state row's id is among the pairs' `ids`."""
        return column(ROW_ID).isin(query=exp.select(column(ids)).from_(table(PAIRS)))

    def _null_extended(self) -> set[str]:
        join = self.join
        return {getattr(join, side).alias for side in join.type.null_extends}

    def setup(self) -> Step:
        return Step(
            "create the state table",
            create_table(self.state, self.shape(), self.compiler.temporary),
        )


def _sum(counts: list[exp.Expr]) -> exp.Expr:
    """The sum of counts, as a BIGINT (0 without any)."""
    if not counts:
        return exp.Literal.number(0)
    total = counts[0]
    for count in counts[1:]:
        total = exp.Add(this=total, expression=count)
    return exp.cast(exp.paren(total), "BIGINT")
