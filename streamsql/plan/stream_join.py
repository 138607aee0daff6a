"""Planning a join of two streams: its sides, and when each side's state can go.

Spark's rules (StreamingJoinHelper.getStateValueWatermark, StreamingSymmetricHashJoinHelper
.getOneSideStateWatermarkPredicate, UnsupportedOperationChecker
.checkForStreamStreamJoinWatermark):
- a side's rows can leave state once no row of the other side can match them: the ON clause
  bounds this side's event time from below by the other side's, `this >= other + c`, and
  rows of the other side still to come are above the watermark (they would be late
  otherwise), so rows with `this <= W + c - 1 ms` go (`>`: `<= W + c`); over several such
  conjuncts, the smallest bound (Spark takes the min);
- equal event times of both sides (`a.ts = b.ts`, a watermark in the join keys) evict at
  `ts <= W` on both sides;
- an outer join needs a bound on its preserved side(s), a left semi join on its left side:
  otherwise no row could ever be emitted with NULLs (refused, as in Spark); an inner join
  without one runs with a warning, its state growing without bound.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from streamsql.catalog.definitions import INTERNAL_PREFIX
from streamsql.errors import PlanningError
from streamsql.plan.plan import JoinSide, JoinType, Scan, StreamJoin
from streamsql.plan.relation import join_type
from streamsql.sql import position_of

MILLISECOND = 1000

# A time term of ON: (side alias, column, offset in microseconds): `alias.column + offset`.
Term = tuple[str, str, int]


def plan_stream_join(
    relation: exp.Select,
    scans: dict[str, Scan],
    interval_us: Callable[[exp.Expr], int],
) -> StreamJoin:
    """The join of `relation` (FROM one source JOIN another ON ..., its columns renamed
    apart), with its sides' state bounds; refuses the joins Spark refuses."""
    join = relation.args["joins"][0]
    kind = join_type(join)
    tables = [relation.args["from_"].this, join.this]
    names: dict[str, list[tuple[str, str]]] = {t.alias_or_name.lower(): [] for t in tables}
    for item in relation.expressions:
        names[item.this.table.lower()].append((item.this.name, item.alias))
    condition = join.args["on"]
    sides = []
    for table in tables:
        scan = scans[table.name]
        if not names[table.alias_or_name.lower()]:  # the right of a semi join: not output
            prefix = f"{INTERNAL_PREFIX}{table.alias_or_name}_"
            names[table.alias_or_name.lower()] = [(c, prefix + c) for c in scan.column_names]
        sides.append(
            JoinSide(
                table.alias_or_name,
                scan.view,
                tuple(names[table.alias_or_name.lower()]),
                scan.event_time if scan.has_watermark else None,
            )
        )
    bounds = _bounds(condition, sides, interval_us)
    left, right = (
        JoinSide(s.alias, s.view, s.columns, s.event_time, bounds.get(s.alias.lower()))
        for s in sides
    )
    stream_join = StreamJoin(kind, left, right, condition.copy())
    needed = {JoinType.SEMI: (left,), JoinType.LEFT: (left,), JoinType.RIGHT: (right,)}.get(
        kind, (left, right) if kind is JoinType.FULL else ()
    )
    missing = [side for side in needed if side.bound is None]
    if missing:
        other = right if missing[0] is left else left
        raise PlanningError(
            f"Stream-stream {kind.value} join needs a watermark on {other.alias} and a time "
            f"range in ON that bounds {missing[0].alias}'s event time from below by "
            f"{other.alias}'s (as in ON {other.alias}.ts BETWEEN {missing[0].alias}.ts AND "
            f"{missing[0].alias}.ts + INTERVAL '1 hour'): a row of {missing[0].alias} is "
            "emitted with NULLs only once the watermark proves that no row can match it any "
            "more, and without such a bound that never happens (Spark refuses it too)",
            rule="stream-stream-outer-join-needs-bound",
            position=position_of(join),
        )
    return stream_join


def _bounds(
    condition: exp.Expr, sides: list[JoinSide], interval_us: Callable[[exp.Expr], int]
) -> dict[str, tuple[str, int]]:
    """Each side's state bound, by alias: (column, offset) for `column <= W + offset`."""
    watermarked = {s.alias.lower(): s.event_time.lower() for s in sides if s.event_time}
    found: dict[str, list[tuple[str, int]]] = {}
    keyed: dict[str, tuple[str, int]] = {}
    for lower, upper, strict in _comparisons(condition, interval_us):
        # lower + a (<|<=) upper + b, on two sides: upper's side >= lower's + a - b.
        if lower[0] == upper[0]:
            continue
        if watermarked.get(lower[0]) == lower[1].lower():
            offset = lower[2] - upper[2] - (0 if strict else MILLISECOND)
            found.setdefault(upper[0], []).append((upper[1], offset))
    for eq in condition.find_all(exp.EQ):
        terms = [_term(e, interval_us) for e in (eq.this, eq.expression)]
        if (
            all(t and t[2] == 0 and watermarked.get(t[0]) == t[1].lower() for t in terms)
            and terms[0][0] != terms[1][0]
        ):
            keyed.update({t[0]: (t[1], 0) for t in terms})
    bounds = {alias: min(options, key=lambda b: b[1]) for alias, options in found.items()}
    return {**bounds, **keyed}


def _comparisons(
    condition: exp.Expr, interval_us: Callable[[exp.Expr], int]
) -> list[tuple[Term, Term, bool]]:
    """The conjuncts of ON that compare two time terms, as (lower, upper, strict)."""
    conjuncts = condition.flatten() if isinstance(condition, exp.And) else [condition]
    pairs: list[tuple[exp.Expr, exp.Expr, bool]] = []
    for c in conjuncts:
        c = c.unnest()
        if isinstance(c, exp.Between):
            pairs += [(c.args["low"], c.this, False), (c.this, c.args["high"], False)]
        elif isinstance(c, (exp.LT, exp.LTE)):
            pairs.append((c.this, c.expression, isinstance(c, exp.LT)))
        elif isinstance(c, (exp.GT, exp.GTE)):
            pairs.append((c.expression, c.this, isinstance(c, exp.GT)))
        elif isinstance(c, exp.EQ):
            pairs += [(c.this, c.expression, False), (c.expression, c.this, False)]
    found = []
    for low, high, strict in pairs:
        lower, upper = _term(low, interval_us), _term(high, interval_us)
        if lower and upper:
            found.append((lower, upper, strict))
    return found


def _term(node: exp.Expr, interval_us: Callable[[exp.Expr], int]) -> Term | None:
    """`alias.column`, `alias.column + INTERVAL ...` or `- INTERVAL ...`, else None."""
    node = node.unnest()
    if isinstance(node, exp.Column) and node.table:
        return node.table.lower(), node.name, 0
    if isinstance(node, (exp.Add, exp.Sub)):
        column, interval = node.this.unnest(), node.expression.unnest()
        if isinstance(node, exp.Add) and isinstance(column, exp.Interval):
            column, interval = interval, column
        if isinstance(column, exp.Column) and column.table and isinstance(interval, exp.Interval):
            sign = 1 if isinstance(node, exp.Add) else -1
            return column.table.lower(), column.name, sign * interval_us(interval)
    return None
