"""Prometheus metrics: scraped over HTTP from a running engine (in process, and a
`streamsql run --metrics-port` subprocess) and checked against the progress records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

import streamsql
from streamsql.testing.broker import Broker, free_port

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (
    "CREATE SOURCE src (k VARCHAR, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') "
    "WITH (connector = 'files', path = '{path}', max_files_per_trigger = 1)"
)
SINK = (
    "CREATE SINK counts WITH (connector = 'duckdb') AS "
    "SELECT window_start, k, count(*) AS n FROM src "
    "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, k EMIT FINAL"
)
FILES = {  # one batch each: rows, a late row (batch 2 drops at or below W_1 = 00:01) and
    # a line that is not JSON (a dead letter)
    "b0.json": '{"k": "a", "ts": "2024-01-01 00:00:00"}\n{"k": "b", "ts": "2024-01-01 00:02:00"}\n',
    "b1.json": '{"k": "a", "ts": "2024-01-01 00:10:00"}\nnot json\n',
    "b2.json": '{"k": "a", "ts": "2024-01-01 00:00:30"}\n{"k": "b", "ts": "2024-01-01 00:11:00"}\n',
}


def put_files(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (directory / name).write_text(text)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_and_histogram_equal_the_progress_records(tmp_path: Path) -> None:
    put_files(tmp_path / "in")
    with streamsql.connect(str(tmp_path / "engine.db")) as con:
        port = con.serve_metrics(0)
        con.execute(SOURCE.format(path=tmp_path / "in"))
        con.execute(SINK)
        query = con.query("counts")
        query.process_all_available(60)
        samples = scrape(port)  # while the query runs
        progress = list(query.recent_progress)
        assert query.is_active
    assert len(progress) >= 3
    totals = {
        field: sum(getattr(p, field) for p in progress)
        for field in ("num_input_rows", "num_output_rows", "num_late_rows", "num_dead_letters")
    }
    assert totals["num_late_rows"] == 1 and totals["num_dead_letters"] == 1
    for field, total in totals.items():
        name = f"streamsql_{field.removeprefix('num_')}_total"
        assert value(samples, name, query="counts") == total, name
    assert value(samples, "streamsql_batch_duration_seconds_count", query="counts") == len(progress)
    assert value(samples, "streamsql_batch_duration_seconds_sum", query="counts") == pytest.approx(
        sum(p.duration_ms["total"] for p in progress) / 1000
    )
    assert value(samples, "streamsql_state_rows", query="counts") == progress[-1].state_rows
    # the watermark is 00:10 on 2024-01-01: nearly the time since then
    expected = time.time() - 1_704_067_800
    delay = value(samples, "streamsql_watermark_delay_seconds", query="counts")
    assert expected - 60 < delay <= expected
    assert value(samples, "streamsql_source_available", query="counts", source="src") == 1


def test_two_engines_in_one_process_have_metrics_of_their_own(tmp_path: Path) -> None:
    put_files(tmp_path / "in")
    with (
        streamsql.connect(str(tmp_path / "one.db"), trigger="available_now") as one,
        streamsql.connect(str(tmp_path / "two.db"), metrics_port=free_port()) as two,
    ):
        one_port = one.serve_metrics(0)
        one.execute(SOURCE.format(path=tmp_path / "in"))
        one.execute(SINK)
        one.query("counts").await_termination(60)
        two.execute(SOURCE.format(path=tmp_path / "in"))
        two_port = two.engine.metrics.port
        assert one_port != two_port
        assert value(scrape(one_port), "streamsql_input_rows_total", query="counts") == 5
        assert not any(name.startswith("streamsql_input") for name, _ in scrape(two_port))


def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with streamsql.connect(str(tmp_path / "one.db")) as one:
        port = one.serve_metrics(0)
        with pytest.raises(streamsql.OperationalError, match=f"127.0.0.1:{port}"):
            streamsql.connect(str(tmp_path / "two.db"), metrics_port=port)
        with pytest.raises(streamsql.OperationalError, match="already served"):
            one.serve_metrics(0)
    # the engine that could not serve was closed: its database opens again
    streamsql.connect(str(tmp_path / "two.db")).close()


def test_a_port_out_of_range_is_refused_by_the_command(tmp_path: Path) -> None:
    sql = tmp_path / "job.sql"
    sql.write_text("SELECT 1;\n")
    command = [sys.executable, "-m", "streamsql.cli", "run", str(sql), "--metrics-port", "70000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == "Error: Metrics port 70000 is not a TCP port (0 to 65535)\n"


def test_streamsql_run_serves_metrics_while_it_runs(tmp_path: Path) -> None:
    put_files(tmp_path / "in")
    sql = tmp_path / "job.sql"
    sql.write_text(SOURCE.format(path=tmp_path / "in") + ";\n" + SINK + ";\n")
    db = tmp_path / "app.db"
    port = free_port()
    command = ["run", str(sql), "--db", str(db), "--metrics-port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    running = subprocess.Popen(
        [sys.executable, "-m", "streamsql.cli", *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        samples: dict = {}
        while time.monotonic() < deadline:
            try:
                samples = scrape(port)
            except OSError:  # not listening yet
                samples = {}
            # three files, then a no-data batch closing windows with the watermark they moved
            seen = samples.get(("streamsql_batch_duration_seconds_count", (("query", "counts"),)))
            if seen == 4:
                break
            time.sleep(0.1)
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 0, err
    assert f"Metrics at http://127.0.0.1:{port}/metrics" in err
    with duckdb.connect(str(db), read_only=True) as committed:
        batches, input_rows, output_rows = committed.execute(
            "SELECT count(*), sum(input_rows), sum(output_rows) FROM _streamsql.commits "
            "WHERE query = 'counts'"
        ).fetchone()
    assert value(samples, "streamsql_input_rows_total", query="counts") == input_rows == 5
    assert value(samples, "streamsql_output_rows_total", query="counts") == output_rows
    assert value(samples, "streamsql_batch_duration_seconds_count", query="counts") == batches == 4
    assert value(samples, "streamsql_late_rows_total", query="counts") == 1
    assert value(samples, "streamsql_dead_letters_total", query="counts") == 1


def kafka_copy(
    con: streamsql.Connection, broker: Broker, topic: str, trigger: str, options: str
) -> None:
    """Source `ev` on the topic, and sink `out` copying it with `trigger`."""
    con.execute(
        "CREATE SOURCE ev (user_id BIGINT) WITH (connector = 'kafka', "
        f"bootstrap_servers = '{broker.bootstrap_servers}', topic = '{topic}', "
        f"format = 'json', starting_offsets = 'earliest', {options})"
    )
    con.execute(
        f"CREATE SINK out WITH (connector = 'duckdb', trigger = '{trigger}') "
        "AS SELECT user_id FROM ev"
    )


@pytest.fixture
def producer(broker: Broker) -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    yield client
    client.close()


def test_kafka_lag_per_partition(broker: Broker, producer: KafkaProducer, tmp_path: Path) -> None:
    topic = broker.create_topic(2)
    for partition, count in ((0, 30), (1, 10)):
        for _ in range(count):
            producer.send(topic, b'{"user_id": 1}', partition=partition)
    producer.flush()
    with streamsql.connect(str(tmp_path / "engine.db")) as con:
        port = con.serve_metrics(0)
        # one batch of a trigger that waits an hour for the next (`once` reads everything)
        kafka_copy(con, broker, topic, "1 hour", "max_offsets_per_trigger = 8")
        query = con.query("out")
        deadline = time.monotonic() + 30
        while query.last_progress is None and time.monotonic() < deadline:
            time.sleep(0.05)
        samples = scrape(port)
    lag = {
        dict(labels)["partition"]: sample
        for (name, labels), sample in samples.items()
        if name == "streamsql_kafka_lag_records"
    }
    assert lag == {"0": 24, "1": 8}  # shares of 8: 30/40 -> 6, 10/40 -> 2
    labels = dict(next(labels for name, labels in samples if name == "streamsql_kafka_lag_records"))
    assert labels == {"query": "out", "source": "ev", "topic": topic, "partition": "0"}
    assert value(samples, "streamsql_input_rows_total", query="out") == 8


def test_source_availability_follows_a_broker_outage(tmp_path: Path) -> None:
    with Broker() as private, KafkaProducer(bootstrap_servers=private.bootstrap_servers) as send:
        topic = private.create_topic(1)
        send.send(topic, b'{"user_id": 1}').get(timeout=30)
        with streamsql.connect(str(tmp_path / "engine.db")) as con:
            port = con.serve_metrics(0)
            options = "request_timeout = '1 second', connect_timeout = '1 second'"
            kafka_copy(con, private, topic, "100 ms", options)
            query = con.query("out")
            query.process_all_available(60)
            available = {"query": "out", "source": "ev"}
            assert value(scrape(port), "streamsql_source_available", **available) == 1
            send.send(topic, b'{"user_id": 2}').get(timeout=30)
            private.pause()
            try:
                deadline = time.monotonic() + 15
                while query.status["source_available"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert value(scrape(port), "streamsql_source_available", **available) == 0
            finally:
                private.resume()
            query.process_all_available(60)
            samples = scrape(port)
    assert value(samples, "streamsql_source_available", **available) == 1
    assert value(samples, "streamsql_input_rows_total", query="out") == 2


def test_counters_count_from_the_process_start_not_from_the_checkpoint(tmp_path: Path) -> None:
    """A reopened database resumes its sink: its counters start at 0 and count the batches
    this process runs (Prometheus takes the drop as a counter reset)."""
    put_files(tmp_path / "in")
    db = str(tmp_path / "engine.db")
    with streamsql.connect(db, trigger="available_now") as con:
        con.execute(SOURCE.format(path=tmp_path / "in"))
        con.execute(SINK)
        con.query("counts").await_termination(60)
    (tmp_path / "in" / "b3.json").write_text('{"k": "c", "ts": "2024-01-01 00:20:00"}\n')
    with streamsql.connect(db, trigger="available_now", metrics_port=0) as con:
        query = con.query("counts")
        query.await_termination(60)
        samples = scrape(con.engine.metrics.port)
        progress = list(query.recent_progress)
    assert [p.batch_id for p in progress] == [4, 5]  # the new file, then a no-data batch
    assert value(samples, "streamsql_input_rows_total", query="counts") == 1
    assert value(samples, "streamsql_batch_duration_seconds_count", query="counts") == 2
