"""The PostgreSQL endpoint, with the real clients: the psql binary and psycopg, against
`streamsql run --serve` in a subprocess (and an endpoint in this process for the types)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import streamsql
from streamsql.errors import OperationalError
from streamsql.server import ServeOptions, Server, endpoint_file
from streamsql.shell import main as shell_main
from streamsql.testing.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
PSQL = "/usr/bin/psql"

FILES_JOB = """
CREATE SOURCE src (id BIGINT, v VARCHAR)
WITH (connector = 'files', path = '{input}', format = 'json', max_files_per_trigger = 1);
CREATE SINK out WITH (connector = 'duckdb', trigger = '50 milliseconds') AS
SELECT id, v FROM src;
"""


@contextlib.contextmanager
def serving(
    tmp_path: Path, sql: str, *flags: str, env: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """`streamsql run job.sql --db app.db --serve 127.0.0.1:0` until the block ends (Ctrl-C);
    yields the endpoint it advertises next to the database."""
    (tmp_path / "job.sql").write_text(sql)
    db = tmp_path / "app.db"
    command = ["run", str(tmp_path / "job.sql"), "--db", str(db), "--serve", "127.0.0.1:0"]
    running = subprocess.Popen(
        [sys.executable, "-m", "streamsql.cli", *command, *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        advertised = endpoint_file(str(db))
        deadline = time.monotonic() + 60
        while not advertised.exists():
            assert running.poll() is None, running.stderr.read() if running.stderr else ""
            assert time.monotonic() < deadline, "no endpoint advertised"
            time.sleep(0.05)
        endpoint = json.loads(advertised.read_text())
        assert endpoint["pid"] == running.pid and endpoint["host"] == "127.0.0.1"
        yield {**endpoint, "db": str(db)}
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=60)
        assert running.returncode == 0, err
        assert not advertised.exists()  # withdrawn on exit
    finally:
        running.kill()
        running.wait()


def psql(endpoint: dict[str, Any], *commands: str, password: str | None = None) -> str:
    """psql -h 127.0.0.1 -p PORT with nothing else: any user, any database."""
    arguments = [PSQL, "-h", "127.0.0.1", "-p", str(endpoint["port"]), "-X", "-A", "-t"]
    for command in commands:
        arguments += ["-c", command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=60, env=env)
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    return result.stdout


def connect(endpoint: dict[str, Any], table: str, **options: Any) -> psycopg.Connection:
    """A psycopg connection once the job's sink has created `table` (the endpoint serves
    from the start, before the file's statements have run)."""
    conn = psycopg.connect(host="127.0.0.1", port=endpoint["port"], autocommit=True, **options)
    deadline = time.monotonic() + 60
    while not conn.execute(
        "SELECT 1 FROM duckdb_tables() WHERE table_name = %s", [table]
    ).fetchall():
        assert time.monotonic() < deadline, f"no table {table}"
        time.sleep(0.05)
    return conn


def write_files(directory: Path, sizes: list[int], pause: float) -> None:
    """File k holds sizes[k] rows; each appears whole (written aside, then renamed in)."""
    for number, size in enumerate(sizes):
        staged = directory.parent / f"{number:04d}.json"
        rows = (json.dumps({"id": number * 1000 + i, "v": f"f{number}"}) for i in range(size))
        staged.write_text("\n".join(rows) + "\n")
        staged.rename(directory / staged.name)
        time.sleep(pause)


def test_readers_see_committed_batches_only_while_a_query_runs(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    sizes = [k + 1 for k in range(40)]  # totals after each batch: 1, 3, 6, 10, ...
    totals = {sum(sizes[: k + 1]) for k in range(len(sizes))} | {0}
    with serving(tmp_path, FILES_JOB.format(input=directory)) as endpoint:
        writer = threading.Thread(target=write_files, args=(directory, sizes, 0.03))
        writer.start()
        seen: list[int] = []
        with connect(endpoint, "out") as conn:
            while True:
                count, committed = conn.execute(
                    "SELECT (SELECT count(*) FROM out), "
                    "(SELECT coalesce(sum(output_rows), 0) FROM _streamsql.commits "
                    "WHERE query = 'out')"
                ).fetchone()
                assert count == committed and count in totals, (count, committed)
                seen.append(count)
                if count == sum(sizes):
                    break
                time.sleep(0.005)
            # psql, with nothing but host and port, reads the same table
            for _ in range(3):
                assert int(psql(endpoint, "SELECT count(*) FROM out")) == sum(sizes)
        writer.join()
    assert seen == sorted(seen)  # never backwards
    assert len(set(seen)) > 3  # read while batches committed, not only at the end


def test_a_kafka_query_is_read_while_it_runs(tmp_path: Path, broker: Broker) -> None:
    topic = f"served-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    sql = f"""
    CREATE SOURCE events (user_id BIGINT, kind VARCHAR) WITH (
        connector = 'kafka', bootstrap_servers = '{broker.bootstrap_servers}',
        topic = '{topic}', format = 'json', starting_offsets = 'earliest');
    CREATE SINK per_kind WITH (connector = 'duckdb', trigger = '50 milliseconds') AS
    SELECT kind, count(*) AS n FROM events GROUP BY kind EMIT CHANGES;
    """
    producer.send(topic, json.dumps({"user_id": 0, "kind": "a"}).encode()).get(timeout=30)
    with serving(tmp_path, sql) as endpoint:
        readings = []
        with connect(endpoint, "per_kind") as conn:
            for chunk in range(1, 11):
                for i in range(chunk):
                    record = {"user_id": i, "kind": "ab"[i % 2]}
                    producer.send(topic, json.dumps(record).encode())
                producer.flush()
                total, inputs = conn.execute(
                    "SELECT (SELECT coalesce(sum(n), 0) FROM per_kind), "
                    "(SELECT coalesce(sum(input_rows), 0) FROM _streamsql.commits "
                    "WHERE query = 'per_kind')"
                ).fetchone()
                assert total == inputs  # the table is a committed batch's result
                readings.append(total)
                time.sleep(0.05)
            expected = 1 + sum(range(1, 11))
            deadline = time.monotonic() + 60
            while readings[-1] != expected and time.monotonic() < deadline:
                readings.append(conn.execute("SELECT sum(n) FROM per_kind").fetchone()[0])
                time.sleep(0.05)
        assert psql(endpoint, "SELECT kind || '=' || n FROM per_kind ORDER BY kind").split() == [
            f"a={1 + sum((c + 1) // 2 for c in range(1, 11))}",
            f"b={sum(c // 2 for c in range(1, 11))}",
        ]
    producer.close()
    assert readings == sorted(readings) and readings[-1] == expected


def test_writes_are_refused_unless_allowed(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    with serving(tmp_path, FILES_JOB.format(input=directory)) as endpoint:
        with connect(endpoint, "out") as conn:
            for statement in (
                "CREATE TABLE t (x INT)",
                "INSERT INTO out VALUES (1, 'x')",
                "DELETE FROM out",
                "EXPLAIN ANALYZE DELETE FROM out",
                "DROP SINK out",
                "CREATE SINK other WITH (connector = 'duckdb') AS SELECT id FROM src",
                "CHECKPOINT",
                "SET threads = 1",
            ):
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
                    conn.execute(statement)
                assert refused.value.sqlstate == "25006"
                assert "read-only endpoint" in str(refused.value)
            assert conn.execute("SHOW SINKS").fetchall()[0][0] == "out"
            assert conn.execute("EXPLAIN ANALYZE SELECT count(*) FROM out").fetchall()
            assert conn.execute("SELECT count(*) FROM out").fetchone() == (0,)
            conn.execute("SET application_name = 'grafana'")  # clients' settings are fine
        with pytest.raises(AssertionError, match="read-only endpoint"):
            psql(endpoint, "INSERT INTO out VALUES (1, 'x')")
    (tmp_path / "app.db.status.json").unlink(missing_ok=True)
    (tmp_path / "app.db").unlink()
    job = FILES_JOB.format(input=directory)
    with serving(tmp_path, job, "--allow-writes") as endpoint, connect(endpoint, "out") as conn:
        conn.execute("CREATE TABLE t (x INT)")
        assert conn.execute("INSERT INTO t VALUES (1), (2)").rowcount == 2
        conn.execute("CREATE SINK copy WITH (connector = 'duckdb') AS SELECT id * 10 AS x FROM src")
        write_files(directory, [3], 0)
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM copy").fetchone()[0] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert sorted(conn.execute("SELECT x FROM copy").fetchall()) == [(0,), (10,), (20,)]


def test_a_password_is_asked_and_a_wrong_one_refused(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    env = {"JOB_PASSWORD": "s3cret"}
    job = FILES_JOB.format(input=directory)
    with serving(tmp_path, job, "--password-env", "JOB_PASSWORD", env=env) as endpoint:
        port = endpoint["port"]
        assert endpoint["password"] is True
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=port, password="wrong")
        with pytest.raises(AssertionError, match="password authentication failed"):
            psql(endpoint, "SELECT 1", password="wrong")
        with psycopg.connect(host="127.0.0.1", port=port, password="s3cret") as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        assert psql(endpoint, "SELECT 'in'", password="s3cret").strip() == "in"


def test_binding_beyond_loopback_needs_a_password(con: streamsql.Connection) -> None:
    with pytest.raises(OperationalError, match="needs a password"):
        Server(con, ServeOptions("0.0.0.0", 0))
    with pytest.raises(OperationalError, match="not set"):
        ServeOptions.parse("5433", "NO_SUCH_VARIABLE_FOR_STREAMSQL")


@pytest.fixture
def served(con: streamsql.Connection) -> Iterator[tuple[streamsql.Connection, int]]:
    """An endpoint in this process, on an engine with a table of every mapped type."""
    con.execute(
        """CREATE TABLE typed AS SELECT * FROM (VALUES
        (1, 12::SMALLINT, 3000000000::BIGINT, 1.25::FLOAT, 2.5::DOUBLE, 12.345::DECIMAL(10,3),
         true, 'héllo', '\\x00\\xff'::BLOB, DATE '2024-02-29', TIME '12:34:56.789',
         TIMESTAMP '2024-01-02 03:04:05.123456', TIMESTAMPTZ '2024-01-02 03:04:05+02:00',
         INTERVAL '1 day 2 hours 3 seconds', 170141183460469231731687303715884105727::HUGEINT,
         [1, 2, NULL], {'a': 1, 'b': 'x'}, '6f1e8d0a-3c11-4a52-9a53-6a8a1ef5c001'::UUID),
        (2, NULL, NULL, NULL, NULL, -0.001::DECIMAL(10,3), false, NULL, NULL, NULL, NULL, NULL,
         NULL, INTERVAL '-3 seconds', -5::HUGEINT, [], NULL, NULL))
        t(id, i2, i8, f4, f8, num, b, s, blob, d, tm, ts, tz, iv, huge, list, struct, u)"""
    )
    with Server(con, ServeOptions(port=0)) as server:
        yield con, server.port


EXPECTED = (
    1,
    12,
    3000000000,
    1.25,
    2.5,
    Decimal("12.345"),
    True,
    "héllo",
    b"\x00\xff",
    dt.date(2024, 2, 29),
    dt.time(12, 34, 56, 789000),
    dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.UTC),
    dt.timedelta(days=1, hours=2, seconds=3),
    Decimal("170141183460469231731687303715884105727"),
    [1, 2, None],
    {"a": 1, "b": "x"},
    uuid.UUID("6f1e8d0a-3c11-4a52-9a53-6a8a1ef5c001"),
)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_types_come_back_as_postgres_types(
    served: tuple[streamsql.Connection, int], binary: bool
) -> None:
    _, port = served
    with psycopg.connect(host="127.0.0.1", port=port) as conn, conn.cursor(binary=binary) as cursor:
        rows = cursor.execute("SELECT * FROM typed ORDER BY id").fetchall()
        assert [column.type_code for column in cursor.description] == [
            23,
            21,
            20,
            700,
            701,
            1700,
            16,
            25,
            17,
            1082,
            1083,
            1114,
            1184,
            1186,
            1700,
            114,
            114,
            2950,
        ]
    assert rows[0] == EXPECTED
    assert rows[1][:2] == (2, None) and rows[1][5] == Decimal("-0.001")
    assert rows[1][13] == dt.timedelta(seconds=-3) and rows[1][14] == Decimal(-5)
    assert rows[1][15] == []


def test_parameters_are_bound_not_interpolated(served: tuple[streamsql.Connection, int]) -> None:
    _, port = served
    with psycopg.connect(host="127.0.0.1", port=port) as conn:
        hostile = "x'; DROP TABLE typed; --"
        assert conn.execute("SELECT count(*) FROM typed WHERE s = %s", [hostile]).fetchone() == (0,)
        assert conn.execute("SELECT id FROM typed WHERE s = %s", ["héllo"]).fetchall() == [(1,)]
        cursor = conn.cursor()
        for value in (1, 2, 1, 2, 1, 2, 1):  # psycopg prepares it from the 5th time on
            cursor.execute("SELECT id, num FROM typed WHERE id = %s", [value], prepare=True)
            assert cursor.fetchall()[0][0] == value
        same = conn.execute(
            "SELECT %b::BIGINT + 1, %b::DOUBLE * 2, %b, %b::DATE, %b::TIMESTAMP",
            [41, 1.5, "text", dt.date(2024, 3, 1), dt.datetime(2024, 3, 1, 12)],
        ).fetchone()
        assert same == (42, 3.0, "text", dt.date(2024, 3, 1), dt.datetime(2024, 3, 1, 12))
        assert conn.execute("SELECT %s::DECIMAL(6,2)", [Decimal("-12.5")]).fetchone() == (
            Decimal("-12.50"),
        )
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM missing WHERE x = %s", [1])
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM typed").fetchone() == (2,)


def test_a_cancel_request_interrupts_a_long_query(served: tuple[streamsql.Connection, int]) -> None:
    _, port = served
    with psycopg.connect(host="127.0.0.1", port=port, autocommit=True) as conn:
        threading.Timer(0.5, conn.cancel_safe).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM range(10000000000)")
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def test_psql_lists_tables_and_reports_errors_with_sqlstate(
    served: tuple[streamsql.Connection, int],
) -> None:
    con, port = served
    con.execute("CREATE SOURCE s (x INT) WITH (connector = 'memory')")
    endpoint = {"port": port}
    assert "|typed|table|" in psql(endpoint, "\\dt").replace(" ", "")
    with pytest.raises(AssertionError, match="Table with name missing does not exist"):
        psql(endpoint, "SELECT * FROM missing")
    with psycopg.connect(host="127.0.0.1", port=port, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="push queries"):
            conn.execute("SELECT x FROM s")
    assert psql(endpoint, "SELECT 1; SELECT 2").split() == ["1", "2"]


def test_the_shell_attaches_to_a_running_process(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    write_files(directory, [2, 3], 0)
    with serving(tmp_path, FILES_JOB.format(input=directory)) as endpoint:
        deadline = time.monotonic() + 30
        with connect(endpoint, "out") as conn:
            while conn.execute("SELECT count(*) FROM out").fetchone()[0] < 5:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        out = io.StringIO()
        with create_pipe_input() as pipe:
            pipe.send_text("SELECT v, count(*) AS n FROM out GROUP BY v ORDER BY v;\n")
            pipe.send_text("DELETE FROM out;\n.quit\n")
            code = shell_main(endpoint["db"], input=pipe, output=DummyOutput(), stdout=out)
        text = out.getvalue()
        assert code == 0, text
        assert f"held by process {endpoint['pid']}" in text
        assert "│ f0 │ 2 │" in text and "│ f1 │ 3 │" in text
        assert "read-only endpoint" in text


def stopped_engine(tmp_path: Path) -> str:
    """An engine database whose sink k (a duckdb table) holds 1 and 2, closed."""
    db = str(tmp_path / "app.db")
    con = streamsql.connect(db)
    con.execute("CREATE SOURCE s (x INT) WITH (connector = 'memory')")
    con.execute("CREATE SINK k WITH (connector = 'duckdb') AS SELECT x FROM s")
    con.execute("INSERT INTO s VALUES (1), (2)")
    con.query("k").process_all_available()
    con.close()
    return db


def test_connect_read_only_inspects_without_resuming_sinks(tmp_path: Path) -> None:
    db = stopped_engine(tmp_path)
    inspect = streamsql.connect(db, read_only=True)
    try:
        assert inspect.engine.queries == {}
        assert inspect.execute("SELECT x FROM k ORDER BY x").fetchall() == [(1,), (2,)]
        assert inspect.execute("SHOW SINKS").fetchall()[0][0] == "k"
        with pytest.raises(streamsql.Error, match="read-only"):
            inspect.execute("INSERT INTO k VALUES (3)")
    finally:
        inspect.close()
    again = streamsql.connect(db)  # the sink still resumes where it stood
    try:
        assert "k" in again.engine.queries
    finally:
        again.close()


def test_status_of_a_served_database_before_its_first_batch(tmp_path: Path) -> None:
    """A query that has run no batch yet is published as soon as it starts."""
    directory = tmp_path / "in"
    directory.mkdir()  # no file yet: no batch
    with serving(tmp_path, FILES_JOB.format(input=directory)) as endpoint:
        with connect(endpoint, "out"):
            pass
        status = cli_status(endpoint["db"])
        assert f"live, published by process {endpoint['pid']}" in status
        assert "│ out " in status and "waiting for data" in status


def test_status_reads_through_the_endpoint_what_a_process_does_not_publish(
    tmp_path: Path,
) -> None:
    """A served database whose sinks are stopped publishes no status: the checkpoint tables
    are read through the endpoint."""
    db = stopped_engine(tmp_path)
    con = streamsql.connect(db)
    con.execute("STOP QUERY k")
    con.close()
    with serve_command(db) as (running, _):
        assert not Path(f"{db}.status.json").exists()
        status = cli_status(db)
        assert f"live, served by process {running.pid}" in status
        assert "│ k " in status and "stopped" in status


@contextlib.contextmanager
def serve_command(db: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`streamsql serve db` on a free port, and the line it first prints; killed after."""
    running = subprocess.Popen(
        [sys.executable, "-m", "streamsql.cli", "serve", db, "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert running.stderr is not None
        yield running, running.stderr.readline()
    finally:
        running.kill()
        running.wait()


def cli_status(db: str) -> str:
    status = subprocess.run(
        [sys.executable, "-m", "streamsql.cli", "status", db],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert status.returncode == 0, status.stderr
    return status.stdout


def test_serve_opens_a_database_resumes_its_sinks_and_stops_on_sigterm(tmp_path: Path) -> None:
    db = stopped_engine(tmp_path)
    with serve_command(db) as (running, line):
        assert line.startswith(f"Serving {db} on postgresql://127.0.0.1:"), line
        endpoint = json.loads(endpoint_file(db).read_text())
        assert endpoint["pid"] == running.pid
        answer = psql(endpoint, "SELECT sum(x) FROM k", "SHOW QUERIES").split()
        assert answer[0] == "3" and answer[1].startswith("k|")  # the sink resumed
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=60) == 0
        assert not endpoint_file(db).exists()


def test_a_restricted_engine_keeps_its_clients_to_its_directories(tmp_path: Path) -> None:
    con = streamsql.connect(":memory:", restricted=True, allowed_directories=[str(tmp_path)])
    (tmp_path / "inside.csv").write_text("a\n1\n")
    try:
        with (
            Server(con, ServeOptions(port=0)) as server,
            psycopg.connect(host="127.0.0.1", port=server.port, autocommit=True) as conn,
        ):
            inside = conn.execute("SELECT a FROM read_csv(%s)", [str(tmp_path / "inside.csv")])
            assert inside.fetchall() == [(1,)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM read_csv('/etc/passwd')")
    finally:
        con.close()


class RawClient:
    """The protocol's messages by hand, as JDBC and Go's pgx send them: describe a named
    statement before binding it, and fetch a portal a few rows at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        startup = struct.pack("!i", 196608) + b"user\x00jdbc\x00database\x00app\x00\x00"
        self.sock.sendall(struct.pack("!i", len(startup) + 4) + startup)
        self.until(b"Z")

    def send(self, kind: bytes, payload: bytes) -> None:
        self.sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    def receive(self) -> tuple[bytes, bytes]:
        head = self.sock.recv(5, socket.MSG_WAITALL)
        (length,) = struct.unpack("!i", head[1:])
        body = self.sock.recv(length - 4, socket.MSG_WAITALL) if length > 4 else b""
        return head[:1], body

    def until(self, last: bytes) -> list[tuple[bytes, bytes]]:
        messages = []
        while True:
            messages.append(self.receive())
            if messages[-1][0] == last:
                return messages


def test_describe_statement_and_a_portal_fetched_in_parts(
    served: tuple[streamsql.Connection, int],
) -> None:
    client = RawClient(served[1])
    sql = b"SELECT id, s FROM typed WHERE id >= $1 ORDER BY id\x00"
    client.send(b"P", b"st\x00" + sql + struct.pack("!hi", 1, 20))  # $1 declared int8
    client.send(b"D", b"Sst\x00")
    client.send(b"S", b"")
    kinds = client.until(b"Z")
    assert [kind for kind, _ in kinds] == [b"1", b"t", b"T", b"Z"]
    assert struct.unpack("!hi", kinds[1][1]) == (1, 20)  # ParameterDescription
    fields = kinds[2][1]
    assert fields.startswith(b"\x00\x02id\x00") and b"s\x00" in fields
    value = b"1"
    bind = b"p\x00st\x00" + struct.pack("!hh", 0, 1) + struct.pack("!i", 1) + value
    client.send(b"B", bind + struct.pack("!h", 0))
    client.send(b"E", b"p\x00" + struct.pack("!i", 1))  # one row at a time
    client.send(b"E", b"p\x00" + struct.pack("!i", 1))
    client.send(b"E", b"p\x00" + struct.pack("!i", 1))
    client.send(b"S", b"")
    kinds = client.until(b"Z")
    assert [kind for kind, _ in kinds] == [b"2", b"D", b"s", b"D", b"s", b"C", b"Z"]
    text = "héllo".encode()
    assert kinds[1][1] == b"\x00\x02" + struct.pack("!i", 1) + b"1" + struct.pack("!i", 6) + text
    assert kinds[3][1] == b"\x00\x02" + struct.pack("!i", 1) + b"2" + b"\xff" * 4  # NULL
    assert kinds[5][1] == b"SELECT 2\x00"
    client.send(b"Q", b"SELEC 1\x00")  # an error, then the session goes on
    kinds = client.until(b"Z")
    assert kinds[0][0] == b"E" and b"C42601\x00" in kinds[0][1]
    client.send(b"X", b"")
