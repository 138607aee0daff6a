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
    ident,
    sql_of,
)

SEQUENCE = f"{INTERNAL_PREFIX}seq"  # a row's position in the batch's input
RANK = f"{INTERNAL_PREFIX}rank"
EXPIRES = f"{INTERNAL_PREFIX}expires"
FIRSTS = "__firsts"  # the batch's rows that are emitted, with their keys


class DeduplicationCompiler(Compiler):
    """The BatchProgram of a deduplication: `plan.keys` are the keys, `plan.deduplication`
    says which of Spark's two operators, and whether the event time reaches it."""

    def compile(self) -> BatchProgram:
        setup = (
            f"CREATE {'TEMP ' if self.temporary else ''}TABLE IF NOT EXISTS {self.state} AS "
            f"SELECT {', '.join(self._state_keys())}, CAST(NULL AS BIGINT) AS __expires "
            f"FROM ({self.candidates()}) LIMIT 0",
        )
        steps = [
            Step(
                "keep each key's first row of the batch, if the key is not in state",
                f"CREATE OR REPLACE TEMP TABLE {FIRSTS} AS {self.firsts()}",
            ),
            Step(
                "remember the keys emitted",
                f"INSERT INTO {self.state} ({', '.join(self.key_columns)}, __expires) "
                f"SELECT {', '.join(self._batch_keys())}, {EXPIRES} FROM {FIRSTS}",
                effect=Effect.ADDS,
            ),
            Step("emit the first rows", self.output(), Fetch.EMIT),
        ]
        if self._forgets:
            steps.append(
                Step(
                    "forget keys the watermark passed",
                    f"DELETE FROM {self.state} WHERE __expires <= $watermark",
                    effect=Effect.REMOVES,
                )
            )
        steps.append(Step("drop the scratch table", f"DROP TABLE {FIRSTS}"))
        statistics = tuple(self.statistics(scan) for scan in self.plan.scans)
        return BatchProgram(setup, statistics, tuple(steps), self.state)

    @property
    def _forgets(self) -> bool:
        dedup = self.plan.deduplication
        return dedup.timed and (dedup.within_watermark or dedup.time_key is not None)

    def _batch_keys(self) -> list[str]:
        return [f"{INTERNAL_PREFIX}k{i}" for i in range(len(self.plan.keys))]

    def _state_keys(self) -> list[str]:
        return [
            f"{batch} AS {state}"
            for batch, state in zip(self._batch_keys(), self.key_columns, strict=True)
        ]

    def _expiry(self) -> str:
        """When the key of a row is forgotten, over the source row (see the module doc)."""
        plan = self.plan
        if not self._forgets:
            return "CAST(NULL AS BIGINT)"
        time = self._epoch_us(plan.event_time)
        delay = plan.scans[0].watermark_delay_us
        return f"{time} + {delay}" if plan.deduplication.within_watermark else time

    def _accepted(self) -> str:
        """The WHERE of the rows the operator sees: the query's, and not late."""
        conditions = [sql_of(self.plan.where)] if self.plan.where is not None else []
        if self.plan.deduplication.timed:
            conditions.append(f"{self._epoch_us(self.plan.event_time)} > $late")
        return f" WHERE {' AND '.join(f'({c})' for c in conditions)}" if conditions else ""

    def candidates(self) -> str:
        """The rows the operator sees, each with its key `<prefix>k<i>` and expiry; in input
        order with their position, unless the key is the whole output row."""
        plan = self.plan
        alias = ident(plan.alias)
        keys = self._batch_keys()
        if plan.deduplication.over_output:
            projection = ", ".join(sql_of(e) for e in plan.projection)
            outputs = (
                f"SELECT {projection}, {self._expiry()} AS {EXPIRES} "
                f"FROM {self.rows()} AS {alias}{self._accepted()}"
            )
            named = ", ".join(
                f"{ident(name)} AS {key}" for name, key in zip(plan.output_names, keys, strict=True)
            )
            return f"SELECT *, {named} FROM ({outputs})"
        selects = [f"{sql_of(e)} AS {k}" for e, k in zip(plan.keys, keys, strict=True)]
        return (
            f"SELECT *, {', '.join(selects)}, {self._expiry()} AS {EXPIRES} "
            f"FROM {self.numbered_rows()} AS {alias}{self._accepted()}"
        )

    def numbered_rows(self) -> str:
        """The source's rows, each with its position in the batch's Arrow input: the input
        joined by position (POSITIONAL JOIN) with 0, 1, 2, ..., before any column is
        computed or any row filtered."""
        view = self.plan.scans[0].view
        count = exp.select(exp.func("count", exp.Star())).from_(view).subquery()
        positions = exp.select(exp.column("range").as_(SEQUENCE)).from_(
            exp.Table(this=exp.func("range", count))
        )
        numbered = (
            exp.select("*")
            .from_(view)
            .join(exp.Join(this=positions.subquery(), method="POSITIONAL"))
            .subquery(view)
        )
        rows = self.scan_rows(self.plan.scans[0]).transform(
            lambda node: (
                numbered.copy() if isinstance(node, exp.Table) and node.name == view else node
            )
        )
        return f"({sql_of(rows)})"

    def firsts(self) -> str:
        keys = self._batch_keys()
        order = "" if self.plan.deduplication.over_output else f" ORDER BY {SEQUENCE}"
        known = " AND ".join(
            f"__state.{state} IS NOT DISTINCT FROM __batch.{batch}"
            for batch, state in zip(keys, self.key_columns, strict=True)
        )
        return (
            f"SELECT __batch.* EXCLUDE ({RANK}) FROM (SELECT *, row_number() OVER "
            f"(PARTITION BY {', '.join(keys)}{order}) AS {RANK} FROM ({self.candidates()})) "
            f"AS __batch ANTI JOIN {self.state} AS __state ON {known} "
            f"WHERE __batch.{RANK} = 1{order}"
        )

    def output(self) -> str:
        """The user's select list over the emitted rows (already projected for DISTINCT)."""
        plan = self.plan
        internal = [*self._batch_keys(), EXPIRES]
        if plan.deduplication.over_output:
            return f"SELECT * EXCLUDE ({', '.join(internal)}) FROM {FIRSTS}"
        rows = f"SELECT * EXCLUDE ({', '.join([SEQUENCE, *internal])}) FROM {FIRSTS}"
        projection = ", ".join(sql_of(e) for e in plan.projection)
        return f"SELECT {projection} FROM ({rows}) AS {ident(plan.alias)}"
