"""The global watermark of a query that reads several sources (Spark's WatermarkTracker)."""

from __future__ import annotations

from streamsql.plan.plan import StreamingPlan, WatermarkPolicy


class WatermarkTracker:
    """Each source with a watermark has its own: its max event time (ms precision) minus its
    delay, or the epoch while it has produced no row. The global watermark is the min of
    them (Spark's default multipleWatermarkPolicy, so that no source's rows are late before
    their time) or the max, and never moves backwards."""

    def __init__(self, plan: StreamingPlan) -> None:
        self.delays = {s.name: s.watermark_delay_us for s in plan.scans if s.has_watermark}
        self.policy = plan.watermark_policy

    def advance(self, watermark: int | None, max_events: dict[str, int | None]) -> int | None:
        """The watermark for the next batch, after one run under `watermark` with each
        source's max event time so far."""
        if watermark is None or not self.delays:
            return watermark
        own = [self.own(name, max_events) for name in self.delays]
        chosen = min(own) if self.policy is WatermarkPolicy.MIN else max(own)
        return max(watermark, chosen)

    def own(self, name: str, max_events: dict[str, int | None]) -> int:
        """A source's own watermark (it has one): the epoch while it has produced no row."""
        known = max_events.get(name)
        return 0 if known is None else known - self.delays[name]
