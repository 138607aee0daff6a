"""One operator of a query as the runtime runs it (Spark's StatefulOperator): its plan, its
per-batch program, the watermark it runs under, and what it keeps between batches.

A query is a chain of operators: the first reads the sources, each next one reads the rows the
one before it emitted in the same batch. The watermark an operator passes on is the one it runs
under plus its `output_watermark_shift` (Spark's produceOutputWatermark), so each operator
runs under the query's watermark plus a fixed shift: in batch N its late-row threshold is
L_N + shift and its eviction watermark W_N + shift, and the eviction watermark of one
operator is the late-row threshold of the next in the batch after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from streamsql.incremental.compiler import BatchProgram
from streamsql.plan.plan import StreamingPlan


@dataclass
class StatefulOperator:
    plan: StreamingPlan
    program: BatchProgram
    index: int = 0  # its place in the chain, from the one reading the sources
    state_rows: int = 0
    compacted_rows: int = 0  # state rows after the last compaction
    # No window in state ends before this (None: no windows): closing steps run only when it
    # is at or below the watermark.
    earliest_end: int | None = None
    # By the batch in flight: state rows updated and removed, input rows dropped as late.
    updated: int = 0
    removed: int = 0
    late_rows: int = 0
    empty_output: pa.Table | None = None  # what it emits over no rows, typed

    @property
    def state_table(self) -> str | None:
        return self.program.state_table

    def watermark(self, query_watermark: int | None) -> int | None:
        """The query's watermark (or late threshold) as this operator sees it."""
        shift = self.plan.watermark_shift
        return None if query_watermark is None else query_watermark + shift

    def values(self, late: int | None, watermark: int | None) -> dict[str, Any]:
        """The thresholds of this operator's statements in a batch run under the query's
        late threshold `late` and watermark `watermark`."""
        late = self.watermark(late)
        return {
            "late": late,
            "watermark": self.watermark(watermark),
            "late_cutoff": self.plan.late_cutoff(late),
        }

    def should_run_another_batch(self, watermark: int | None, late: int | None) -> bool:
        """Spark's shouldRunAnotherBatch: the watermark moved past the one in force during
        the last batch, and this operator closes or evicts something by it."""
        return self.plan.runs_no_data_batches and watermark is not None and watermark > late

    def begin_batch(self) -> None:
        self.updated = self.removed = self.late_rows = 0

    def metrics(self) -> dict[str, Any]:
        """Spark's StateOperatorProgress of this operator's state."""
        return {
            "operator": self.plan.kind.value,
            "num_rows_total": self.state_rows,
            "num_rows_updated": self.updated,
            "num_rows_removed": self.removed,
            "num_rows_dropped_by_watermark": self.late_rows,
            **({"unbounded": True} if self.plan.join and self.plan.join.unbounded else {}),
        }


def chain_of(plan: StreamingPlan, programs: list[BatchProgram]) -> list[StatefulOperator]:
    """The operators of `plan`'s chain with their programs."""
    return [
        StatefulOperator(operator, program, index)
        for index, (operator, program) in enumerate(zip(plan.chain, programs, strict=True))
    ]
