"""Dead letters: one copy of a bad record per source, however many sinks read it; the
source's dead_letter_retention; databases of the previous layout; exactly once on replay.

Every test runs real queries over a `files` source on a DuckDB file in tmp_path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import streamsql
from streamsql.status import database_status

DEAD_LETTERS = (
    'SELECT query, batch_id, source, "partition", "offset", raw, error '
    'FROM _streamsql.dead_letters ORDER BY query, "partition", "offset"'
)
RECORDS = "SELECT source, raw FROM _streamsql.dead_letter_records ORDER BY raw"


def put(directory: Path, name: str, data: bytes) -> None:
    """A file appears whole in the source directory (written, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = directory / f".{name}.partial"
    hidden.write_bytes(data)
    os.replace(hidden, directory / name)


def source_sql(tmp_path: Path, options: str = "") -> str:
    return (
        "CREATE SOURCE src (k VARCHAR, n BIGINT) "
        f"WITH (connector = 'files', path = '{tmp_path / 'in'}'{options})"
    )


def sink_sql(name: str) -> str:
    return f"CREATE SINK {name} WITH (connector = 'duckdb') AS SELECT k, n FROM src"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "engine.db")


@pytest.fixture
def now(db: str) -> Iterator[streamsql.Connection]:
    """An engine whose queries process what is there, then stop (trigger available_now)."""
    connection = streamsql.connect(db, trigger="available_now")
    yield connection
    connection.close()


def run_to_end(con: streamsql.Connection, *names: str) -> None:
    for name in names:
        assert con.query(name).await_termination(60)


def rows(con: streamsql.Connection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def test_a_bad_record_read_by_three_sinks_is_stored_once(
    now: streamsql.Connection, db: str, tmp_path: Path
) -> None:
    bad = [b'{"k": "' + os.urandom(1 << 19).hex().encode() for _ in range(5)]  # 1 MB, no '"}'
    put(tmp_path / "in", "a.json", b'{"k": "a", "n": 1}\n' + b"\n".join(bad) + b"\n")
    now.execute(source_sql(tmp_path))
    sinks = ("s1", "s2", "s3")
    for name in sinks:
        now.execute(sink_sql(name))
    run_to_end(now, *sinks)
    dead = rows(now, DEAD_LETTERS)
    # every sink sees its own dead letters, with the bytes, at their lines
    assert [(q, b, s, p, o, raw) for q, b, s, p, o, raw, _ in dead] == [
        (name, 0, "src", "a.json", line, bad[line - 2]) for name in sinks for line in range(2, 7)
    ]
    assert all("malformed" in error.lower() for *_, error in dead)
    # ... but the source keeps each record's bytes once
    assert sorted(rows(now, RECORDS)) == sorted(("src", raw) for raw in bad)
    assert [now.query(name).last_progress.num_dead_letters for name in sinks] == [5, 5, 5]
    assert [rows(now, f"SELECT k, n FROM {name}") for name in sinks] == [[("a", 1)]] * 3
    now.close()
    assert os.path.getsize(db) < 2 * 5 * (1 << 20)  # one copy of 5 MB, not three
    statuses = database_status(db)[1]
    assert [(s["sink"], s["dead_letters"]) for s in statuses] == [(n, 5) for n in sinks]


def test_dead_letters_older_than_the_retention_go_with_their_records(
    db: str, tmp_path: Path
) -> None:
    put(tmp_path / "in", "1.json", b"{old\n{shared\n")
    with streamsql.connect(db, trigger="available_now") as con:
        con.execute(source_sql(tmp_path, ", dead_letter_retention = '1 hour'"))
        for name in ("s1", "s2"):
            con.execute(sink_sql(name))
        run_to_end(con, "s1", "s2")
        assert len(rows(con, DEAD_LETTERS)) == 4
    raw = duckdb.connect(db)  # two hours pass
    raw.execute(
        "UPDATE _streamsql.dead_letter_log SET recorded_at = recorded_at - INTERVAL 2 HOURS"
    )
    raw.close()
    put(tmp_path / "in", "2.json", b'{shared\n{"k": "x", "n": 2}\n')
    with streamsql.connect(db, trigger="available_now") as con:
        run_to_end(con, "s1", "s2")  # the batch of 2.json prunes: the old rows of both sinks
        assert [row[:6] for row in rows(con, DEAD_LETTERS)] == [
            (name, 1, "src", "2.json", 1, b"{shared") for name in ("s1", "s2")
        ]
        # '{old' is referred to by no dead letter any more; '{shared' still is
        assert rows(con, RECORDS) == [("src", b"{shared")]
        assert [con.query(name).last_progress.num_dead_letters for name in ("s1", "s2")] == [1, 1]
    statuses = database_status(db)[1]
    assert [(s["sink"], s["dead_letters"]) for s in statuses] == [("s1", 1), ("s2", 1)]


@pytest.mark.parametrize(
    ("value", "kept"), [("forever", True), ("30 days", True), ("1 day", False)]
)
def test_retention_accepts_durations_and_forever(
    db: str, tmp_path: Path, value: str, kept: bool
) -> None:
    put(tmp_path / "in", "1.json", b"{bad\n")
    with streamsql.connect(db, trigger="available_now") as con:
        con.execute(source_sql(tmp_path, f", dead_letter_retention = '{value}'"))
        con.execute(sink_sql("s1"))
        run_to_end(con, "s1")
    raw = duckdb.connect(db)
    raw.execute(  # two days pass
        "UPDATE _streamsql.dead_letter_log SET recorded_at = recorded_at - INTERVAL 2 DAYS"
    )
    raw.close()
    put(tmp_path / "in", "2.json", b'{"k": "x", "n": 2}\n')
    with streamsql.connect(db, trigger="available_now") as con:
        run_to_end(con, "s1")
        assert len(rows(con, DEAD_LETTERS)) == int(kept)
        assert len(rows(con, RECORDS)) == int(kept)


@pytest.mark.parametrize(
    "value", ["7", "a week", "0 seconds", "1 day'; DROP TABLE _streamsql.catalog; --"]
)
def test_a_retention_that_is_not_a_duration_is_refused(
    now: streamsql.Connection, tmp_path: Path, value: str
) -> None:
    with pytest.raises(
        streamsql.ProgrammingError, match=r"dead_letter_retention = .* is not a duration"
    ):
        now.execute(
            source_sql(
                tmp_path, f", dead_letter_retention = '{value.replace(chr(39), chr(39) * 2)}'"
            )
        )
    assert rows(now, "SELECT count(*) FROM _streamsql.catalog") == [(0,)]


def test_a_database_of_the_previous_layout_opens_with_its_dead_letters(
    db: str, tmp_path: Path
) -> None:
    put(tmp_path / "in", "1.json", b'{bad\n{"k": "a", "n": 1}\n[1, 2]\n')
    sinks = ("s1", "s2", "s3")
    with streamsql.connect(db, trigger="available_now") as con:
        con.execute(source_sql(tmp_path))
        for name in sinks:
            con.execute(sink_sql(name))
        run_to_end(con, *sinks)
        written = rows(con, DEAD_LETTERS)
    assert len(written) == 6
    raw = duckdb.connect(db)  # the previous layout: one table, a copy of the bytes per sink
    for statement in (
        "CREATE TABLE _streamsql.old AS SELECT * FROM _streamsql.dead_letters",
        "DROP VIEW _streamsql.dead_letters",
        "DROP TABLE _streamsql.dead_letter_log",
        "DROP TABLE _streamsql.dead_letter_records",
        "ALTER TABLE _streamsql.old RENAME TO dead_letters",
    ):
        raw.execute(statement)
    raw.close()
    statuses = database_status(db)[1]  # read-only, on the previous layout
    assert [(s["sink"], s["dead_letters"]) for s in statuses] == [(n, 2) for n in sinks]
    put(tmp_path / "in", "2.json", b"{bad\n")
    with streamsql.connect(db, trigger="available_now") as con:
        run_to_end(con, *sinks)
        assert rows(con, DEAD_LETTERS) == sorted(
            [*written, *((name, 1, "src", "2.json", 1, b"{bad", written[0][6]) for name in sinks)]
        )
        assert rows(con, RECORDS) == [("src", b"[1, 2]"), ("src", b"{bad")]
        assert rows(
            con,
            "SELECT table_type FROM information_schema.tables "
            "WHERE table_schema = '_streamsql' AND table_name = 'dead_letters'",
        ) == [("VIEW",)]
    statuses = database_status(db)[1]
    assert [(s["sink"], s["dead_letters"]) for s in statuses] == [(n, 3) for n in sinks]


FAILING: set[int] = set()


def fail_once(batch_id: int, rows: pa.Table) -> None:
    """A callback sink that fails the first time it is given a batch in FAILING."""
    if batch_id in FAILING:
        FAILING.discard(batch_id)
        raise RuntimeError("sink down")


def test_a_replayed_batch_stores_its_dead_letters_once(db: str, tmp_path: Path) -> None:
    put(tmp_path / "in", "1.json", b'{bad\n{"k": "a", "n": 1}\n')
    FAILING.add(0)
    with streamsql.connect(db, trigger="available_now") as con:
        con.execute(source_sql(tmp_path))
        con.execute(
            "CREATE SINK s1 WITH (connector = 'callback', "
            f"callback = '{__name__}:fail_once') AS SELECT k, n FROM src"
        )
        with pytest.raises(streamsql.StreamingQueryError, match="sink down"):
            con.query("s1").await_termination(60)
        assert rows(con, DEAD_LETTERS) == []  # rolled back with the batch
    with streamsql.connect(db, trigger="available_now") as con:  # batch 0 again
        run_to_end(con, "s1")
        assert [row[:6] for row in rows(con, DEAD_LETTERS)] == [
            ("s1", 0, "src", "1.json", 1, b"{bad")
        ]
        assert rows(con, RECORDS) == [("src", b"{bad")]
