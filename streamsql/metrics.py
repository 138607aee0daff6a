"""Prometheus metrics of an engine's sink queries, fed from their progress records.

Each engine has a registry of its own (never prometheus_client's global one), so two
engines in one process do not clash. Counters and the batch-duration histogram grow by
each progress record as the query thread appends it (per batch, no per-row work); gauges
are read from the queries' last progress and status when scraped. Counters live as long
as the process: a restart starts them at 0 again, which Prometheus' rate() and increase()
treat as a counter reset.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamsql.errors import OperationalError, ProgrammingError
from streamsql.runtime.query import StreamingQuery

# From a millisecond batch to a stalled one of minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# (counter name without _total, help, the progress record's field)
COUNTERS = (
    ("streamsql_input_rows", "Rows read from the source", "num_input_rows"),
    ("streamsql_output_rows", "Rows emitted to the sink", "num_output_rows"),
    ("streamsql_late_rows", "Rows dropped as late (behind the watermark)", "num_late_rows"),
    ("streamsql_dead_letters", "Records that could not be decoded", "num_dead_letters"),
)


class EngineMetrics:
    """The metrics of one engine's sink queries, and the HTTP endpoint serving them."""

    def __init__(self, queries: Callable[[], list[StreamingQuery]]) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            field: Counter(name, help_, ["query"], registry=self.registry)
            for name, help_, field in COUNTERS
        }
        self._durations = Histogram(
            "streamsql_batch_duration_seconds",
            "Time a micro-batch took, from planning to commit",
            ["query"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_QueryGauges(queries))
        self._counted: weakref.WeakKeyDictionary[StreamingQuery, int] = (
            weakref.WeakKeyDictionary()
        )  # the last batch id counted, per query run
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None

    def observe(self, query: StreamingQuery) -> None:
        """Count the progress records `query` appended since the last call (called after
        each of its batches)."""
        with self._lock:
            last = self._counted.get(query, -1)
            records = [p for p in list(query.recent_progress) if p.batch_id > last]
            for field, counter in self._counters.items():
                child = counter.labels(query=query.name)  # shown at 0 before any batch
                for progress in records:
                    child.inc(getattr(progress, field))
            durations = self._durations.labels(query=query.name)
            for progress in records:
                durations.observe(progress.duration_ms["total"] / 1000)
            if records:
                self._counted[query] = records[-1].batch_id

    @property
    def port(self) -> int | None:
        """The port /metrics is served on, None while not served."""
        return None if self._server is None else self._server.server_address[1]

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP on host:port (0: any free port); returns the port."""
        if not 0 <= port <= 65535:
            raise ProgrammingError(f"Metrics port {port} is not a TCP port (0 to 65535)")
        if self._server is not None:
            raise OperationalError(f"Metrics are already served on port {self.port}")
        try:
            self._server, _ = start_http_server(port, host, self.registry)
        except OSError as error:
            raise OperationalError(
                f"Cannot serve metrics on {host}:{port}: {error.strerror or error}"
            ) from None
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _QueryGauges(Collector):
    """What a query's last progress and status say now, read at each scrape."""

    def __init__(self, queries: Callable[[], list[StreamingQuery]]) -> None:
        self._queries = queries

    def collect(self) -> Iterator[Metric]:
        delay = GaugeMetricFamily(
            "streamsql_watermark_delay_seconds",
            "Wall clock minus the query's event-time watermark",
            labels=["query"],
        )
        state = GaugeMetricFamily(
            "streamsql_state_rows", "Rows in the query's state table", labels=["query"]
        )
        available = GaugeMetricFamily(
            "streamsql_source_available",
            "1 while the query's source answers, 0 while it is retried",
            labels=["query", "source"],
        )
        lag = GaugeMetricFamily(
            "streamsql_kafka_lag_records",
            "Records in a Kafka partition beyond the query's last batch, as of that batch",
            labels=["query", "source", "topic", "partition"],
        )
        now_us = time.time() * 1_000_000
        for query in self._queries():
            for source in query.execution.sources:
                available.add_metric(
                    [query.name, source],
                    0.0 if query.unavailable_since and query.unavailable_source == source else 1.0,
                )
            watermark = query.execution.watermark
            if watermark:  # None or 0: no event time seen yet
                delay.add_metric([query.name], (now_us - watermark) / 1_000_000)
            progress = query.last_progress
            if progress is None:
                continue
            if query.execution.stateful:
                state.add_metric([query.name], progress.state_rows)
            for source in progress.sources:
                for partition, records in (source.get("lag_by_partition") or {}).items():
                    topic, number = partition.rsplit("-", 1)
                    lag.add_metric([query.name, source["source"], topic, number], records)
        yield from (delay, state, available, lag)
