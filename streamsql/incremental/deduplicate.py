"""Deduplication's per-batch steps: Spark's StreamingDeduplicateExec (dropDuplicates) and
StreamingDeduplicateWithinWatermarkExec (dropDuplicatesWithinWatermark), set-based.

The state table holds one row per remembered key: the key columns `key<i>` and
`__expires`, the watermark (epoch microseconds) at or above which the key is forgotten, or
NULL for never. Spark's operators (sql/core/.../execution/streaming/statefulOperators.scala,
BaseStreamingDeduplicateExec.doExecute) do, per batch N:

1. drop the rows whose event time is at or below the late threshold L_N
   (applyRemovingRowsOlderThanWatermark with watermarkPredicateForDataForLateEvents:
   `event_time <= L_N`), when the event-time column is in the deduplicated row;
2. in input order, emit a row iff its key is not in state, and put its key there: so a key
   already in state drops all of the batch's rows, and otherwise the batch's first row wins;
3. after the batch's rows, forget keys (evictDupInfoFromState with W_N):
   - dropDuplicates: a key whose event-time column is at or below W_N
     (removeKeysOlderThanWatermark, watermarkPredicateForKeysForEviction: only when a key is
     the event-time column; otherwise keys stay for good);
   - within watermark: a key whose first row's event time plus the delay is at or below W_N
     (putDupInfoIntoState stores `expiresAt = ts + delay`; evicted iff `W_N >= expiresAt`).

Step 2 in one statement: number the batch's rows in input order (a POSITIONAL JOIN of the
Arrow input with a range), keep each key's first row, and anti-join the state. For SELECT
DISTINCT the key is the whole output row, so any of a key's rows is its first.
"""

from __future__ import annotations

from sqlglot import exp

from streamsql.catalog.definitions import INTERNAL_PREFIX
from streamsql.incremental.compiler import (
    BatchProgram,
    Compiler,
    Effect,
    Fetch,
    Step,
)
from streamsql.incremental.sqltree import (
    aliased,
    column,
    create_table,
    delete,
    drop_table,
    fill,
    fn,
    param,
    star,
    table,
    template,
)
from streamsql.quoting import identifier

SEQUENCE = f"{INTERNAL_PREFIX}seq"  # a row's position in the batch's input
RANK = f"{INTERNAL_PREFIX}rank"
EXPIRES = f"{INTERNAL_PREFIX}expires"
FIRSTS = "__firsts"  # the batch's rows that are emitted, with their keys


class DeduplicationCompiler(Compiler):
    """The BatchProgram of a deduplication: `plan.keys` are the keys, `plan.deduplication`
    says which of Spark's two operators, and whether the event time reaches it."""

    def compile(self) -> BatchProgram:
        firsts = table(FIRSTS)
        shape = (
            exp.select(*self._state_keys(), exp.alias_(_NO_EXPIRY.copy(), "__expires"))
            .from_(self.candidates().subquery())
            .limit(0)
        )
        setup = (Step("create the state table", create_table(self.table, shape, self.temporary)),)
        remember = exp.insert(
            exp.select(*(column(k) for k in self._batch_keys()), column(EXPIRES)).from_(firsts),
            exp.Schema(
                this=self.table.copy(),
                expressions=[identifier(k) for k in [*self.key_columns, "__expires"]],
            ),
        )
        steps = [
            Step(
                "keep each key's first row of the batch, if the key is not in state",
                create_table(firsts, self.firsts(), temporary=True, replace=True),
            ),
            Step("remember the keys emitted", remember, effect=Effect.ADDS),
            Step("emit the first rows", self.output(), Fetch.EMIT),
        ]
        if self._forgets:
            steps.append(
                Step(
                    "forget keys the watermark passed",
                    delete(
                        self.table, exp.LTE(this=column("__expires"), expression=param("watermark"))
                    ),
                    effect=Effect.REMOVES,
                )
            )
        steps.append(Step("drop the scratch table", drop_table(firsts)))
        statistics = tuple(self.statistics(scan) for scan in self.plan.scans)
        return BatchProgram(setup, statistics, tuple(steps), self.state)

    @property
    def _forgets(self) -> bool:
        dedup = self.plan.deduplication
        return dedup.timed and (dedup.within_watermark or dedup.time_key is not None)

    def _batch_keys(self) -> list[str]:
        return [f"{INTERNAL_PREFIX}k{i}" for i in range(len(self.plan.keys))]

    def _state_keys(self) -> list[exp.Expr]:
        return [
            exp.alias_(column(batch), identifier(state))
            for batch, state in zip(self._batch_keys(), self.key_columns, strict=True)
        ]

    def _expiry(self) -> exp.Expr:
        """When the key of a row is forgotten, over the source row (see the module doc)."""
        plan = self.plan
        if not self._forgets:
            return _NO_EXPIRY.copy()
        time = self._epoch_us(plan.event_time)
        if not plan.deduplication.within_watermark:
            return time
        return fill(template("t + delay"), {"t": time, "delay": plan.scans[0].watermark_delay_us})

    def _accepted(self, query: exp.Select) -> exp.Select:
        """`query` over the rows the operator sees: the query's WHERE, and not late."""
        conditions = [self.plan.where.copy()] if self.plan.where is not None else []
        if self.plan.deduplication.timed:
            late = exp.GT(this=self._epoch_us(self.plan.event_time), expression=param("late"))
            conditions.append(late)
        return query.where(*(exp.paren(c) for c in conditions)) if conditions else query

    def candidates(self) -> exp.Select:
        """The rows the operator sees, each with its key `<prefix>k<i>` and expiry; in input
        order with their position, unless the key is the whole output row."""
        plan = self.plan
        keys = self._batch_keys()
        expiry = exp.alias_(self._expiry(), identifier(EXPIRES))
        if plan.deduplication.over_output:
            projection = [e.copy() for e in plan.projection]
            outputs = self._accepted(exp.select(*projection, expiry).from_(self._rows_as_alias()))
            named = [
                exp.alias_(column(name), identifier(key))
                for name, key in zip(plan.output_names, keys, strict=True)
            ]
            return exp.select("*", *named).from_(outputs.subquery())
        selects = [
            exp.alias_(e.copy(), identifier(k)) for e, k in zip(plan.keys, keys, strict=True)
        ]
        return self._accepted(
            exp.select("*", *selects, expiry).from_(aliased(self.numbered_rows(), plan.alias))
        )

    def numbered_rows(self) -> exp.Query:
        """The source's rows, each with its position in the batch's Arrow input: the input
        joined by position (POSITIONAL JOIN) with 0, 1, 2, ..., before any column is
        computed or any row filtered."""
        view = self.plan.scans[0].view
        count = exp.select(fn("count", exp.Star())).from_(table(view)).subquery()
        positions = exp.select(exp.alias_(column("range"), identifier(SEQUENCE))).from_(
            exp.Table(this=fn("range", count))
        )
        numbered = aliased(
            exp.select("*")
            .from_(table(view))
            .join(exp.Join(this=positions.subquery(), method="POSITIONAL")),
            view,
        )
        return self.scan_rows(self.plan.scans[0]).transform(
            lambda node: (
                numbered.copy() if isinstance(node, exp.Table) and node.name == view else node
            )
        )

    def firsts(self) -> exp.Select:
        keys = self._batch_keys()
        order = None if self.plan.deduplication.over_output else [column(SEQUENCE)]
        known = exp.and_(
            *(
                exp.NullSafeEQ(this=column(state, "__state"), expression=column(batch, "__batch"))
                for batch, state in zip(keys, self.key_columns, strict=True)
            )
        )
        rank = exp.Window(
            this=fn("row_number"),
            partition_by=[column(k) for k in keys],
            order=exp.Order(expressions=[exp.Ordered(this=c.copy()) for c in order])
            if order
            else None,
        )
        ranked = exp.select("*", exp.alias_(rank, identifier(RANK))).from_(
            self.candidates().subquery()
        )
        query = (
            exp.select(star(RANK, table="__batch"))
            .from_(aliased(ranked, "__batch"))
            .join(aliased(self.table, "__state"), on=known, join_type="ANTI")
            .where(exp.EQ(this=column(RANK, "__batch"), expression=exp.Literal.number(1)))
        )
        return query.order_by(*order) if order else query

    def output(self) -> exp.Select:
        """The user's select list over the emitted rows (already projected for DISTINCT)."""
        plan = self.plan
        internal = [*self._batch_keys(), EXPIRES]
        if plan.deduplication.over_output:
            return exp.select(star(*internal)).from_(table(FIRSTS))
        rows = exp.select(star(SEQUENCE, *internal)).from_(table(FIRSTS))
        projection = [e.copy() for e in plan.projection]
        return exp.select(*projection).from_(aliased(rows, plan.alias))


_NO_EXPIRY = exp.cast(exp.null(), "BIGINT")
